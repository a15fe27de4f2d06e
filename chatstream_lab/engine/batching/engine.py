"""The engine: ONE thread owns the model and runs the batched step loop.

Consumers on any thread or event loop call :meth:`Engine.submit` (which asks the admission
gate, so a full queue is refused synchronously, before any stream starts) and read the returned
:class:`RequestStream`. The engine thread admits waiting requests up to the concurrency limit
(the batch width), steps the :class:`BatchDecoder`, and retires finished rows: it releases the
slot and *then* pushes the final event, on every path (stop, length, error, cancel, shutdown).

Invariants (tested): only this thread calls the model; every accepted request gets exactly one
``Finished``; a cancelled queued request never reaches the model; a cancelled running request
leaves the batch at the next step boundary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ...admission import AdmissionGate
from ...config import Limits, SamplingParams
from ...errors import ChatStreamLabError, ConfigError, EngineUnavailable, InvalidParameter
from ...stats import KVCacheStats
from ...types import Finished, FinishReason, LifecycleObserver, TokenLogprob
from ..core.lifecycle import RequestLifecycle, make_usage
from ..core.protocol import EngineHealth, EngineState, StepBackend
from ..core.stream import RequestStream
from .decoder import BatchDecoder, Row

log = logging.getLogger(__name__)

_HEARTBEAT_S = 1.0  # queued requests hear their position at least this often
DEFAULT_SESSION_KV_BUDGET_MB = 512.0  # ~11k positions of SmolLM2-135M fp32 (45 KiB each)


class EngineClosed(ChatStreamLabError):
    """The engine was closed; create a new one (or call ``Lab.serve`` / ``start`` again)."""


@dataclass(frozen=True, slots=True)
class ScoreJob:
    """A teacher-forced scoring forward the engine thread runs between two steps."""

    ids: tuple[int, ...]
    start: int
    top: int
    future: Future[tuple[TokenLogprob, ...]]


class Engine:
    """Runs generation for many consumers on one dedicated thread (the local, batching
    :class:`~chatstream_lab.engine.core.protocol.Generator`).

    Args:
        model: a :class:`~chatstream_lab.models.LoadedModel`.
        num_of_concurrent_executions: how many requests decode together (the batch width).
        max_queue_size: how many more may wait; one more is refused with QueueFull.
        observer: receives lifecycle events (the stats recorder).
        prefill_chunk: prompt tokens prefilled per step while other rows decode.
        gather_s: when a request wakes an idle engine, further arrivals are admitted as long as
            each comes within ``gather_s`` of the last (``8 * gather_s`` at most) before the first
            forward, so a burst is prefilled together and decodes in lockstep. 0 disables it.
        prefix_cache_mb: memory for the keys/values of prompt prefixes that requests share (a
            template's system prompt), prefilled once and reused; 0 disables it.
        session_kv_budget_mb: memory for the KV of finished turns kept per session (``session_key``),
            so a session's next turn prefills only its new suffix; the live batch's KV counts
            against it first (kept entries are evicted, least recently used first, as the batch
            grows). 0 disables it.
        onednn: the oneDNN kernels of the torch backend on CPU float32 (False: plain torch).
        backend: the step-level backend to drive (default: the one for ``model``, made on start).
        gate: the admission gate to share (default: a new one with the limits above).

    Example:
        >>> engine = Engine(scripted_model("Hello"))            # doctest: +SKIP
        >>> engine.start()
        >>> engine.submit(ids, SamplingParams(temperature=0)).text()
        'Hello'
        >>> engine.close()
    """

    def __init__(self, model: Any, *, num_of_concurrent_executions: int = 2, max_queue_size: int = 5,
                 observer: LifecycleObserver | None = None, prefill_chunk: int = 256,
                 gather_s: float = 0.01, prefix_cache_mb: float = 64.0,
                 session_kv_budget_mb: float = DEFAULT_SESSION_KV_BUDGET_MB, onednn: bool = True,
                 backend: StepBackend[Any] | None = None, gate: AdmissionGate[Row] | None = None) -> None:
        if isinstance(gather_s, bool) or not isinstance(gather_s, (int, float)) or not 0 <= gather_s <= 1:
            raise ConfigError(f"gather_s must be a number of seconds in [0, 1], got {gather_s!r}",
                              name="gather_s")
        if isinstance(prefix_cache_mb, bool) or not isinstance(prefix_cache_mb, (int, float)) or prefix_cache_mb < 0:
            raise ConfigError(f"prefix_cache_mb must be a number >= 0, got {prefix_cache_mb!r}",
                              name="prefix_cache_mb")
        if (isinstance(session_kv_budget_mb, bool) or not isinstance(session_kv_budget_mb, (int, float))
                or session_kv_budget_mb < 0):
            raise ConfigError(f"session_kv_budget_mb must be a number >= 0, got {session_kv_budget_mb!r}",
                              name="session_kv_budget_mb")
        self.model = model
        self.gate: AdmissionGate[Row] = gate if gate is not None else AdmissionGate(
            Limits(num_of_concurrent_executions, max_queue_size))
        self.lifecycle: RequestLifecycle[Row] = RequestLifecycle(self.gate, observer)
        self.observer: LifecycleObserver = self.lifecycle.observer
        self.prefill_chunk = prefill_chunk
        self.gather_s = float(gather_s)
        self.prefix_cache_mb = float(prefix_cache_mb)
        self.session_kv_budget_mb = float(session_kv_budget_mb)
        self.onednn = onednn
        self._backend = backend
        self._lock = threading.Lock()
        self._cancelled: set[Any] = set()
        self._jobs: list[ScoreJob] = []
        self._live: dict[Any, Row] = {}  # admitted and not yet retired (ended on a crash, whatever the decoder lost)
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._decoder: BatchDecoder | None = None
        self._crash: str | None = None
        self.steps = 0  # decode steps run, for tests and stats

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def backend_name(self) -> str:
        return str(getattr(self.model, "backend", "torch"))

    def start(self) -> Engine:
        """Start the engine thread (idempotent)."""
        with self._lock:
            if self._closing.is_set():
                raise EngineClosed("this engine was closed; create a new Engine")
            if self._thread is None:
                from .backends import for_model

                backend = self._backend or for_model(
                    self.model, prefix_cache_bytes=int(self.prefix_cache_mb * (1 << 20)),
                    session_kv_bytes=int(self.session_kv_budget_mb * (1 << 20)), onednn=self.onednn)
                self._decoder = BatchDecoder(self.model, backend, on_retire=self._retire,
                                             on_first_token=self._first_token,
                                             prefill_chunk=self.prefill_chunk)
                self._thread = threading.Thread(target=self._run, name="chatstream-engine", daemon=True)
                self._thread.start()
        return self

    def health(self) -> EngineHealth:
        """The engine's state for ``/health``."""
        if self._closing.is_set():
            return EngineHealth(EngineState.CLOSED, self.backend_name)
        if self._thread is None:
            return EngineHealth(EngineState.IDLE, self.backend_name)
        if not self._thread.is_alive():
            return EngineHealth(EngineState.FAILED, self.backend_name, self._crash or "the engine thread stopped")
        return EngineHealth(EngineState.RUNNING, self.backend_name)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every request, stop the thread and wait for it (idempotent)."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.lifecycle.fail_waiting(FinishReason.CANCELLED)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
               stop_strings: Sequence[str] = (), output_replacements: Sequence[tuple[str, str]] = (),
               stop_token_ids: Sequence[int] = (), session_key: str | None = None,
               messages: Sequence[dict[str, str]] | None = None) -> RequestStream:
        """Queue a request; returns its stream at once.

        Raises:
            QueueFull: every slot is busy and the queue is full (decided now, not later).
            InvalidParameter: the prompt does not fit the model's context window, or is empty.
            EngineClosed: the engine was closed.
        """
        params = params or SamplingParams()
        ids = [int(i) for i in prompt_ids]
        if not ids and messages:
            raise InvalidParameter("a local model needs token ids, not messages: give it a tokenizer",
                                   name="messages")
        if not ids:
            raise InvalidParameter("the prompt is empty", name="prompt")
        window = int(getattr(self.model, "context_window", 0) or 0)
        if window and len(ids) >= window:
            raise InvalidParameter(f"the prompt has {len(ids)} tokens; the model's context window is "
                                   f"{window}. Shorten the conversation.", name="prompt")
        self.start()
        self._raise_if_failed()
        assert self._decoder is not None
        stream = RequestStream(self.lifecycle.new_id(), self._cancel)
        row = self._decoder.make_row(stream, ids, params, stop_strings, output_replacements,
                                     stop_token_ids, session_key)
        self.lifecycle.enqueue(row)
        if self._crash is not None or self._closing.is_set():  # lost the race with a crash or close
            self.lifecycle.fail_waiting(FinishReason.ERROR if self._crash else FinishReason.CANCELLED,
                                        self._crash and "the engine failed")
        self._wake.set()
        return stream

    def score(self, ids: Sequence[int], start: int, *, top: int = 0) -> Future[tuple[TokenLogprob, ...]]:
        """Logprobs of ``ids[start:]`` (teacher-forced, one forward), computed on the engine thread
        between two steps; the future holds one :class:`~chatstream_lab.types.TokenLogprob` per token.

        Scoring does not take a slot of the gate: it is one forward, and it runs between the steps
        of whatever generates.

        Raises:
            InvalidParameter: nothing to score, ``top`` out of 0..20, or over the context window.
        """
        from .scoring import check_score_request

        job_ids = tuple(int(i) for i in ids)
        check_score_request(job_ids, start, top, int(getattr(self.model, "context_window", 0) or 0))
        self.start()
        self._raise_if_failed()
        job = ScoreJob(job_ids, start, top, Future())
        with self._lock:
            self._jobs.append(job)
        if self._closing.is_set() or self._crash is not None:
            self._fail_jobs()
        self._wake.set()
        return job.future

    def _run_jobs(self, decoder: BatchDecoder) -> None:
        from .scoring import score_ids

        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(score_ids(decoder.backend, decoder.pieces, job.ids, job.start, job.top))
            except Exception as exc:  # a bad job fails itself only
                job.future.set_exception(exc)

    def _fail_jobs(self) -> None:
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(EngineClosed("the engine stopped before scoring"))

    def forget(self, session_key: str) -> None:
        """Drop the KV kept for ``session_key`` (any thread; a turn in flight keeps nothing)."""
        if self._decoder is not None:
            self._decoder.backend.forget(session_key)

    def kv_cache_stats(self) -> KVCacheStats | None:
        """The session KV kept by the backend (None: it keeps none, or the engine has not started)."""
        return self._decoder.backend.kv_stats() if self._decoder is not None else None

    def _raise_if_failed(self) -> None:
        if self._crash is not None or (self._thread is not None and not self._thread.is_alive()):
            raise EngineUnavailable(self._crash or "the engine thread stopped; restart the server")

    def _cancel(self, rid: Any) -> None:
        if self.lifecycle.withdraw(rid):  # still queued: it never reaches the model
            return
        with self._lock:
            self._cancelled.add(rid)
        self._wake.set()

    # -- engine thread -------------------------------------------------------------------
    def _first_token(self, row: Row) -> None:
        self.lifecycle.first_token(row.id)

    def _retire(self, row: Row) -> None:
        """Free the slot, then deliver the final event (the engine thread's only exit path)."""
        assert row.finished is not None
        self._live.pop(row.id, None)
        self.lifecycle.retire(row.stream, row.finished)

    def _admit(self, decoder: BatchDecoder) -> None:
        for row in self.lifecycle.admit():
            self._live[row.id] = row
            decoder.add(row)

    def _gather_burst(self, decoder: BatchDecoder) -> None:
        """Before the first forward after idle, admit the rest of a burst that is still arriving.

        Requests sent together reach the engine a few ms apart (each is parsed and tokenized on
        the server's thread). Prefilling the first one alone would put the others a prefill
        behind, and the batch would then run partial steps at both ends; waiting while arrivals
        keep coming costs a lone request at most ``gather_s`` of time to first token.
        """
        if self.gather_s <= 0:
            return
        deadline = time.monotonic() + 8 * self.gather_s
        while not self._closing.is_set() and self.gate.snapshot().running < self.gate.limit:
            left = deadline - time.monotonic()
            self._wake.clear()
            if left <= 0 or not self._wake.wait(min(self.gather_s, left)):
                return
            self._admit(decoder)

    def _run(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        last_heartbeat = time.monotonic()
        try:
            while not self._closing.is_set():
                self._wake.clear()
                before = self.gate.snapshot().waiting
                self._admit(decoder)
                with self._lock:
                    cancelled, self._cancelled = self._cancelled, set()
                if cancelled:
                    decoder.cancel(cancelled)
                if self._jobs:
                    self._run_jobs(decoder)
                now = time.monotonic()
                if self.gate.snapshot().waiting != before or now - last_heartbeat >= _HEARTBEAT_S:
                    self.lifecycle.announce_positions()
                    last_heartbeat = now
                if not decoder.has_work:
                    self._wake.wait(0.25)
                    continue
                if not decoder.active and decoder.pending:  # woken from idle
                    self._gather_burst(decoder)
                decoder.step()
                self.steps += 1
        except BaseException as exc:  # never leave consumers hanging, whatever happened
            log.exception("engine thread crashed")
            self._crash = f"the engine thread crashed ({type(exc).__name__}); restart the server"
            self._end_everything(decoder, FinishReason.ERROR, "the engine failed")
        finally:
            self._end_everything(decoder, FinishReason.CANCELLED)

    def _end_everything(self, decoder: BatchDecoder, reason: FinishReason, error: str | None = None) -> None:
        """Finish every admitted and queued request (each exactly once), however the loop ended."""
        try:
            decoder.fail_all(reason, error)
        except Exception:  # the backend could not even reset: the rows must still end
            log.exception("failing the engine's rows raised")
        for row in list(self._live.values()):  # rows the decoder lost track of mid-step
            if row.finished is None:
                usage = make_usage(len(row.prompt_ids), len(row.generated), t_submit=row.t_submit,
                                   t_admit=row.t_admit, t_first=row.t_first)
                row.finished = Finished(row.id, reason, "".join(row.parts), usage, error)
            self._retire(row)
        self.lifecycle.fail_waiting(reason, error)
        self._fail_jobs()
