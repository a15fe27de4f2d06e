"""The admission gate: a concurrency limit with a bounded FIFO queue in front of it.

Input: request ids from any thread (HTTP handlers on the server loop, notebook previews on the
kernel loop). Output: the ids the engine thread may run now. The gate is a pure state machine
behind one lock; it knows nothing about HTTP, asyncio or the model.

Invariants:
* ``running <= limit`` and ``waiting <= max_queue_size`` at all times.
* a refusal (:class:`~chatstream_lab.errors.QueueFull`) happens in :meth:`enqueue`, before any
  stream starts, so the HTTP layer can answer 429.
* every admitted id is released exactly once (:meth:`release` is idempotent).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import ConfigError, QueueFull
from ..types import RequestId


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    """Counts at one instant."""

    running: int
    waiting: int
    limit: int
    max_queue_size: int
    rejected_total: int


class AdmissionGate:
    """Concurrency limit (``num_of_concurrent_executions``) plus a bounded queue (``max_queue_size``).

    Thread-safe. ``enqueue`` may be called from any thread; ``admit`` and ``release`` are called
    by the engine thread; ``withdraw`` by whoever cancels a waiting request.
    """

    def __init__(self, num_of_concurrent_executions: int = 2, max_queue_size: int = 5) -> None:
        if isinstance(num_of_concurrent_executions, bool) or not isinstance(
            num_of_concurrent_executions, int) or num_of_concurrent_executions < 1:
            raise ConfigError(
                "num_of_concurrent_executions must be an integer >= 1, "
                f"got {num_of_concurrent_executions!r}", name="num_of_concurrent_executions")
        if isinstance(max_queue_size, bool) or not isinstance(max_queue_size, int) \
                or max_queue_size < 0:
            raise ConfigError(f"max_queue_size must be an integer >= 0, got {max_queue_size!r}",
                              name="max_queue_size")
        self.limit = num_of_concurrent_executions
        self.max_queue_size = max_queue_size
        self._lock = threading.Lock()
        self._waiting: OrderedDict[RequestId, None] = OrderedDict()
        self._running: set[RequestId] = set()
        self._rejected_total = 0

    def enqueue(self, request_id: RequestId) -> int:
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
                                max_queue_size=self.max_queue_size)
            self._waiting[request_id] = None
            return len(self._waiting)

    def admit(self, max_count: int | None = None) -> list[RequestId]:
        """Move waiting ids (oldest first) to running while slots are free."""
        with self._lock:
            free = self.limit - len(self._running)
            if max_count is not None:
                free = min(free, max_count)
            admitted: list[RequestId] = []
            while free > 0 and self._waiting:
                rid, _ = self._waiting.popitem(last=False)
                self._running.add(rid)
                admitted.append(rid)
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
        with self._lock:
            return self._waiting.pop(request_id, False) is None

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

    def is_running(self, request_id: RequestId) -> bool:
        with self._lock:
            return request_id in self._running

    def snapshot(self) -> GateSnapshot:
        with self._lock:
            return GateSnapshot(running=len(self._running), waiting=len(self._waiting),
                                limit=self.limit, max_queue_size=self.max_queue_size,
                                rejected_total=self._rejected_total)
