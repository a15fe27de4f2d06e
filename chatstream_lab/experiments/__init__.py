"""Prompt experiments at scale: inputs x variants x models x seeds through the batching engine,
checks and reference scores per row, statistics a reviewer accepts, results as data.

A client of :class:`~chatstream_lab.service.Service`, like the widgets: rows are submitted through
each model's admission gate. ``Lab.grid(...)`` is the way in; this package holds the parts:

* ``spec``: inputs, variants, models, seeds, row keys;  ``checks`` / ``judge``: what is measured;
* ``runner``: the thread that keeps the batch full;  ``cache``: rows re-used by key;
* ``result``: :class:`GridResult` (live view, pandas, JSONL);  ``stats`` / ``summary``: the numbers.

Nothing here imports pandas or scipy until a method needs them (the ``notebook`` extra).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "GridResult": ".result",
    "GridRow": ".rows",
    "RowStatus": ".rows",
    "RowOrigin": ".rows",
    "CheckError": ".rows",
    "Judge": ".judge",
    "run_grid": ".grid",
    "RowCache": ".cache",
    "GridBook": ".cache",
    "Comparison": ".stats",
}

__all__ = sorted([*_LAZY, "checks", "stats"])


def __getattr__(name: str) -> Any:
    if name in ("checks", "stats"):
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chatstream_lab.experiments' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from . import checks, stats
    from .cache import GridBook, RowCache
    from .grid import run_grid
    from .judge import Judge
    from .result import GridResult
    from .rows import CheckError, GridRow, RowOrigin, RowStatus
    from .stats import Comparison
