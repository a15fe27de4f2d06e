"""The in-memory feedback log kept when a ChatStream has no ``feedback_sink``: bounded in records
and in size, oldest first out, so feedback posts cannot grow the server without limit."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, overload


class FeedbackLog(Sequence[dict[str, Any]]):
    """A read-only sequence of feedback records, at most ``max_records`` of them holding at most
    ``max_chars`` characters (as JSON) together; the newest record is always kept."""

    def __init__(self, max_records: int = 1000, max_chars: int = 4_000_000) -> None:
        self.max_records = max_records
        self.max_chars = max_chars
        self._items: deque[tuple[dict[str, Any], int]] = deque()
        self._chars = 0
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        size = len(json.dumps(record, default=str))
        with self._lock:
            self._items.append((record, size))
            self._chars += size
            while len(self._items) > 1 and (len(self._items) > self.max_records or self._chars > self.max_chars):
                self._chars -= self._items.popleft()[1]

    @property
    def chars(self) -> int:
        return self._chars

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        with self._lock:
            records = [r for r, _ in self._items]
        return records[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            return iter([r for r, _ in self._items])

    def __repr__(self) -> str:
        return f"<FeedbackLog {len(self)} records, {self._chars} chars>"
