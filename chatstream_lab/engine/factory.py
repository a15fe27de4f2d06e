"""Which generator serves a model: the torch batching engine, OpenVINO's, or a remote one."""

from __future__ import annotations

from typing import Any

from ..admission import AdmissionGate
from ..types import LifecycleObserver
from .core.protocol import Generator


def build_generator(model: Any, gate: AdmissionGate[Any], observer: LifecycleObserver | None = None,
                    **options: Any) -> Generator:
    """The request-level generator for ``model`` (nothing starts until its first request).

    ``options`` go to the engine: ``prefill_chunk``, ``gather_s``, ``prefix_cache_mb``,
    ``session_kv_budget_mb``, ``onednn`` for the torch one; ``cache_size_gb``,
    ``enable_prefix_caching``, ``session_kv_budget_mb``, ``threads``, ``gather_s`` for OpenVINO's;
    ``timeout_s``, ``retry_after_s`` for a remote one.
    """
    backend = str(getattr(model, "backend", "torch"))
    if backend == "remote":
        from .remote import RemoteEngine

        options.pop("session_kv_budget_mb", None)  # the upstreams keep their own caches
        return RemoteEngine(model, gate=gate, observer=observer, **options)
    if backend == "openvino":
        from .openvino import OpenVINOEngine

        return OpenVINOEngine(model, gate=gate, observer=observer, **options)
    from .batching.engine import Engine

    return Engine(model, gate=gate, observer=observer, **options)
