"""The value every other stage receives: a model, its tokenizer, and where they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..config import SamplingParams
from .precision import PrecisionChoice


class Backend(str, Enum):
    """What runs a model (``LoadedModel.backend``; shown in ``/stats``, ``/v1/models``, the Lab)."""

    TORCH = "torch"  # the in-process batching engine on a transformers model
    OPENVINO = "openvino"  # OpenVINO GenAI's continuous-batching pipeline on an exported IR
    REMOTE = "remote"  # an OpenAI-compatible server (vLLM, llama-server) does the generation
    SCRIPTED = "scripted"  # the fast deterministic stand-in for tests

    def __str__(self) -> str:
        return self.value

    @property
    def reports_logprobs(self) -> bool:
        """Token log-probabilities with alternatives, and scoring: only where our sampler runs on
        the model's own logits (OpenVINO and remote servers do not hand them over)."""
        return self in (Backend.TORCH, Backend.SCRIPTED)


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
    # OpenVINO: the precision it runs in and who chose it (calibration, its cache, or dtype=)
    precision: PrecisionChoice | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", Backend(self.backend))  # accept the plain string too

    @property
    def default_params(self) -> SamplingParams:
        """SamplingParams with this model's own defaults applied."""
        return SamplingParams().replace(**dict(self.sampling_defaults))

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
        precision = f", precision={self.precision.label!r}" if self.precision is not None else ""
        return (f"LoadedModel(name={self.name!r}, backend={str(self.backend)!r}, device={self.device!r}, "
                f"dtype={self.dtype!r}{precision}, context_window={self.context_window})")

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
            for k, v in [("name", self.name), ("backend", self.backend), ("source", self.source),
                         ("device", self.device),
                         ("dtype", self.dtype), ("precision", self.precision_label),
                         ("context window", self.context_window),
                         ("defaults", ", ".join(f"{k}={v}" for k, v in self.sampling_defaults) or "-")]
        )
        if self.precision is not None and self.precision.candidates:
            measured = "<br>".join(escape(c.summary) for c in self.precision.candidates)
            rows += f"<tr><th style='text-align:left'>candidates</th><td>{measured}</td></tr>"
        return f"<table><caption>LoadedModel</caption>{rows}</table>"
