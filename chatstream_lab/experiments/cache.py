"""Rows already computed, by key: what a re-run of a grid takes instead of generating again.

A row is kept when it finished normally (stop or length) and has a key (greedy, or sampled with a
seed; an unseeded sampled row is never reused). ``Lab.grid`` keeps one cache per Lab, filled by
every grid it ran, and also takes earlier results (``reuse=result``, ``reuse="grid.jsonl"``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .rows import GridRow, RowStatus

if TYPE_CHECKING:  # pragma: no cover
    from .result import GridResult


def reusable(row: GridRow) -> bool:
    return row.key is not None and row.status is RowStatus.DONE and row.finish_reason in ("stop", "length")


class RowCache:
    """Finished rows by key (thread-safe; the runner adds rows from its thread)."""

    def __init__(self, rows: Iterable[GridRow] = ()) -> None:
        self._rows: dict[str, GridRow] = {}
        self._lock = threading.Lock()
        self.add_all(rows)

    def add(self, row: GridRow) -> None:
        if reusable(row):
            assert row.key is not None
            with self._lock:
                self._rows[row.key] = row

    def add_all(self, rows: Iterable[GridRow]) -> None:
        for row in rows:
            self.add(row)

    def get(self, key: str | None) -> GridRow | None:
        if key is None:
            return None
        with self._lock:
            return self._rows.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()


class GridBook:
    """What a Lab keeps for its grids: the row cache, and the grids still running (so closing
    the Lab stops them)."""

    def __init__(self) -> None:
        self.cache = RowCache()
        self._running: weakref.WeakSet[GridResult] = weakref.WeakSet()

    def started(self, result: GridResult) -> None:
        self._running.add(result)

    def stop_all(self) -> None:
        for result in list(self._running):
            result.stop()


__all__ = ["GridBook", "RowCache", "reusable"]
