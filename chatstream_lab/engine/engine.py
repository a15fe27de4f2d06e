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

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ..admission import AdmissionGate
from ..config import SamplingParams
from ..errors import ChatStreamLabError, ConfigError, InvalidParameter, QueueFull
from ..types import Finished, FinishReason, LifecycleObserver, Queued, RequestId, Usage
from .decoder import BatchDecoder, Row
from .stream import RequestStream

log = logging.getLogger(__name__)

_HEARTBEAT_S = 1.0  # queued requests hear their position at least this often


class _NullObserver:
    def on_queued(self, request_id: RequestId) -> None: ...
    def on_rejected(self) -> None: ...
    def on_admitted(self, request_id: RequestId) -> None: ...
    def on_first_token(self, request_id: RequestId) -> None: ...
    def on_finished(self, request_id: RequestId, reason: FinishReason, usage: Usage) -> None: ...


class EngineClosed(ChatStreamLabError):
    """The engine was closed; create a new one (or call ``Lab.serve`` / ``start`` again)."""


class Engine:
    """Runs generation for many consumers on one dedicated thread.

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

    Example:
        >>> engine = Engine(scripted_model("Hello"))            # doctest: +SKIP
        >>> engine.start()
        >>> engine.submit(ids, SamplingParams(temperature=0)).text()
        'Hello'
        >>> engine.close()
    """

    def __init__(self, model: Any, *, num_of_concurrent_executions: int = 2, max_queue_size: int = 5,
                 observer: LifecycleObserver | None = None, prefill_chunk: int = 256,
                 gather_s: float = 0.01, prefix_cache_mb: float = 64.0) -> None:
        if isinstance(gather_s, bool) or not isinstance(gather_s, (int, float)) or not 0 <= gather_s <= 1:
            raise ConfigError(f"gather_s must be a number of seconds in [0, 1], got {gather_s!r}",
                              name="gather_s")
        self.model = model
        self.gate = AdmissionGate(num_of_concurrent_executions, max_queue_size)
        self.observer: LifecycleObserver = observer or _NullObserver()
        self.prefill_chunk = prefill_chunk
        self.gather_s = float(gather_s)
        if isinstance(prefix_cache_mb, bool) or not isinstance(prefix_cache_mb, (int, float)) or prefix_cache_mb < 0:
            raise ConfigError(f"prefix_cache_mb must be a number >= 0, got {prefix_cache_mb!r}",
                              name="prefix_cache_mb")
        self.prefix_cache_mb = float(prefix_cache_mb)
        self._lock = threading.Lock()
        self._waiting: dict[RequestId, Row] = {}
        self._cancelled: set[RequestId] = set()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._decoder: BatchDecoder | None = None
        self._ids = itertools.count(1)
        self._run_tag = uuid.uuid4().hex[:6]
        self.steps = 0  # decode steps run, for tests and stats

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Engine:
        """Start the engine thread (idempotent)."""
        with self._lock:
            if self._closing.is_set():
                raise EngineClosed("this engine was closed; create a new Engine")
            if self._thread is None:
                self._decoder = BatchDecoder(self.model, on_retire=self._retire,
                                             on_first_token=self._first_token,
                                             prefill_chunk=self.prefill_chunk,
                                             prefix_cache_bytes=int(self.prefix_cache_mb * (1 << 20)))
                self._thread = threading.Thread(target=self._run, name="chatstream-engine", daemon=True)
                self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every request, stop the thread and wait for it (idempotent)."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for rid in list(self._waiting):
            self._cancel(rid)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
               stop_strings: Sequence[str] = (), output_replacements: Sequence[tuple[str, str]] = (),
               stop_token_ids: Sequence[int] = ()) -> RequestStream:
        """Queue a request; returns its stream at once.

        Raises:
            QueueFull: every slot is busy and the queue is full (decided now, not later).
            InvalidParameter: the prompt does not fit the model's context window, or is empty.
            EngineClosed: the engine was closed.
        """
        params = params or SamplingParams()
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise InvalidParameter("the prompt is empty", name="prompt")
        window = int(getattr(self.model, "context_window", 0) or 0)
        if window and len(ids) >= window:
            raise InvalidParameter(f"the prompt has {len(ids)} tokens; the model's context window is "
                                   f"{window}. Shorten the conversation.", name="prompt")
        self.start()
        assert self._decoder is not None
        rid = RequestId(f"req-{self._run_tag}-{next(self._ids)}")
        stream = RequestStream(rid, self._cancel)
        row = self._decoder.make_row(stream, ids, params, stop_strings, output_replacements,
                                     stop_token_ids)
        with self._lock:
            self._waiting[rid] = row
        try:
            position = self.gate.enqueue(rid)
        except QueueFull:
            with self._lock:
                self._waiting.pop(rid, None)
            self.observer.on_rejected()
            raise
        self.observer.on_queued(rid)
        stream._push(Queued(rid, position))
        self._wake.set()
        return stream

    def _cancel(self, rid: RequestId) -> None:
        if self.gate.withdraw(rid):  # still queued: it never reaches the model
            with self._lock:
                row = self._waiting.pop(rid, None)
            if row is not None:
                usage = Usage(prompt_tokens=len(row.prompt_ids),
                              queue_s=time.perf_counter() - row.t_submit,
                              total_s=time.perf_counter() - row.t_submit)
                fin = Finished(rid, FinishReason.CANCELLED, "", usage)
                if row.stream._push(fin):
                    self.observer.on_finished(rid, FinishReason.CANCELLED, usage)
            return
        with self._lock:
            self._cancelled.add(rid)
        self._wake.set()

    # -- engine thread -------------------------------------------------------------------
    def _first_token(self, row: Row) -> None:
        self.observer.on_first_token(row.id)

    def _retire(self, row: Row) -> None:
        """Free the slot, then deliver the final event (the engine thread's only exit path)."""
        self.gate.release(row.id)
        assert row.finished is not None
        if row.stream._push(row.finished):
            self.observer.on_finished(row.id, row.finished.finish_reason, row.finished.usage)

    def _admit(self, decoder: BatchDecoder) -> None:
        admitted = self.gate.admit()
        for rid in admitted:
            with self._lock:
                row = self._waiting.pop(rid, None)
            if row is None:  # cannot happen: submit registers before enqueue
                self.gate.release(rid)
                continue
            self.observer.on_admitted(rid)
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

    def _announce_positions(self) -> None:
        with self._lock:
            waiting = dict(self._waiting)
        for pos, rid in enumerate(self.gate.waiting_ids(), start=1):
            row = waiting.get(rid)
            if row is not None:
                row.stream._push(Queued(rid, pos))

    def _run(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        last_heartbeat = time.monotonic()
        try:
            while not self._closing.is_set():
                self._wake.clear()
                before = len(self._waiting)
                self._admit(decoder)
                with self._lock:
                    cancelled, self._cancelled = self._cancelled, set()
                if cancelled:
                    decoder.cancel(cancelled)
                now = time.monotonic()
                if len(self._waiting) != before or now - last_heartbeat >= _HEARTBEAT_S:
                    self._announce_positions()
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
            decoder.fail_all(FinishReason.ERROR, f"engine crashed: {exc}")
            raise
        finally:
            decoder.fail_all(FinishReason.CANCELLED)
