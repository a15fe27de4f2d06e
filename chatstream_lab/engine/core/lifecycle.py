"""What every request-level engine does around generation, written once.

:class:`RequestLifecycle` owns a request's path through the admission gate and the observer:
a new id, ``enqueue`` (QueueFull raised synchronously, before any stream starts), queue positions,
``withdraw`` of a request cancelled while queued (it never reaches the model), ``admit`` and
``retire`` (release the slot, *then* push the one ``Finished``). The local batching engine and the
remote engine both use it, so the limit, the queue and the stats behave the same for both.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from typing import Generic, Protocol, TypeVar

from ...admission import AdmissionGate
from ...errors import QueueFull
from ...types import Finished, FinishReason, LifecycleObserver, Queued, RequestId, Usage
from .stream import RequestStream

log = logging.getLogger(__name__)


class NullObserver:
    """An observer that records nothing (the default when no stats recorder is given)."""

    def on_queued(self, request_id: RequestId) -> None: ...
    def on_rejected(self) -> None: ...
    def on_admitted(self, request_id: RequestId) -> None: ...
    def on_first_token(self, request_id: RequestId) -> None: ...
    def on_finished(self, request_id: RequestId, reason: FinishReason, usage: Usage) -> None: ...


class Pending(Protocol):
    """What the lifecycle needs of an engine's per-request object."""

    @property
    def stream(self) -> RequestStream: ...
    @property
    def prompt_ids(self) -> list[int]: ...
    @property
    def t_submit(self) -> float: ...


R = TypeVar("R", bound=Pending)


def make_usage(prompt_tokens: int, completion_tokens: int, *, t_submit: float, t_admit: float | None,
               t_first: float | None, now: float | None = None) -> Usage:
    """Token counts and timings; tokens/s counts decode time only (first token -> finish)."""
    now = time.perf_counter() if now is None else now
    decode_s = now - t_first if t_first is not None else 0.0
    n = completion_tokens
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=n,
                 ttft_s=None if t_first is None else t_first - t_submit,
                 queue_s=max(0.0, (t_admit or now) - t_submit), total_s=now - t_submit,
                 tokens_per_s=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0)


class RequestLifecycle(Generic[R]):
    """Gate + observer bookkeeping for one engine (thread-safe: the gate holds the lock)."""

    def __init__(self, gate: AdmissionGate[R], observer: LifecycleObserver | None = None) -> None:
        self.gate = gate
        self.observer: LifecycleObserver = _Guarded(observer) if observer is not None else NullObserver()
        self._ids = itertools.count(1)
        self._tag = uuid.uuid4().hex[:6]

    def new_id(self) -> RequestId:
        return RequestId(f"req-{self._tag}-{next(self._ids)}")

    def enqueue(self, pending: R) -> None:
        """Put ``pending`` in line and tell its stream where it stands; raises QueueFull."""
        rid = pending.stream.id
        try:
            position = self.gate.enqueue(rid, pending)
        except QueueFull:
            self.observer.on_rejected()
            raise
        self.observer.on_queued(rid)
        pending.stream._push(Queued(rid, position))

    def withdraw(self, rid: RequestId) -> bool:
        """Cancel a request that is still queued: it ends now and never runs. False if not queued."""
        entry = self.gate.withdraw_entry(rid)
        if entry is None:
            return False
        pending = entry[1]
        if pending is not None:
            now = time.perf_counter()
            usage = Usage(prompt_tokens=len(pending.prompt_ids), queue_s=now - pending.t_submit,
                          total_s=now - pending.t_submit)
            if pending.stream._push(Finished(rid, FinishReason.CANCELLED, "", usage)):
                self.observer.on_finished(rid, FinishReason.CANCELLED, usage)
        return True

    def admit(self) -> list[R]:
        """Waiting requests that may run now (oldest first), marked admitted."""
        admitted = []
        for rid, pending in self.gate.admit_entries():
            self.observer.on_admitted(rid)
            admitted.append(pending)
        return admitted

    def first_token(self, rid: RequestId) -> None:
        self.observer.on_first_token(rid)

    def retire(self, stream: RequestStream, finished: Finished) -> None:
        """Free the slot, then deliver the final event (every engine's only exit path)."""
        self.gate.release(stream.id)
        if stream._push(finished):
            self.observer.on_finished(stream.id, finished.finish_reason, finished.usage)

    def announce_positions(self) -> None:
        """Tell every queued request its current position (queued clients hear they still wait)."""
        for pos, (rid, pending) in enumerate(self.gate.waiting_entries(), start=1):
            if pending is not None:
                pending.stream._push(Queued(rid, pos))

    def fail_waiting(self, reason: FinishReason, error: str | None = None) -> None:
        """End every queued request (shutdown, or an engine that cannot serve)."""
        for rid, pending in self.gate.waiting_entries():
            entry = self.gate.withdraw_entry(rid)
            if entry is None or pending is None:
                continue
            now = time.perf_counter()
            usage = Usage(prompt_tokens=len(pending.prompt_ids), queue_s=now - pending.t_submit,
                          total_s=now - pending.t_submit)
            if pending.stream._push(Finished(rid, reason, "", usage, error)):
                self.observer.on_finished(rid, reason, usage)


class _Guarded:
    """An observer whose exceptions are logged, never raised: the numbers are not worth a request.

    The observer runs on the engine thread and on request paths; a bug in it (or in a user's own
    observer) must not kill the engine or leave a request without its final event.
    """

    def __init__(self, inner: LifecycleObserver) -> None:
        self.inner = inner

    def _call(self, name: str, *args: object) -> None:
        try:
            getattr(self.inner, name)(*args)
        except Exception:
            log.exception("the lifecycle observer raised in %s (ignored)", name)

    def on_queued(self, request_id: RequestId) -> None:
        self._call("on_queued", request_id)

    def on_rejected(self) -> None:
        self._call("on_rejected")

    def on_admitted(self, request_id: RequestId) -> None:
        self._call("on_admitted", request_id)

    def on_first_token(self, request_id: RequestId) -> None:
        self._call("on_first_token", request_id)

    def on_finished(self, request_id: RequestId, reason: FinishReason, usage: Usage) -> None:
        self._call("on_finished", request_id, reason, usage)
