"""The value every other stage receives: a model, its tokenizer, and where they came from.

A :class:`LoadedModel` has a lifecycle: ``close()`` (or leaving a ``with`` block) closes every
engine built on it and frees its weights, so a notebook can try one model after another without
running out of memory; a closed model refuses further use with
:class:`~chatstream_lab.errors.ModelClosed`.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import weakref
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from ..config import ModelRef, SamplingParams
from ..errors import ModelClosed
from .precision import PrecisionChoice

log = logging.getLogger(__name__)


class Backend(str, Enum):
    """What runs a model (``LoadedModel.backend``; shown in ``/stats``, ``/v1/models``, the Lab).
    What its generator can *do* is declared by the engine: ``Service.capabilities``."""

    TORCH = "torch"  # the in-process batching engine on a transformers model
    OPENVINO = "openvino"  # OpenVINO GenAI's continuous-batching pipeline on an exported IR
    REMOTE = "remote"  # an OpenAI-compatible server (vLLM, llama-server) does the generation
    SCRIPTED = "scripted"  # the fast deterministic stand-in for tests

    def __str__(self) -> str:
        return self.value


class Closable(Protocol):
    def close(self) -> Any: ...


def closed_error(name: str) -> ModelClosed:
    return ModelClosed(f"the model {name!r} was closed (its weights are freed); load it again with "
                       "load_model(...), or pass another model")


class ReleasedWeights:
    """What ``LoadedModel.model`` is after ``close()``: every use of it raises
    :class:`~chatstream_lab.errors.ModelClosed` naming the model, so code that kept the
    LoadedModel (an engine, a widget, a notebook cell) fails with the fix instead of running on
    freed weights."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __getattr__(self, attribute: str) -> Any:
        raise closed_error(self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("__call__")

    def __repr__(self) -> str:
        return f"<released weights of {self.name!r}>"


class _Lifecycle:
    """The mutable part of a frozen LoadedModel: whether it is closed, and the engines built on it
    (held weakly: an engine closed and dropped on its own is simply forgotten)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed = False
        self.users: weakref.WeakSet[Any] = weakref.WeakSet()


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A causal LM ready for the engine.

    ``model`` is a torch causal LM (or a :class:`~chatstream_lab.models.scripted.ScriptedLM`),
    ``tokenizer`` an HF-compatible tokenizer. Frozen so that a configuration that names it can
    be hashed and shared; the weights themselves are never copied.
    """

    name: str
    model: Any
    tokenizer: Any
    source: str
    device: str = "cpu"
    dtype: str = "float32"
    context_window: int = 2048
    stop_token_ids: tuple[int, ...] = field(default=())
    backend: Backend = Backend.TORCH
    # SamplingParams fields this model is best served with when the user sets none (the Lab, the
    # CLI and the console chat start from them; the seed ChatStream keeps its documented defaults)
    sampling_defaults: tuple[tuple[str, Any], ...] = field(default=())
    _lifecycle: _Lifecycle = field(default_factory=_Lifecycle, init=False, repr=False, compare=False)
    # OpenVINO: the precision it runs in and who chose it (calibration, its cache, or dtype=)
    precision: PrecisionChoice | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", Backend(self.backend))  # accept the plain string too

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._lifecycle.closed

    def check_open(self) -> None:
        """Raise :class:`~chatstream_lab.errors.ModelClosed` if :meth:`close` was called."""
        if self._lifecycle.closed:
            raise closed_error(self.name)

    def close_with(self, user: Closable) -> None:
        """Close ``user`` (an engine built on this model) when this model closes. Held weakly.

        Raises:
            ModelClosed: the model is already closed.
        """
        with self._lifecycle.lock:
            self.check_open()
            self._lifecycle.users.add(user)

    def close(self) -> None:
        """Close every engine built on this model (their open requests end, cancelled) and free
        the weights: a torch model's parameters and buffers move to the ``meta`` device, so their
        memory is returned even where something still holds the module. OpenVINO's compiled
        pipeline lives in its engine and goes with it; a remote model has nothing to free.
        ``model`` becomes :class:`ReleasedWeights`. Idempotent; afterwards every use raises
        ModelClosed.
        """
        with self._lifecycle.lock:
            if self._lifecycle.closed:
                return
            self._lifecycle.closed = True
            users = list(self._lifecycle.users)
            self._lifecycle.users.clear()
        for user in users:
            try:
                user.close()
            except Exception:
                log.exception("closing an engine of %s failed; freeing the weights anyway", self.name)
        _free_weights(self.model)
        # drop the module too: what is keyed by it (packed weight copies) goes with it
        object.__setattr__(self, "model", ReleasedWeights(self.name))
        return_freed_memory()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def default_params(self) -> SamplingParams:
        """SamplingParams with this model's own defaults applied."""
        return SamplingParams().replace(**dict(self.sampling_defaults))

    @property
    def ref(self) -> ModelRef:
        """What loads this model again (a saved configuration records it)."""
        from .ref import model_ref

        return model_ref(self)

    @property
    def is_scripted(self) -> bool:
        return bool(getattr(self.model, "is_scripted", False))

    @property
    def precision_label(self) -> str:
        """``"int8/f32 (calibrated: 1 stream 93.8 tok/s, 16 streams 658 tok/s)"``, or the dtype."""
        return self.precision.label if self.precision is not None else self.dtype

    def precision_info(self) -> dict[str, Any]:
        """What ``/stats`` shows under ``precision`` (the calibration's measurements, no per-prompt detail)."""
        if self.precision is not None:
            return self.precision.as_dict(detail=False)
        return {"precision": self.dtype, "source": "dtype"}

    def __repr__(self) -> str:
        closed = ", closed" if self.closed else ""
        precision = f", precision={self.precision.label!r}" if self.precision is not None else ""
        return (f"LoadedModel(name={self.name!r}, backend={str(self.backend)!r}, device={self.device!r}, "
                f"dtype={self.dtype!r}{precision}, context_window={self.context_window}{closed})")

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
            for k, v in [("name", self.name), ("backend", self.backend), ("source", self.source),
                         ("device", self.device),
                         ("dtype", self.dtype), ("precision", self.precision_label),
                         ("context window", self.context_window),
                         ("defaults", ", ".join(f"{k}={v}" for k, v in self.sampling_defaults) or "-"),
                         *([("state", "closed (weights freed)")] if self.closed else [])]
        )
        if self.precision is not None and self.precision.candidates:
            measured = "<br>".join(escape(c.summary) for c in self.precision.candidates)
            rows += f"<tr><th style='text-align:left'>candidates</th><td>{measured}</td></tr>"
        return f"<table><caption>LoadedModel</caption>{rows}</table>"


def _free_weights(model: Any) -> None:
    """Release a torch module's tensors in place (to the ``meta`` device: no storage at all)."""
    parameters = getattr(model, "parameters", None)
    to = getattr(model, "to", None)
    if callable(parameters) and callable(to):
        try:
            to("meta")
        except Exception:  # a module that refuses to move (some quantized ones): dropped with its engine
            log.warning("could not free the weights of %s in place", type(model).__name__, exc_info=True)


def return_freed_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the OS (glibc's ``malloc_trim``),
    so the process's RSS falls after a model is closed rather than staying at its peak."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the pages stay reusable in-process
        pass
