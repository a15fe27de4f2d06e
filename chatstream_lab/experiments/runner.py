"""The grid runner: one thread with its own asyncio loop, submitting rows through each model's
service (its admission gate) and collecting what they produce.

Why a thread of its own: ``lab.grid(...)`` returns at once in a notebook, the kernel stays
responsive, and ``result.wait()`` can block a cell without blocking the runner. Each model is a
*lane* (its Service; the Lab's own for the Lab's model): local lanes run one after another (one
engine at a time on the CPU), remote lanes at the same time as them. A lane keeps at most
``concurrency`` rows in flight, which is at most the gate's limit, so the grid never fills the
queue: HTTP clients of a running endpoint queue behind it and take the next free slots (the gate
is FIFO). A ``QueueFull`` (other clients filled the queue) is waited out, never raised.

Checks and reference scores run on a small thread pool (a check may be a judge that waits for its
own generation); scores are submitted for every (variant, input) when a lane starts, so the
engine runs them between steps, several per step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import ServeConfig
from ..errors import ChatStreamLabError, QueueFull
from ..types import Delta, Finished, FinishReason, TokenLogprob
from .cache import RowCache
from .checks import Check, run_check
from .rows import CheckError, CheckValue, GridRow, RowOrigin, RowStatus

log = logging.getLogger(__name__)

QUEUE_FULL_BACKOFF_S = 0.05
SCORE_TIMEOUT_S = 300.0


class GridState:
    """The rows of one grid and a version counter, shared by the runner and its readers."""

    def __init__(self, rows: Sequence[GridRow]) -> None:
        self._rows = list(rows)
        self._lock = threading.Lock()
        self.version = 0
        self.finished = threading.Event()
        self.started_at = time.monotonic()
        self.finished_at: float | None = None
        self.generated = 0

    def rows(self) -> list[GridRow]:
        with self._lock:
            return list(self._rows)

    def row(self, index: int) -> GridRow:
        with self._lock:
            return self._rows[index]

    def set(self, row: GridRow) -> None:
        with self._lock:
            self._rows[row.index] = row
            self.version += 1

    def finish(self) -> None:
        with self._lock:
            self.finished_at = time.monotonic()
            self.version += 1
        self.finished.set()

    @property
    def elapsed_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at


@dataclass
class Lane:
    """One model's rows and the service that generates them."""

    label: str
    service: Any  # Service
    rows: list[int]
    concurrency: int
    remote: bool
    owned: bool  # a service the grid built for this model: closed when the lane ends
    logprobs: bool
    score_reason: str | None  # None: references can be scored
    configs: dict[int, ServeConfig] = field(default_factory=dict)  # row index -> configuration
    scorer: Any = None  # a Service of the same weights that can score, where this engine cannot


@dataclass(frozen=True)
class RunPlan:
    """What the runner does: lanes, checks, which rows copy which (same key), which are reused."""

    lanes: tuple[Lane, ...]
    checks: tuple[Check, ...]
    check_names: tuple[str, ...]
    leaders: dict[int, list[int]]  # row index -> rows of the same key that copy it
    reused: dict[int, GridRow]  # row index -> the earlier row it takes its output from
    score_configs: dict[int, ServeConfig]  # row index -> the configuration its reference is scored under


class GridRunner:
    """Runs a :class:`RunPlan` on its own thread (``start()``); ``stop()`` from any thread."""

    def __init__(self, state: GridState, plan: RunPlan, cache: RowCache | None) -> None:
        self.state = state
        self.plan = plan
        self.cache = cache
        self._stopping = threading.Event()
        self._streams: set[Any] = set()
        self._streams_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="chatstream-grid-checks")
        self._thread = threading.Thread(target=self._run, name="chatstream-grid", daemon=True)
        self._scores: dict[tuple[Any, ...], asyncio.Future[CheckValue]] = {}

    def start(self) -> GridRunner:
        self._thread.start()
        return self

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Submit nothing more and cancel the rows in flight (they end as cancelled)."""
        self._stopping.set()
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:
            stream.cancel()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the runner thread -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException:  # pragma: no cover - the rows say what failed; never a silent hang
            log.exception("the grid runner failed")
        finally:
            for row in self.state.rows():
                if not row.status.final:
                    self.state.set(row.replace(status=RowStatus.CANCELLED if self.stopping else RowStatus.FAILED,
                                               error=row.error or ("stopped" if self.stopping else "runner failed")))
            self._pool.shutdown(wait=False)
            self.state.finish()

    async def _main(self) -> None:
        local = [lane for lane in self.plan.lanes if not lane.remote]
        remote = [lane for lane in self.plan.lanes if lane.remote]

        async def one_after_another() -> None:
            for lane in local:
                await self._guarded(lane)

        await asyncio.gather(one_after_another(), *(self._guarded(lane) for lane in remote))

    async def _guarded(self, lane: Lane) -> None:
        loop = asyncio.get_running_loop()
        try:
            if not self.stopping:
                await self._lane(lane)
        except Exception as exc:
            log.exception("grid lane %s failed", lane.label)
            for i in lane.rows:
                if not self.state.row(i).status.final:
                    self._set(i, status=RowStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        finally:
            if lane.owned:
                await loop.run_in_executor(self._pool, lane.service.close)
            if lane.scorer is not None:
                await loop.run_in_executor(self._pool, lane.scorer.close)

    async def _lane(self, lane: Lane) -> None:
        loop = asyncio.get_running_loop()
        needs_engine = any(i not in self.plan.reused for i in lane.rows)
        if needs_engine:
            try:  # building an engine may take seconds: not on this loop
                await loop.run_in_executor(self._pool, lane.service.start)
            except ChatStreamLabError as exc:
                for i in lane.rows:
                    self._set(i, status=RowStatus.FAILED, error=f"the engine did not start: {exc}")
                return
        self._start_scores(lane)
        slots = asyncio.Semaphore(lane.concurrency)
        tasks: list[asyncio.Task[None]] = []
        copies = {j for followers in self.plan.leaders.values() for j in followers}
        for i in lane.rows:
            if self.stopping:
                break
            if i in copies:
                continue
            if i in self.plan.reused:
                tasks.append(asyncio.ensure_future(self._complete(lane, i, self._reused_row(i))))
                continue
            await slots.acquire()
            stream = await self._submit(lane, i)
            if stream is None:
                slots.release()
                continue
            tasks.append(asyncio.ensure_future(self._consume(lane, i, stream, slots)))
        await asyncio.gather(*tasks)

    def _reused_row(self, i: int) -> GridRow:
        earlier = self.plan.reused[i]
        return self.state.row(i).replace(
            output=earlier.output, finish_reason=earlier.finish_reason, prompt_tokens=earlier.prompt_tokens,
            completion_tokens=earlier.completion_tokens, ttft_s=earlier.ttft_s, latency_s=earlier.latency_s,
            tokens=earlier.tokens, versions=earlier.versions, origin=RowOrigin.REUSED)

    async def _submit(self, lane: Lane, i: int) -> Any:
        row = self.state.row(i)
        config = lane.configs[i]
        if lane.logprobs and config.params.logprobs is None:
            config = config.replace(logprobs=5)  # token colours for result.show(row); not in config_id
        while not self.stopping:
            try:
                stream = lane.service.submit(list(row.input.messages), config)
            except QueueFull:  # other clients filled the queue: wait for room, never overflow it
                await asyncio.sleep(QUEUE_FULL_BACKOFF_S)
                continue
            except ChatStreamLabError as exc:
                self._end(row.replace(status=RowStatus.FAILED, error=f"{type(exc).__name__}: {exc}"))
                return None
            with self._streams_lock:
                self._streams.add(stream)
            if self.stopping:
                stream.cancel()
            self._set(i, status=RowStatus.RUNNING)
            return stream
        return None

    async def _consume(self, lane: Lane, i: int, stream: Any, slots: asyncio.Semaphore) -> None:
        tokens: list[TokenLogprob] = []
        fin: Finished | None = None
        try:
            async for ev in stream:
                if isinstance(ev, Delta):
                    tokens.extend(ev.logprobs)
                elif isinstance(ev, Finished):
                    fin = ev
        finally:
            slots.release()
            with self._streams_lock:
                self._streams.discard(stream)
        assert fin is not None
        u = fin.usage
        row = self.state.row(i).replace(output=fin.text, finish_reason=fin.finish_reason.value,
                                        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                                        ttft_s=u.ttft_s, latency_s=u.total_s, tokens=tuple(tokens),
                                        origin=RowOrigin.GENERATED)
        if fin.finish_reason is FinishReason.CANCELLED:
            self._end(row.replace(status=RowStatus.CANCELLED, error="stopped"))
            return
        if fin.finish_reason is FinishReason.ERROR:
            self._end(row.replace(status=RowStatus.FAILED, error=fin.error or "generation failed"))
            return
        self.state.generated += 1
        await self._complete(lane, i, row)

    async def _complete(self, lane: Lane, i: int, row: GridRow) -> None:
        """Checks and the reference score; then the row (and its same-key copies) are done."""
        loop = asyncio.get_running_loop()
        checks = await loop.run_in_executor(self._pool, self._run_checks, row)
        score = await self._score_of(lane, i)
        done = row.replace(status=RowStatus.DONE, checks=checks, reference_logprob=score)
        if self.cache is not None:
            self.cache.add(done)
        self._end(done)

    def _end(self, row: GridRow) -> None:
        """Set a finished row, and the rows of this grid with its key (copies, with their seeds)."""
        self.state.set(row)
        for j in self.plan.leaders.get(row.index, ()):
            copy = self.state.row(j)
            origin = None if row.status is not RowStatus.DONE else (
                RowOrigin.REUSED if row.origin is RowOrigin.REUSED else RowOrigin.SAME_KEY)
            self.state.set(row.replace(index=j, seed=copy.seed, origin=origin))

    def _run_checks(self, row: GridRow) -> dict[str, CheckValue]:
        return {name: run_check(check, row.output, row)
                for name, check in zip(self.plan.check_names, self.plan.checks)}

    # -- reference scores ---------------------------------------------------------------------------
    def _score_key(self, lane: Lane, i: int) -> tuple[Any, ...] | None:
        row = self.state.row(i)
        if row.input.reference is None:
            return None
        config = self.plan.score_configs[i]
        return (lane.label, config.config_id, row.input.index, row.input.reference)

    def _start_scores(self, lane: Lane) -> None:
        loop = asyncio.get_running_loop()
        for i in lane.rows:
            key = self._score_key(lane, i)
            if key is None or key in self._scores or lane.score_reason is not None:
                continue
            row = self.state.row(i)
            self._scores[key] = asyncio.ensure_future(loop.run_in_executor(
                self._pool, _score, lane.scorer or lane.service, list(row.input.messages), row.input.reference,
                self.plan.score_configs[i]))

    async def _score_of(self, lane: Lane, i: int) -> CheckValue | None:
        key = self._score_key(lane, i)
        if key is None:
            return None
        if lane.score_reason is not None:
            return CheckError(lane.score_reason)
        return await asyncio.shield(self._scores[key])

    def _set(self, i: int, **changes: Any) -> None:
        self.state.set(self.state.row(i).replace(**changes))


def _score(service: Any, messages: list[Any], reference: str | None, config: ServeConfig) -> CheckValue:
    """Mean log-probability per token of ``reference`` (``Service.score``, on the engine thread)."""
    try:
        return float(service.score(messages, reference, config, timeout=SCORE_TIMEOUT_S).mean_logprob)
    except (ChatStreamLabError, TimeoutError) as exc:
        return CheckError(f"not scored: {exc}")


__all__ = ["GridRunner", "GridState", "Lane", "RunPlan"]

