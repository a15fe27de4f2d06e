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
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ...admission import AdmissionGate
from ...config import Limits, SamplingParams
from ...errors import ConfigError, EngineClosed
from ...stats import KVCacheStats
from ...types import FinishReason, LifecycleObserver, RequestId, TokenLogprob
from ..core.capabilities import Capabilities
from ..core.host import EngineHost, HostedGenerator, bind_to_model, check_gather_s
from ..core.lifecycle import RequestLifecycle
from ..core.protocol import StepBackend
from ..core.rows import RowFactory
from ..core.stream import RequestStream
from ..core.validation import check_prompt, tokenizer_vocab_size
from .decoder import BatchDecoder, Row, new_row

log = logging.getLogger(__name__)

DEFAULT_SESSION_KV_BUDGET_MB = 512.0  # ~11k positions of SmolLM2-135M fp32 (45 KiB each)
CAPABILITIES = Capabilities(logprobs=True, scoring=True, grammar=True, kv_reuse=True, inline=True)


@dataclass(frozen=True, slots=True)
class ScoreJob:
    """A teacher-forced scoring forward the engine thread runs between two steps."""

    ids: tuple[int, ...]
    start: int
    top: int
    future: Future[tuple[TokenLogprob, ...]]


class Engine(HostedGenerator):
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

    CAPABILITIES = CAPABILITIES

    def __init__(self, model: Any, *, num_of_concurrent_executions: int = 2, max_queue_size: int = 5,
                 observer: LifecycleObserver | None = None, prefill_chunk: int = 256,
                 gather_s: float = 0.01, prefix_cache_mb: float = 64.0,
                 session_kv_budget_mb: float = DEFAULT_SESSION_KV_BUDGET_MB, onednn: bool = True,
                 backend: StepBackend[Any] | None = None, gate: AdmissionGate[Row] | None = None) -> None:
        if isinstance(prefix_cache_mb, bool) or not isinstance(prefix_cache_mb, (int, float)) or prefix_cache_mb < 0:
            raise ConfigError(f"prefix_cache_mb must be a number >= 0, got {prefix_cache_mb!r}",
                              name="prefix_cache_mb")
        if (isinstance(session_kv_budget_mb, bool) or not isinstance(session_kv_budget_mb, (int, float))
                or session_kv_budget_mb < 0):
            raise ConfigError(f"session_kv_budget_mb must be a number >= 0, got {session_kv_budget_mb!r}",
                              name="session_kv_budget_mb")
        self.model = model
        bind_to_model(model, self)  # closing the model closes this engine
        self.gate: AdmissionGate[Row] = gate if gate is not None else AdmissionGate(
            Limits(num_of_concurrent_executions, max_queue_size))
        self.lifecycle: RequestLifecycle[Row] = RequestLifecycle(self.gate, observer)
        self.observer: LifecycleObserver = self.lifecycle.observer
        self.prefill_chunk = prefill_chunk
        self.gather_s = check_gather_s(gather_s)
        self.prefix_cache_mb = float(prefix_cache_mb)
        self.session_kv_budget_mb = float(session_kv_budget_mb)
        self.onednn = onednn
        self._backend = backend
        self._host: EngineHost[Row] = EngineHost(self, self.lifecycle, backend=self.backend_name,
                                                 label="the engine", thread_name="chatstream-engine",
                                                 gather_s=self.gather_s)
        self._lock = threading.Lock()
        self._rows = RowFactory(model, on_first_token=self.lifecycle.first_token)
        self._jobs: list[ScoreJob] = []
        self._live: dict[Any, Row] = {}  # admitted and not yet retired (ended on a crash, whatever the decoder lost)
        self._decoder: BatchDecoder | None = None  # built on the engine thread
        self.steps = 0  # decode steps run, for tests and stats

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def backend_name(self) -> str:
        return str(getattr(self.model, "backend", "torch"))

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every request, stop the thread and wait for it (idempotent)."""
        self._host.close(timeout)
        self._fail_jobs()

    # -- requests ------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
               stop_strings: Sequence[str] = (), output_replacements: Sequence[tuple[str, str]] = (),
               stop_token_ids: Sequence[int] = (), session_key: str | None = None,
               messages: Sequence[dict[str, str]] | None = None) -> RequestStream:
        """Queue a request; returns its stream at once.

        Raises:
            QueueFull: every slot is busy and the queue is full (decided now, not later).
            InvalidParameter: the prompt is empty, has an id outside the vocabulary, or does not
                fit the model's context window.
            EngineClosed: the engine was closed.
            EngineUnavailable: the engine failed (its build, or its thread).
        """
        params = params or SamplingParams()
        ids = check_prompt(prompt_ids, window=int(getattr(self.model, "context_window", 0) or 0),
                           vocab_size=self.vocab_size, messages=messages, engine="a local model")
        self.start()
        self._host.check_can_serve()
        stream = RequestStream(self.lifecycle.new_id(), self._host.cancel)
        row = new_row(self._rows, stream, ids, params, stop_strings, output_replacements,
                      stop_token_ids, session_key, vocab_size=self.vocab_size)
        self._host.enqueue(row)
        return stream

    @property
    def vocab_size(self) -> int | None:
        """Prompt ids must be below this: the embedding rows (the config's), else the tokenizer's."""
        size = getattr(getattr(self.model.model, "config", None), "vocab_size", None)
        return int(size) if isinstance(size, int) else tokenizer_vocab_size(self.model.tokenizer)

    def score(self, ids: Sequence[int], start: int, *, top: int = 0) -> Future[tuple[TokenLogprob, ...]]:
        """Logprobs of ``ids[start:]`` (teacher-forced, one forward), computed on the engine thread
        between two steps; the future holds one :class:`~chatstream_lab.types.TokenLogprob` per token.

        Scoring does not take a slot of the gate: it is one forward, and it runs between the steps
        of whatever generates.

        Raises:
            InvalidParameter: nothing to score, ``top`` out of 0..20, an id outside the vocabulary,
                or over the context window.
        """
        from .scoring import check_score_request

        job_ids = tuple(int(i) for i in ids)
        check_score_request(job_ids, start, top, int(getattr(self.model, "context_window", 0) or 0))
        check_prompt(job_ids, window=0, vocab_size=self.vocab_size)
        self.start()
        self._host.check_can_serve()
        job = ScoreJob(job_ids, start, top, Future())
        with self._lock:
            self._jobs.append(job)
        if self._host.closing or self._host.failed:
            self._fail_jobs()
        self._host.wake()
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
        decoder = self._decoder  # (released on the engine thread when it stops)
        if decoder is not None:
            decoder.backend.forget(session_key)

    def kv_cache_stats(self) -> KVCacheStats | None:
        """The session KV kept by the backend (None: it keeps none, the engine has not started, or
        it stopped)."""
        decoder = self._decoder
        return decoder.backend.kv_stats() if decoder is not None else None

    # -- engine thread (the host's Worker and Stepper) ------------------------------------
    def build(self) -> None:
        """The step backend for the model (oneDNN packing, caches) and the decoder over it."""
        from .backends import for_model

        backend = self._backend or for_model(
            self.model, prefix_cache_bytes=int(self.prefix_cache_mb * (1 << 20)),
            session_kv_bytes=int(self.session_kv_budget_mb * (1 << 20)), onednn=self.onednn)
        self._decoder = BatchDecoder(self.model, backend, on_retire=self._retire,
                                     on_first_token=self.lifecycle.first_token,
                                     prefill_chunk=self.prefill_chunk, rows=self._rows)

    def serve(self) -> None:
        self._host.run_steps(self)

    def has_work(self) -> bool:
        return self._decoder is not None and self._decoder.has_work

    def add(self, rows: list[Row]) -> None:
        assert self._decoder is not None
        for row in rows:
            self._live[row.id] = row
            self._decoder.add(row)

    def cancel(self, ids: set[RequestId]) -> None:
        assert self._decoder is not None
        self._decoder.cancel(ids)

    def between_steps(self) -> None:
        if self._jobs:
            assert self._decoder is not None
            self._run_jobs(self._decoder)

    def step(self) -> None:
        assert self._decoder is not None
        self._decoder.step()
        self.steps += 1

    def _retire(self, row: Row) -> None:
        """Free the slot, then deliver the final event (the engine thread's only exit path)."""
        assert row.finished is not None
        self._live.pop(row.id, None)
        self.lifecycle.retire(row.stream, row.finished)

    def end_rows(self, reason: FinishReason, error: str | None) -> None:
        """Finish every admitted request (each exactly once), however the loop ended."""
        try:
            if self._decoder is not None:
                self._decoder.fail_all(reason, error)
        except Exception:  # the backend could not even reset: the rows must still end
            log.exception("failing the engine's rows raised")
        for row in list(self._live.values()):  # rows the decoder lost track of mid-step
            row.finish(reason, error)
            self._retire(row)
        self._fail_jobs()

    def release(self) -> None:
        """Drop the decoder, and with it the batch's KV, the prefix cache and the sessions' kept KV:
        a closed engine holds no memory even while something still references it. (The model
        belongs to the LoadedModel.)"""
        self._decoder = None
