"""Stats stage: lifecycle events in, immutable :class:`StatsSnapshot` out.

The engine (any thread) calls the :class:`~chatstream_lab.types.LifecycleObserver` methods;
each is a dict/counter update under one short lock. All arithmetic (percentiles, windowed
rates) happens in :meth:`StatsRecorder.snapshot`, which ``/stats``, ``/metrics`` and the
notebook dashboard all read, so they can never disagree.

Invariants: ``running`` and ``queued`` never go negative; a request id counts at most once in
``completed + cancelled + errors``; every buffer is bounded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..types import FinishReason, RequestId, Usage
from .metrics import percentile, window_rate


@dataclass(frozen=True, slots=True)
class StatsPoint:
    """One sample of the time series, taken at every lifecycle event (``t`` is seconds since start)."""

    t: float
    running: int
    queued: int
    finished: int  # completed + cancelled + errors so far
    completion_tokens: int  # tokens of all finished requests so far


@dataclass(frozen=True, slots=True)
class KVCacheStats:
    """Per-session KV kept across turns (the engine's), as ``/stats`` shows it under ``kv_cache``.

    ``bytes`` is what the kept entries hold; ``batch_bytes`` the live batch's KV, which counts
    against the same ``budget_bytes`` and wins over kept entries. ``reused_tokens`` are prompt
    positions a turn did not prefill because its session's KV was kept; ``prefilled_tokens`` the
    prompt positions the model did run (every request, reuse or not).
    """

    entries: int
    bytes: int
    budget_bytes: int
    batch_bytes: int = 0
    hits: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    stored: int = 0
    evictions: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"entries": self.entries, "bytes": self.bytes, "budget_bytes": self.budget_bytes,
                "batch_bytes": self.batch_bytes, "hits": self.hits, "reused_tokens": self.reused_tokens,
                "prefilled_tokens": self.prefilled_tokens, "stored": self.stored,
                "evictions": self.evictions}


@dataclass(frozen=True, slots=True)
class ModelChange:
    """The served model changed at ``t`` (seconds since start): the dashboard marks it."""

    t: float
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Counts and latency figures at one instant. Times are seconds; rates tokens per second."""

    running: int
    queued: int
    rejected: int
    completed: int
    cancelled: int
    errors: int
    ttft_p50: float | None
    ttft_p95: float | None
    tokens_per_s_p50: float | None
    throughput_tokens_per_s: float  # all requests together, over the last ``window_s``
    window_s: float
    completion_tokens_total: int
    uptime_s: float
    config_id: str
    history: tuple[StatsPoint, ...] = ()
    kv_cache: KVCacheStats | None = None  # None: the generator keeps no session KV
    model_changes: tuple[ModelChange, ...] = ()  # every switch of the served model, oldest first

    def as_dict(self, *, with_history: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "running": self.running, "queued": self.queued, "rejected": self.rejected,
            "completed": self.completed, "cancelled": self.cancelled, "errors": self.errors,
            "ttft_p50": self.ttft_p50, "ttft_p95": self.ttft_p95,
            "tokens_per_s_p50": self.tokens_per_s_p50,
            "throughput_tokens_per_s": self.throughput_tokens_per_s, "window_s": self.window_s,
            "completion_tokens_total": self.completion_tokens_total, "uptime_s": self.uptime_s,
            "config_id": self.config_id,
            "kv_cache": None if self.kv_cache is None else self.kv_cache.as_dict(),
            "model_changes": [{"t": c.t, "from": c.old, "to": c.new} for c in self.model_changes],
        }
        if with_history:
            d["history"] = [
                {"t": p.t, "running": p.running, "queued": p.queued, "finished": p.finished,
                 "completion_tokens": p.completion_tokens} for p in self.history
            ]
        return d


class StatsRecorder:
    """A thread-safe :class:`~chatstream_lab.types.LifecycleObserver` that keeps bounded stats.

    Args:
        config_id: shown in every snapshot so numbers can be tied to one configuration.
        window_s: the window of the aggregate throughput figure.
        max_samples: how many finished requests feed the percentiles.
        max_history: how many time-series points are kept for plots.
        clock: monotonic seconds; injectable for tests.
        load: where running / queued come from (the admission gate's ``snapshot``, which has
            ``running`` and ``waiting``): the gate is the one place that knows them. Without it
            (a recorder on its own) they are counted from the lifecycle events.
        kv_cache: where the session-KV figures come from (the generator's); None: not shown.

    Example::

        rec = StatsRecorder(config_id="abc")
        rec.on_queued(RequestId("r1")); rec.on_admitted(RequestId("r1"))
        rec.snapshot().running  # 1
    """

    def __init__(self, config_id: str = "", *, window_s: float = 10.0, max_samples: int = 1000,
                 max_history: int = 2000, clock: Callable[[], float] = time.monotonic,
                 load: Callable[[], Any] | None = None,
                 kv_cache: Callable[[], KVCacheStats | None] | None = None) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        self.config_id = config_id
        self.window_s = window_s
        self._clock = clock
        self._load = load
        self._kv_cache = kv_cache
        self._t0 = clock()
        self._lock = threading.Lock()
        self._waiting: set[RequestId] = set()
        self._running: set[RequestId] = set()
        self._first_token_at: dict[RequestId, float] = {}
        self._rejected = 0
        self._counts = {FinishReason.STOP: 0, FinishReason.LENGTH: 0, FinishReason.CANCELLED: 0,
                        FinishReason.ERROR: 0}
        self._tokens_total = 0
        self._ttft: deque[float] = deque(maxlen=max_samples)
        self._tok_rate: deque[float] = deque(maxlen=max_samples)
        # (first token, finish, completion tokens) of recent requests, for the windowed rate
        self._spans: deque[tuple[float, float, int]] = deque(maxlen=max_samples)
        self._history: deque[StatsPoint] = deque(maxlen=max_history)
        self._model_changes: deque[ModelChange] = deque(maxlen=100)

    # -- LifecycleObserver ----------------------------------------------------------------
    def on_queued(self, request_id: RequestId) -> None:
        with self._lock:
            self._waiting.add(request_id)
            self._sample()

    def on_rejected(self) -> None:
        with self._lock:
            self._rejected += 1
            self._sample()

    def on_admitted(self, request_id: RequestId) -> None:
        with self._lock:
            self._waiting.discard(request_id)
            self._running.add(request_id)
            self._sample()

    def on_first_token(self, request_id: RequestId) -> None:
        with self._lock:
            self._first_token_at.setdefault(request_id, self._clock())

    def on_finished(self, request_id: RequestId, reason: FinishReason, usage: Usage) -> None:
        now = self._clock()
        with self._lock:
            self._waiting.discard(request_id)
            self._running.discard(request_id)
            first = self._first_token_at.pop(request_id, None)
            self._counts[FinishReason(reason)] += 1
            self._tokens_total += usage.completion_tokens
            if usage.ttft_s is not None:
                self._ttft.append(usage.ttft_s)
            if usage.completion_tokens > 0 and usage.tokens_per_s > 0:
                self._tok_rate.append(usage.tokens_per_s)
            if usage.completion_tokens > 0:
                self._spans.append((first if first is not None else now, now, usage.completion_tokens))
            self._sample()

    def on_model_change(self, old: str, new: str) -> None:
        """The served model was switched (``Service.switch_model``): the numbers go on."""
        with self._lock:
            self._model_changes.append(ModelChange(self._clock() - self._t0, old, new))
            self._sample()

    # -- reading ----------------------------------------------------------------------------
    def snapshot(self, *, with_history: bool = True) -> StatsSnapshot:
        """An immutable copy of the current numbers (cheap enough to call a few times a second)."""
        now = self._clock()
        with self._lock:
            ttft = list(self._ttft)
            rates = list(self._tok_rate)
            spans = list(self._spans)
            counts = dict(self._counts)
            history = tuple(self._history) if with_history else ()
            running, queued = self._counts_now()
            rejected, tokens_total = self._rejected, self._tokens_total
            changes = tuple(self._model_changes)
        return StatsSnapshot(
            running=running, queued=queued, rejected=rejected,
            completed=counts[FinishReason.STOP] + counts[FinishReason.LENGTH],
            cancelled=counts[FinishReason.CANCELLED], errors=counts[FinishReason.ERROR],
            ttft_p50=percentile(ttft, 50), ttft_p95=percentile(ttft, 95),
            tokens_per_s_p50=percentile(rates, 50),
            throughput_tokens_per_s=window_rate(spans, now, self.window_s),
            window_s=self.window_s, completion_tokens_total=tokens_total,
            uptime_s=now - self._t0, config_id=self.config_id, history=history,
            kv_cache=self._kv_cache() if self._kv_cache is not None else None, model_changes=changes,
        )

    def _counts_now(self) -> tuple[int, int]:
        """Running and queued: the gate's, or the events' when this recorder has no gate."""
        if self._load is not None:
            load = self._load()
            return int(load.running), int(load.waiting)
        return len(self._running), len(self._waiting)

    def _sample(self) -> None:
        """Append a time-series point; the caller holds the lock."""
        running, queued = self._counts_now()
        self._history.append(StatsPoint(
            t=self._clock() - self._t0, running=running, queued=queued,
            finished=sum(self._counts.values()), completion_tokens=self._tokens_total,
        ))

    def __repr__(self) -> str:
        s = self.snapshot(with_history=False)
        return (f"<StatsRecorder running={s.running} queued={s.queued} completed={s.completed} "
                f"cancelled={s.cancelled} errors={s.errors} rejected={s.rejected}>")
