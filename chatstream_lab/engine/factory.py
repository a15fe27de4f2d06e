"""Which generator serves a model: the torch batching engine, OpenVINO's, or a remote one."""

from __future__ import annotations

from typing import Any

from ..admission import AdmissionGate
from ..types import LifecycleObserver
from .core.capabilities import Capabilities
from .core.protocol import Generator


def backend_name(model: Any) -> str:
    """The name of what runs ``model`` (``torch``, ``openvino``, ``remote``, ``scripted``): for
    display (``/health``, ``/stats``, ``/v1/models``, the Lab); ask :func:`capabilities_of` what
    it can do."""
    return str(getattr(model, "backend", "torch"))


def generator_class(model: Any) -> Any:
    """The request-level generator class for ``model`` (imports only what that engine needs)."""
    backend = backend_name(model)
    if backend == "remote":
        from .remote import RemoteEngine

        return RemoteEngine
    if backend == "openvino":
        from .openvino import OpenVINOEngine

        return OpenVINOEngine
    from .batching.engine import Engine

    return Engine


def capabilities_of(model: Any) -> Capabilities:
    """What the generator for ``model`` can do, without building it."""
    caps = generator_class(model).capabilities_for(model)
    assert isinstance(caps, Capabilities)
    return caps


def build_generator(model: Any, gate: AdmissionGate[Any], observer: LifecycleObserver | None = None,
                    **options: Any) -> Generator:
    """The request-level generator for ``model`` (nothing starts until its first request).

    ``options`` go to the engine: ``prefill_chunk``, ``gather_s``, ``prefix_cache_mb``,
    ``session_kv_budget_mb``, ``onednn`` for the torch one; ``cache_size_gb``,
    ``enable_prefix_caching``, ``session_kv_budget_mb``, ``threads``, ``gather_s`` for OpenVINO's;
    ``timeout_s``, ``retry_after_s`` for a remote one.
    """
    cls = generator_class(model)
    if backend_name(model) == "remote":
        options.pop("session_kv_budget_mb", None)  # the upstreams keep their own caches
    generator: Generator = cls(model, gate=gate, observer=observer, **options)
    return generator
