"""Notebook faces of the data path: widgets, the live dashboard, the endpoint handle, load tests.

Nothing here runs on import. Widgets and matplotlib are touched only on the kernel's asyncio loop:
replies are pumped by tasks on that loop, coalesced to ~12 updates per second, and the dashboard
redraws about once a second from the same stats snapshot as ``/stats``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "StreamPreview": ".preview",
    "ChatWidget": ".chat",
    "Playground": ".playground",
    "CompareView": ".compare",
    "Dashboard": ".dashboard",
    "Endpoint": ".endpoint",
    "LoadTest": ".loadtest",
    "LoadTestResult": ".loadtest",
    "run_load_test": ".loadtest",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chatstream_lab.notebook' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .chat import ChatWidget
    from .compare import CompareView
    from .dashboard import Dashboard
    from .endpoint import Endpoint
    from .loadtest import LoadTest, LoadTestResult, run_load_test
    from .playground import Playground
    from .preview import StreamPreview

