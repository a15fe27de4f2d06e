"""The remote engine: the request-level :class:`~chatstream_lab.engine.core.protocol.Generator` whose
tokens come from OpenAI-compatible servers (llama-server, vLLM, SGLang) over HTTP.

Everything above the engine stays ours: the template renders the prompt here, the gate bounds
what this front-end sends (QueueFull raised synchronously by ``submit``), the observer records the
numbers, and every text chunk goes through the shared output pipeline
(:class:`~chatstream_lab.engine.core.rows.OutputRow`: stop strings held back even when split
across chunks, output replacements applied).

The engine's thread (an :class:`~chatstream_lab.engine.core.host.EngineHost`) runs one asyncio
loop and one ``httpx.AsyncClient``; a dispatcher on that loop admits requests from the gate as
slots free and runs one task per admitted request. The parts, one job each:

* ``upstreams.py``: the pool (least-loaded dispatch, session affinity, back-off, health checks);
* ``failover.py``: one request across upstreams (fail-over before the first byte);
* ``wire.py``: the OpenAI wire format (request body, event stream, error bodies).

A per-chunk read timeout bounds every wait, so no request hangs and no slot leaks.

Invariants (tested): every accepted request gets exactly one ``Finished``, pushed after its slot
is released; a cancelled queued request is never sent; a cancelled running one closes its HTTP
response (the upstream sees the disconnect and aborts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import httpx

from ...admission import AdmissionGate
from ...config import Limits, SamplingParams
from ...errors import ConfigError, EngineUnavailable, InvalidParameter
from ...structured import check_constraint
from ...structured.upstreams import upstream_fields
from ...types import FinishReason, LifecycleObserver, RequestId, TokenLogprob
from ..core.capabilities import Capabilities
from ..core.host import HEARTBEAT_S, EngineHost, HostedGenerator, bind_to_model
from ..core.lifecycle import RequestLifecycle
from ..core.protocol import EngineHealth, EngineState
from ..core.rows import RowFactory
from ..core.stream import RequestStream
from ..core.validation import check_prompt, tokenizer_vocab_size
from .failover import Failover, RemoteRow
from .upstreams import UpstreamPool

# Upstreams differ in whether and how they report logprobs (llama-server's shape is its own), and
# their ids are another tokenizer's: a remote model refuses logprobs and scoring rather than
# report numbers we cannot check.
_NO_LOGPROBS = ("logprobs and scoring need the model's weights in this process; a remote model "
                "does not report them (ask the upstream's own endpoint)")

log = logging.getLogger(__name__)

CAPABILITIES = Capabilities(grammar=True, reply_token_ids=False, message_prompts=True, remote=True)
_TICK_S = 0.05  # how often down upstreams are probed and a dead fleet fails its queue
_BACKEND = "remote"


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}", name=name)
    return float(value)


class RemoteEngine(HostedGenerator):
    """Serves a ``remote_model()`` through its upstreams (see the module docstring).

    Args:
        model: a :class:`~chatstream_lab.models.LoadedModel` with ``backend="remote"`` (its
            ``model`` is a :class:`~chatstream_lab.models.remote.RemoteSpec`).
        gate: the admission gate to share (default: a new one with :class:`Limits` defaults).
        observer: receives lifecycle events (the stats recorder).
        timeout_s: longest wait for the upstream's next bytes (headers, then each chunk).
        connect_timeout_s: longest wait for a connection.
        retry_after_s: how long a failed upstream is out before it is health-checked (doubled on
            each further failure, up to 16x).
        max_attempts: upstreams tried per request before it fails (default: all of them).
    """

    CAPABILITIES = CAPABILITIES

    def __init__(self, model: Any, *, gate: AdmissionGate[Any] | None = None,
                 observer: LifecycleObserver | None = None, timeout_s: float = 30.0,
                 connect_timeout_s: float = 2.0, retry_after_s: float = 5.0,
                 max_attempts: int | None = None) -> None:
        spec = getattr(model, "model", None)
        urls = tuple(getattr(spec, "urls", ()) or ())
        if getattr(model, "backend", None) != _BACKEND or not urls:
            raise ConfigError("RemoteEngine needs a remote_model(...)", name="model")
        self.model = model
        bind_to_model(model, self)  # closing the model closes this engine
        self.gate: AdmissionGate[Any] = gate if gate is not None else AdmissionGate(Limits())
        self.lifecycle: RequestLifecycle[RemoteRow] = RequestLifecycle(self.gate, observer)
        self._rows = RowFactory(model, detokenize=False, on_first_token=self.lifecycle.first_token)
        self.timeout_s = _check_seconds("timeout_s", timeout_s)
        self.connect_timeout_s = _check_seconds("connect_timeout_s", connect_timeout_s)
        self.retry_after_s = _check_seconds("retry_after_s", retry_after_s)
        self.max_attempts = len(urls) if max_attempts is None else max(1, int(max_attempts))
        self._pool = UpstreamPool(spec, context_window=int(model.context_window),
                                  retry_after_s=self.retry_after_s, connect_timeout_s=self.connect_timeout_s,
                                  on_down=self._fail_queue_if_fleet_down, on_up=self._dispatch)
        self._host: EngineHost[RemoteRow] = EngineHost(
            self, self.lifecycle, backend=_BACKEND, label="the remote engine", thread_name="chatstream-remote",
            wake_hook=lambda: self._call_soon(self._dispatch), building="starting its HTTP client")
        self._tasks: dict[RequestId, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._failover: Failover | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False  # the loop ends: admit nothing more (set on the loop)
        self._shut = False

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def upstream_urls(self) -> tuple[str, ...]:
        return self._pool.urls

    @property
    def context_window(self) -> int:
        """The prompt limit checked in :meth:`submit` (the upstream's ``max_model_len`` once known)."""
        return self._pool.window

    def health(self) -> EngineHealth:
        """The engine's state and each upstream's, for ``/health``."""
        base = dataclasses.replace(self._host.health(), upstreams=self._pool.health())
        if base.state is not EngineState.RUNNING:
            return base
        ups = base.upstreams
        down = sum(not u.healthy for u in ups)
        if down == len(ups):
            return dataclasses.replace(base, state=EngineState.FAILED, detail="no upstream is healthy")
        if down:
            return dataclasses.replace(base, state=EngineState.DEGRADED, detail=f"{down} of {len(ups)} upstreams down")
        return base

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every request (each gets one ``Finished``), stop the loop, join the thread."""
        self._host.close(timeout, interrupt=functools.partial(self._interrupt, timeout))

    # -- requests ------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
               stop_strings: Sequence[str] = (), output_replacements: Sequence[tuple[str, str]] = (),
               stop_token_ids: Sequence[int] = (), session_key: str | None = None,
               messages: Sequence[dict[str, str]] | None = None) -> RequestStream:
        """Queue a request; returns its stream at once.

        Raises:
            QueueFull: every slot is busy and the queue is full (decided now, not later).
            InvalidParameter: the prompt is empty, has an id outside the vocabulary (the local
                tokenizer's, when there is one), or does not fit the context window.
            EngineUnavailable: no upstream is healthy now (HTTP 503).
            EngineClosed: the engine was closed.
        """
        msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages or ())
        if params is not None and params.logprobs is not None:
            raise InvalidParameter(_NO_LOGPROBS, name="logprobs")
        if params is not None and params.constraint is not None:  # compiles and writes it, or 400 now
            check_constraint(params.constraint)
            upstream_fields(params.constraint)
        ids = check_prompt(prompt_ids, window=self._pool.window, vocab_size=tokenizer_vocab_size(self.model.tokenizer),
                           messages=msgs, takes_messages=True, engine="the remote engine")
        self.start()
        self._raise_if_unavailable()
        params = params or SamplingParams()
        stream = RequestStream(self.lifecycle.new_id(), self._host.cancel)
        row = self._rows.new_row(RemoteRow, stream, ids, params, self._rows.stops(params, stop_strings),
                                 tuple((str(a), str(b)) for a, b in output_replacements),
                                 max_new=params.max_new_tokens, stop_token_ids=tuple(int(i) for i in stop_token_ids),
                                 session_key=session_key, messages=msgs or None)
        self._host.enqueue(row)
        return stream

    def score(self, ids: Sequence[int], start: int, *, top: int = 0) -> Future[tuple[TokenLogprob, ...]]:
        """Not available: scoring needs the weights (see ``_NO_LOGPROBS``)."""
        raise InvalidParameter(_NO_LOGPROBS, name="logprobs")

    def _raise_if_unavailable(self) -> None:
        self._host.check_can_serve()
        if not self._pool.any_healthy():
            raise EngineUnavailable("no upstream is healthy: " + self._pool.down_summary())

    def _call_soon(self, fn: Any) -> None:
        loop = self._loop
        if loop is None:
            return  # not built yet: the loop dispatches once when it starts
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed: close() ends what is left
            pass

    # -- the engine thread (the host's Worker) ---------------------------------------------
    def build(self) -> None:
        """The loop and the HTTP client; what the upstreams serve (their model name and window,
        so the first request does not ask); the ticker and the first dispatch (requests may be
        waiting already)."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        client = self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            trust_env=False)  # never through an HTTP(S)_PROXY: upstreams are usually private
        self._failover = Failover(self._pool, client, tokenizer=self.model.tokenizer,
                                  timeout_s=self.timeout_s, max_attempts=self.max_attempts, finish=self._finish)
        # an upstream that cannot answer now is asked again by its first request (as it was before)
        loop.run_until_complete(asyncio.gather(*(self._pool.ensure_info(client, up) for up in self._pool.upstreams),
                                               return_exceptions=True))
        self._ticker = loop.create_task(self._tick())
        loop.call_soon(self._dispatch)
        self._loop = loop

    def serve(self) -> None:
        assert self._loop is not None
        if not self._host.closing:  # closed while it was built: close() found no loop to stop
            self._loop.run_forever()

    def end_rows(self, reason: FinishReason, error: str | None) -> None:
        """Cancel every request task (each ends ``cancelled``) and close the client, on the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and not loop.is_running():
            self._stopping = True
            loop.run_until_complete(self._shutdown(stop=False))

    def release(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.close()

    def _interrupt(self, timeout: float) -> None:
        """From ``close()``: shut the tasks down on the loop and stop it."""
        loop = self._loop
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
        except Exception:  # the loop is already stopping, or shutdown timed out
            log.debug("remote engine shutdown did not complete cleanly", exc_info=True)

    async def _shutdown(self, stop: bool = True) -> None:
        """Cancel the ticker and every request task, wait for them, close the client."""
        self._stopping = True
        self.lifecycle.fail_waiting(FinishReason.CANCELLED)
        tasks = [t for t in (self._ticker, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the tasks' done callbacks run
        if self._client is not None and not self._shut:
            self._shut = True
            await self._client.aclose()
        if stop:
            asyncio.get_running_loop().stop()

    def _dispatch(self) -> None:
        """Cancel what was cancelled, then admit waiting requests while slots are free; one task each."""
        for rid in self._host.take_cancelled():
            task = self._tasks.get(rid)
            if task is not None:
                task.cancel()
        if self._host.closing or self._stopping:
            return
        assert self._failover is not None
        loop = asyncio.get_running_loop()
        admitted = self.lifecycle.admit()
        for row in admitted:
            row.t_admit = time.perf_counter()
            task = loop.create_task(self._failover.serve(row))
            self._tasks[row.id] = task
            task.add_done_callback(functools.partial(self._task_done, row))
        if admitted and self.gate.snapshot().waiting:
            self.lifecycle.announce_positions()

    def _task_done(self, row: RemoteRow, task: asyncio.Task[None]) -> None:
        """A task that was cancelled before it ran still ends its request (and frees its slot)."""
        self._tasks.pop(row.id, None)
        if not row.stream.done:
            self._finish(row, FinishReason.CANCELLED)
        self.gate.release(row.id)
        self._dispatch()

    def _finish(self, row: RemoteRow, reason: FinishReason, *, error: str | None = None,
                prompt_tokens: int | None = None, completion_tokens: int | None = None) -> None:
        if row.finish(reason, error, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens):
            assert row.finished is not None
            self.lifecycle.retire(row.stream, row.finished)

    async def _tick(self) -> None:
        """Probe upstreams whose back-off ended; fail the queue while none is healthy; heartbeat."""
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            assert self._client is not None
            for up in self._pool.due_for_probe(now):
                asyncio.get_running_loop().create_task(self._pool.probe(self._client, up))
            self._fail_queue_if_fleet_down()
            if now - last_beat >= HEARTBEAT_S:
                self.lifecycle.announce_positions()
                last_beat = now

    def _fail_queue_if_fleet_down(self) -> None:
        if not self._pool.any_healthy() and self.gate.snapshot().waiting:
            self.lifecycle.fail_waiting(FinishReason.ERROR, "no upstream is healthy: " + self._pool.down_summary())


__all__ = ["CAPABILITIES", "RemoteEngine"]
