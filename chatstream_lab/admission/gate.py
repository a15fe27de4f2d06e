"""The admission gate: a concurrency limit with a bounded FIFO queue in front of it.

Input: request ids from any thread (HTTP handlers on the server loop, notebook previews on the
kernel loop). Output: the ids the engine thread may run now. The gate is a pure state machine
behind one lock; it knows nothing about HTTP, asyncio or the model.

Invariants:
* ``running <= limit`` and ``running + waiting <= limit + max_queue_size`` at all times. An id
  waits until the engine admits it at its next step, even when a slot is free for it, so
  ``waiting`` alone may exceed ``max_queue_size`` by the free slots (:class:`QueueFull` says so).
* a refusal (:class:`~chatstream_lab.errors.QueueFull`) happens in :meth:`enqueue`, before any
  stream starts, so the HTTP layer can answer 429.
* every admitted id is released exactly once (:meth:`release` is idempotent).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..config import Limits
from ..errors import QueueFull
from ..types import RequestId

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    """Counts at one instant."""

    running: int
    waiting: int
    limit: int
    max_queue_size: int
    rejected_total: int


class AdmissionGate(Generic[P]):
    """Concurrency limit (``num_of_concurrent_executions``) plus a bounded queue (``max_queue_size``).

    Thread-safe. ``enqueue`` may be called from any thread; ``admit`` and ``release`` are called
    by the engine thread; ``withdraw`` by whoever cancels a waiting request. A waiting id may carry
    a payload (the engine's row), so the gate is the one place that knows what waits and what runs.
    """

    def __init__(self, num_of_concurrent_executions: int | Limits = 2, max_queue_size: int = 5) -> None:
        limits = num_of_concurrent_executions if isinstance(num_of_concurrent_executions, Limits) \
            else Limits(num_of_concurrent_executions, max_queue_size)
        self.limits = limits
        self.limit = limits.num_of_concurrent_executions
        self.max_queue_size = limits.max_queue_size
        self._lock = threading.Lock()
        self._waiting: OrderedDict[RequestId, Any] = OrderedDict()
        self._running: set[RequestId] = set()
        self._rejected_total = 0
        self._held = False

    def hold(self) -> None:
        """Admit nothing until :meth:`release_hold`: requests still queue (and hear their position)
        and QueueFull still applies. A model switch holds the new engine's gate while the old one
        drains, so the two never run together."""
        with self._lock:
            self._held = True

    def release_hold(self) -> None:
        """Admit again (the engine admits at its next look at the gate; wake it to make that now)."""
        with self._lock:
            self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def enqueue(self, request_id: RequestId, payload: P | None = None) -> int:
        """Put ``request_id`` in line; returns its 1-based queue position.

        Raises:
            QueueFull: all slots are busy and the queue already holds ``max_queue_size``.
        """
        with self._lock:
            # Capacity is limit + max_queue_size: ids not yet admitted by the engine count as
            # waiting, so a burst that arrives between two engine steps is judged correctly.
            if len(self._running) + len(self._waiting) >= self.limit + self.max_queue_size:
                self._rejected_total += 1
                raise QueueFull(running=len(self._running), waiting=len(self._waiting),
                                limit=self.limit, max_queue_size=self.max_queue_size)
            self._waiting[request_id] = payload
            return len(self._waiting)

    def admit(self, max_count: int | None = None) -> list[RequestId]:
        """Move waiting ids (oldest first) to running while slots are free."""
        return [rid for rid, _ in self.admit_entries(max_count)]

    def admit_entries(self, max_count: int | None = None) -> list[tuple[RequestId, P]]:
        """Like :meth:`admit`, with each id's payload."""
        with self._lock:
            free = 0 if self._held else self.limit - len(self._running)
            if max_count is not None:
                free = min(free, max_count)
            admitted: list[tuple[RequestId, P]] = []
            while free > 0 and self._waiting:
                rid, payload = self._waiting.popitem(last=False)
                self._running.add(rid)
                admitted.append((rid, payload))
                free -= 1
            return admitted

    def release(self, request_id: RequestId) -> bool:
        """Free the slot of a running id. Idempotent: returns False if it was not running."""
        with self._lock:
            if request_id in self._running:
                self._running.discard(request_id)
                return True
            return False

    def withdraw(self, request_id: RequestId) -> bool:
        """Remove a waiting id (its client left). Returns False if it was not waiting."""
        return self.withdraw_entry(request_id) is not None

    def withdraw_entry(self, request_id: RequestId) -> tuple[RequestId, P] | None:
        """Remove a waiting id and return it with its payload; None if it was not waiting."""
        with self._lock:
            if request_id not in self._waiting:
                return None
            return request_id, self._waiting.pop(request_id)

    def position(self, request_id: RequestId) -> int | None:
        """1-based position in the queue, or None when not waiting."""
        with self._lock:
            for i, rid in enumerate(self._waiting, start=1):
                if rid == request_id:
                    return i
            return None

    def waiting_ids(self) -> list[RequestId]:
        """Waiting ids in queue order (position 1 first)."""
        with self._lock:
            return list(self._waiting)

    def waiting_entries(self) -> list[tuple[RequestId, P]]:
        """Waiting ids with their payloads, in queue order."""
        with self._lock:
            return list(self._waiting.items())

    def is_running(self, request_id: RequestId) -> bool:
        with self._lock:
            return request_id in self._running

    def snapshot(self) -> GateSnapshot:
        with self._lock:
            return GateSnapshot(running=len(self._running), waiting=len(self._waiting),
                                limit=self.limit, max_queue_size=self.max_queue_size,
                                rejected_total=self._rejected_total)
