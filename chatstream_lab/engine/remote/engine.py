"""The remote engine: the request-level :class:`~chatstream_lab.engine.core.protocol.Generator` whose
tokens come from OpenAI-compatible servers (llama-server, vLLM, SGLang) over HTTP.

Everything above the engine stays ours: the template renders the prompt here, the gate bounds
what this front-end sends (QueueFull raised synchronously by ``submit``), the observer records the
numbers, and every text chunk goes through our :class:`~chatstream_lab.engine.core.textfilter.TextFilter`
(stop strings held back even when split across chunks, output replacements applied).

One background thread runs one asyncio loop and one ``httpx.AsyncClient``; a dispatcher on that
loop admits requests from the gate as slots free and runs one task per admitted request. The wire:

* token ids (a local tokenizer rendered the prompt): ``POST {url}/v1/completions`` with
  ``"prompt": [ids...]``; an upstream that refuses ids (400/422) gets the decoded text instead;
* messages (no local tokenizer, ``template=None``): ``POST {url}/v1/chat/completions``.

Several upstreams: least-loaded dispatch (fewest in flight) with session affinity (a session's
turns go to the upstream its last turn used while that one is healthy, so its prefix cache is
reused). An upstream that fails (connect error, 5xx, timeout, malformed stream) is taken out for
``retry_after_s``, doubling on each further failure, and is health-checked (``GET /health``, else
``GET /v1/models``) before it takes requests again. A request that failed before any text reached
its consumer fails over to another healthy upstream; after that it ends with ``Finished(ERROR)``.
A per-chunk read timeout bounds every wait, so no request hangs and no slot leaks.

Invariants (tested): every accepted request gets exactly one ``Finished``, pushed after its slot
is released; a cancelled queued request is never sent; a cancelled running one closes its HTTP
response (the upstream sees the disconnect and aborts).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from ...admission import AdmissionGate
from ...config import Limits, SamplingParams
from ...errors import ConfigError, EngineUnavailable, InvalidParameter
from ...stats import KVCacheStats
from ...types import Delta, Finished, FinishReason, LifecycleObserver, RequestId, TokenLogprob
from ..batching.engine import EngineClosed
from ..core.lifecycle import RequestLifecycle, make_usage
from ..core.protocol import EngineHealth, EngineState, UpstreamHealth
from ..core.stream import RequestStream
from ..core.textfilter import TextFilter

# Upstreams differ in whether and how they report logprobs (llama-server's shape is its own), and
# their ids are another tokenizer's: a remote model refuses logprobs and scoring rather than
# report numbers we cannot check.
_NO_LOGPROBS = ("logprobs and scoring need the model's weights in this process; a remote model "
                "does not report them (ask the upstream's own endpoint)")

log = logging.getLogger(__name__)

_TICK_S = 0.05  # how often down upstreams are probed and a dead fleet fails its queue
_HEARTBEAT_S = 1.0  # queued requests hear their position at least this often
_MAX_BACKOFF = 16  # an upstream is out for at most retry_after_s * this
_AFFINITY_SIZE = 10_000  # sessions remembered for affinity (least recently used dropped)
_BACKEND = "remote"

T = TypeVar("T")


class _UpstreamDown(Exception):
    """The upstream itself failed (unreachable, 5xx, timeout, malformed stream): take it out."""


class _Refused(Exception):
    """The upstream refused this one request (4xx): the upstream stays in, the request fails."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(eq=False)
class _Upstream:
    """One upstream's dispatch state; mutated only on the engine's loop (read anywhere)."""

    url: str
    in_flight: int = 0
    failures: int = 0  # total, for /health
    streak: int = 0  # consecutive failures, for the back-off
    down_until: float | None = None  # monotonic time; None = healthy
    last_error: str | None = None
    token_ids_ok: bool | None = None
    model_name: str | None = None
    info_fetched: bool = False
    probing: bool = False
    picked: int = 0  # when it was last picked (ties go to the least recently picked)

    @property
    def healthy(self) -> bool:
        return self.down_until is None

    def health(self, now: float) -> UpstreamHealth:
        retry = 0.0 if self.down_until is None else max(0.0, self.down_until - now)
        return UpstreamHealth(self.url, self.healthy, self.in_flight, self.failures, retry,
                              self.last_error)


@dataclass(eq=False)
class _Request:
    """One request on its way through the gate to an upstream (the lifecycle's ``Pending``)."""

    stream: RequestStream
    prompt_ids: list[int]
    params: SamplingParams
    stop_strings: tuple[str, ...]
    replacements: tuple[tuple[str, str], ...]
    stop_token_ids: tuple[int, ...]
    session_key: str | None
    messages: tuple[dict[str, str], ...] | None
    t_submit: float = field(default_factory=time.perf_counter)
    t_admit: float | None = None
    t_first: float | None = None
    pieces: list[str] = field(default_factory=list)  # text delivered to the consumer
    chunks: int = 0  # text chunks received in the current attempt

    @property
    def delivered(self) -> bool:
        return bool(self.pieces)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How one successful attempt ended."""

    reason: FinishReason
    prompt_tokens: int | None
    completion_tokens: int


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}", name=name)
    return float(value)


class RemoteEngine:
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

    def __init__(self, model: Any, *, gate: AdmissionGate[Any] | None = None,
                 observer: LifecycleObserver | None = None, timeout_s: float = 30.0,
                 connect_timeout_s: float = 2.0, retry_after_s: float = 5.0,
                 max_attempts: int | None = None) -> None:
        spec = getattr(model, "model", None)
        urls = tuple(getattr(spec, "urls", ()) or ())
        if getattr(model, "backend", None) != _BACKEND or not urls:
            raise ConfigError("RemoteEngine needs a remote_model(...)", name="model")
        self.model = model
        self.gate: AdmissionGate[Any] = gate if gate is not None else AdmissionGate(Limits())
        self.lifecycle: RequestLifecycle[_Request] = RequestLifecycle(self.gate, observer)
        self.timeout_s = _check_seconds("timeout_s", timeout_s)
        self.connect_timeout_s = _check_seconds("connect_timeout_s", connect_timeout_s)
        self.retry_after_s = _check_seconds("retry_after_s", retry_after_s)
        self.max_attempts = len(urls) if max_attempts is None else max(1, int(max_attempts))
        self._spec = spec
        self._upstreams = [_Upstream(u, token_ids_ok=getattr(spec, "token_ids_ok", None)) for u in urls]
        self._window = int(getattr(spec, "context_window", None) or model.context_window)
        self._affinity: OrderedDict[str, _Upstream] = OrderedDict()
        self._picks = itertools.count(1)
        self._tasks: dict[RequestId, asyncio.Task[None]] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._crash: str | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def upstream_urls(self) -> tuple[str, ...]:
        return tuple(u.url for u in self._upstreams)

    @property
    def context_window(self) -> int:
        """The prompt limit checked in :meth:`submit` (the upstream's ``max_model_len`` once known)."""
        return self._window

    def start(self) -> RemoteEngine:
        """Start the engine's thread, loop and HTTP client (idempotent)."""
        with self._lock:
            if self._closing.is_set():
                raise EngineClosed("this engine was closed; create a new RemoteEngine")
            if self._thread is None:
                ready = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(ready,), name="chatstream-remote",
                                                daemon=True)
                self._thread.start()
                ready.wait(10)
        return self

    def health(self) -> EngineHealth:
        """The engine's state and each upstream's, for ``/health``."""
        now = time.monotonic()
        ups = tuple(u.health(now) for u in self._upstreams)
        if self._closing.is_set():
            return EngineHealth(EngineState.CLOSED, _BACKEND, upstreams=ups)
        if self._thread is None:
            return EngineHealth(EngineState.IDLE, _BACKEND, upstreams=ups)
        if not self._thread.is_alive():
            return EngineHealth(EngineState.FAILED, _BACKEND, self._crash or "the engine thread stopped",
                                upstreams=ups)
        down = sum(not u.healthy for u in ups)
        if down == len(ups):
            return EngineHealth(EngineState.FAILED, _BACKEND, "no upstream is healthy", upstreams=ups)
        if down:
            return EngineHealth(EngineState.DEGRADED, _BACKEND, f"{down} of {len(ups)} upstreams down",
                                upstreams=ups)
        return EngineHealth(EngineState.RUNNING, _BACKEND, upstreams=ups)

    def forget(self, session_key: str) -> None:
        """Nothing to drop here: the upstreams keep (and evict) their own caches."""

    def kv_cache_stats(self) -> KVCacheStats | None:
        return None

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every request (each gets one ``Finished``), stop the loop, join the thread."""
        self._closing.set()
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive() \
                and thread is not threading.current_thread():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            except Exception:  # the loop is already stopping, or shutdown timed out
                log.debug("remote engine shutdown did not complete cleanly", exc_info=True)
            thread.join(timeout)
        self.lifecycle.fail_waiting(FinishReason.CANCELLED)

    def __enter__(self) -> RemoteEngine:
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
            InvalidParameter: the prompt is empty or does not fit the context window.
            EngineUnavailable: no upstream is healthy now (HTTP 503).
            EngineClosed: the engine was closed.
        """
        ids = [int(i) for i in prompt_ids]
        msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages or ())
        if params is not None and params.logprobs is not None:
            raise InvalidParameter(_NO_LOGPROBS, name="logprobs")
        self._validate(ids, msgs)
        self.start()
        self._raise_if_unavailable()
        stream = RequestStream(self.lifecycle.new_id(), self._cancel)
        req = _Request(stream, ids, params or SamplingParams(), tuple(s for s in stop_strings if s),
                       tuple((str(a), str(b)) for a, b in output_replacements),
                       tuple(int(i) for i in stop_token_ids), session_key, msgs or None)
        self.lifecycle.enqueue(req)
        if self._closing.is_set():  # lost the race with close
            self.lifecycle.fail_waiting(FinishReason.CANCELLED)
        self._call_soon(self._dispatch)
        return stream

    def score(self, ids: Sequence[int], start: int, *, top: int = 0) -> Future[tuple[TokenLogprob, ...]]:
        """Not available: scoring needs the weights (see ``_NO_LOGPROBS``)."""
        raise InvalidParameter(_NO_LOGPROBS, name="logprobs")

    def _validate(self, ids: list[int], msgs: tuple[dict[str, str], ...]) -> None:
        if not ids and not msgs:
            raise InvalidParameter("the prompt is empty", name="prompt")
        if ids and len(ids) >= self._window:
            raise InvalidParameter(f"the prompt has {len(ids)} tokens; the model's context window is "
                                   f"{self._window}. Shorten the conversation.", name="prompt")

    def _raise_if_unavailable(self) -> None:
        if self._crash is not None or (self._thread is not None and not self._thread.is_alive()):
            raise EngineUnavailable(self._crash or "the remote engine's thread stopped; restart the server")
        if not any(u.healthy for u in self._upstreams):
            raise EngineUnavailable("no upstream is healthy: " + self._down_summary())

    def _down_summary(self) -> str:
        now = time.monotonic()
        return "; ".join(f"{u.url} ({u.last_error or 'down'}, retry in {u.health(now).retry_in_s:.1f} s)"
                         for u in self._upstreams if not u.healthy)

    def _cancel(self, rid: RequestId) -> None:
        """Any thread: a queued request is withdrawn; a running one's task is cancelled on the loop."""
        if self.lifecycle.withdraw(rid):
            return
        self._call_soon(functools.partial(self._cancel_task, rid))

    def _call_soon(self, fn: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the loop is closed: close() ends what is left
            pass

    # -- the loop thread -----------------------------------------------------------------
    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
                trust_env=False)  # never through an HTTP(S)_PROXY: upstreams are usually private
            self._ticker = loop.create_task(self._tick())
            ready.set()
            loop.run_forever()
        except BaseException as exc:  # never leave consumers hanging, whatever happened
            log.exception("remote engine loop crashed")
            self._crash = f"the remote engine crashed ({type(exc).__name__}); restart the server"
            raise
        finally:
            ready.set()
            self._closing.set()
            try:
                loop.run_until_complete(self._shutdown(stop=False))
            finally:
                loop.close()
            self.lifecycle.fail_waiting(FinishReason.ERROR if self._crash else FinishReason.CANCELLED,
                                        self._crash and "the remote engine failed")

    async def _shutdown(self, stop: bool = True) -> None:
        """Cancel the ticker and every request task, wait for them, close the client."""
        self.lifecycle.fail_waiting(FinishReason.CANCELLED)
        tasks = [t for t in (self._ticker, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the tasks' done callbacks run
        if self._client is not None:
            await self._client.aclose()
        if stop:
            asyncio.get_running_loop().stop()

    def _dispatch(self) -> None:
        """Admit waiting requests while slots are free; one task each."""
        if self._closing.is_set():
            return
        loop = asyncio.get_running_loop()
        admitted = self.lifecycle.admit()
        for req in admitted:
            req.t_admit = time.perf_counter()
            task = loop.create_task(self._serve(req))
            self._tasks[req.stream.id] = task
            task.add_done_callback(functools.partial(self._task_done, req))
        if admitted and self.gate.snapshot().waiting:
            self.lifecycle.announce_positions()

    def _task_done(self, req: _Request, task: asyncio.Task[None]) -> None:
        """A task that was cancelled before it ran still ends its request (and frees its slot)."""
        self._tasks.pop(req.stream.id, None)
        if not req.stream.done:
            self._finish(req, FinishReason.CANCELLED)
        self.gate.release(req.stream.id)
        self._dispatch()

    def _cancel_task(self, rid: RequestId) -> None:
        task = self._tasks.get(rid)
        if task is not None:
            task.cancel()

    async def _tick(self) -> None:
        """Probe upstreams whose back-off ended; fail the queue while none is healthy; heartbeat."""
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            for up in self._upstreams:
                if up.down_until is not None and up.down_until <= now and not up.probing:
                    up.probing = True
                    asyncio.get_running_loop().create_task(self._probe(up))
            self._fail_queue_if_fleet_down()
            if now - last_beat >= _HEARTBEAT_S:
                self.lifecycle.announce_positions()
                last_beat = now

    def _fail_queue_if_fleet_down(self) -> None:
        if not any(u.healthy for u in self._upstreams) and self.gate.snapshot().waiting:
            self.lifecycle.fail_waiting(FinishReason.ERROR, "no upstream is healthy: " + self._down_summary())

    # -- upstream selection and health ----------------------------------------------------
    def _pick(self, req: _Request, tried: set[str]) -> _Upstream | None:
        """The session's upstream while it is healthy, else the least loaded healthy one."""
        healthy = [u for u in self._upstreams if u.healthy and u.url not in tried]
        if not healthy:
            return None
        key = req.session_key
        up = self._affinity.get(key) if key is not None else None
        if up is None or up not in healthy:
            up = min(healthy, key=lambda u: (u.in_flight, u.picked))
        up.picked = next(self._picks)
        if key is not None:
            self._affinity[key] = up
            self._affinity.move_to_end(key)
            while len(self._affinity) > _AFFINITY_SIZE:
                self._affinity.popitem(last=False)
        return up

    def _mark_down(self, up: _Upstream, error: str) -> None:
        up.failures += 1
        up.streak += 1
        delay = self.retry_after_s * min(2 ** (up.streak - 1), _MAX_BACKOFF)
        up.down_until = time.monotonic() + delay
        up.last_error = error
        log.warning("upstream %s is out for %.1f s: %s", up.url, delay, error)
        self._fail_queue_if_fleet_down()

    def _mark_up(self, up: _Upstream) -> None:
        up.down_until = None
        up.streak = 0

    async def _probe(self, up: _Upstream) -> None:
        """Put ``up`` back once its health check answers 200; else keep it out, longer."""
        try:
            status = await self._get_status(up, "/health")
            if status == 404:
                status = await self._get_status(up, "/v1/models")
            if status == 200:
                log.info("upstream %s is healthy again", up.url)
                self._mark_up(up)
                self._dispatch()
            else:
                self._mark_down(up, f"health check: HTTP {status}")
        except (httpx.HTTPError, OSError) as exc:
            self._mark_down(up, f"health check: {_describe(exc)}")
        finally:
            up.probing = False

    async def _get_status(self, up: _Upstream, path: str) -> int:
        assert self._client is not None
        resp = await self._client.get(up.url + path, headers=self._headers(),
                                      timeout=self.connect_timeout_s)
        return resp.status_code

    def _headers(self) -> dict[str, str]:
        key = getattr(self._spec, "api_key", None)
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _ensure_info(self, up: _Upstream) -> None:
        """Ask ``/v1/models`` once per upstream for the model name (and ``max_model_len``) when
        the spec leaves them open; only a transport failure counts against the upstream."""
        if up.info_fetched or (getattr(self._spec, "model", None) and getattr(self._spec, "context_window", None)):
            return
        assert self._client is not None
        try:
            resp = await self._client.get(up.url + "/v1/models", headers=self._headers())
            entry = resp.json()["data"][0] if resp.status_code == 200 else {}
        except (KeyError, IndexError, TypeError, ValueError):
            entry = {}
        up.info_fetched = True
        if isinstance(entry, dict):
            if isinstance(entry.get("id"), str):
                up.model_name = entry["id"]
            max_len = entry.get("max_model_len")
            if isinstance(max_len, int) and max_len > 1 and not getattr(self._spec, "context_window", None):
                self._window = max_len

    # -- one request -----------------------------------------------------------------------
    async def _serve(self, req: _Request) -> None:
        """Try upstreams until one streams the reply; fail over only before text was delivered."""
        tried: set[str] = set()
        try:
            while True:
                up = self._pick(req, tried)
                if up is None:
                    self._finish(req, FinishReason.ERROR,
                                 error="no upstream is healthy: " + (self._down_summary() or "all failed"))
                    return
                tried.add(up.url)
                up.in_flight += 1
                try:
                    outcome = await self._attempt(req, up)
                except _UpstreamDown as exc:
                    self._mark_down(up, str(exc))
                    if req.delivered or len(tried) >= self.max_attempts:
                        self._finish(req, FinishReason.ERROR, error=f"upstream {up.url} failed: {exc}")
                        return
                    log.info("request %s fails over from %s: %s", req.stream.id, up.url, exc)
                    continue
                except _Refused as exc:
                    self._finish(req, FinishReason.ERROR, error=f"upstream {up.url} refused the request: {exc}")
                    return
                finally:
                    up.in_flight -= 1
                up.streak = 0
                self._finish(req, outcome.reason, prompt_tokens=outcome.prompt_tokens,
                             completion_tokens=outcome.completion_tokens)
                return
        except asyncio.CancelledError:
            self._finish(req, FinishReason.CANCELLED)
            raise
        except Exception as exc:  # a bug here must still end the request
            log.exception("remote request %s failed", req.stream.id)
            self._finish(req, FinishReason.ERROR, error=f"the remote engine failed ({type(exc).__name__})")

    def _finish(self, req: _Request, reason: FinishReason, *, error: str | None = None,
                prompt_tokens: int | None = None, completion_tokens: int | None = None) -> None:
        usage = make_usage(len(req.prompt_ids) if prompt_tokens is None else prompt_tokens,
                           req.chunks if completion_tokens is None else completion_tokens,
                           t_submit=req.t_submit, t_admit=req.t_admit, t_first=req.t_first)
        self.lifecycle.retire(req.stream, Finished(req.stream.id, reason, "".join(req.pieces), usage, error))

    async def _attempt(self, req: _Request, up: _Upstream) -> _Outcome:
        """One upstream, token ids first; an upstream that refuses ids gets the decoded text."""
        await self._guard(self._ensure_info(up))
        use_ids = bool(req.prompt_ids) and up.token_ids_ok is not False
        try:
            return await self._guard(self._post(req, up, use_ids=use_ids))
        except _Refused as exc:
            if not (use_ids and exc.status in (400, 422) and self.model.tokenizer is not None
                    and not req.delivered):
                raise
        outcome = await self._guard(self._post(req, up, use_ids=False))
        up.token_ids_ok = False  # text worked where ids were refused
        return outcome

    async def _guard(self, coro: Awaitable[T]) -> T:
        """Transport failures and timeouts of one upstream call become :class:`_UpstreamDown`."""
        try:
            return await coro
        except httpx.TimeoutException as exc:
            raise _UpstreamDown(f"timed out ({type(exc).__name__}, limit {self.timeout_s:g} s)") from exc
        except (httpx.HTTPError, OSError) as exc:
            raise _UpstreamDown(_describe(exc)) from exc

    def _payload(self, req: _Request, up: _Upstream, *, use_ids: bool) -> tuple[str, dict[str, Any]]:
        """The path and JSON body for one attempt (sampling parameters passed through)."""
        p = req.params
        body: dict[str, Any] = {
            "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": p.max_new_tokens, "temperature": p.temperature,
            "top_p": 1.0 if p.greedy else p.top_p,
            "top_k": 1 if p.greedy else p.top_k,  # 0 = off (llama-server, vLLM); 1 makes greedy exact
            "min_p": p.min_p,  # sent even when 0: llama-server's own default is 0.05
            "repetition_penalty": p.repetition_penalty,  # vLLM's name
            "repeat_penalty": p.repetition_penalty,  # llama-server's name (each ignores the other)
        }
        name = getattr(self._spec, "model", None) or up.model_name
        if name:
            body["model"] = name
        if p.seed is not None:
            body["seed"] = p.seed
        stops = list(dict.fromkeys((*req.stop_strings, *p.stop)))
        if stops:
            body["stop"] = stops
        if req.stop_token_ids:
            body["stop_token_ids"] = list(req.stop_token_ids)
        if req.messages is not None and not req.prompt_ids:
            body["messages"] = list(req.messages)
            return "/v1/chat/completions", body
        if use_ids:
            body["prompt"] = req.prompt_ids
        elif self.model.tokenizer is not None:
            body["prompt"] = self.model.tokenizer.decode(req.prompt_ids)
        else:
            raise _Refused(400, "the upstream refuses token ids and there is no local tokenizer to "
                                "decode them: pass tokenizer= to remote_model")
        return "/v1/completions", body

    async def _post(self, req: _Request, up: _Upstream, *, use_ids: bool) -> _Outcome:
        path, body = self._payload(req, up, use_ids=use_ids)
        assert self._client is not None
        async with self._client.stream("POST", up.url + path, json=body, headers=self._headers()) as resp:
            if resp.status_code != 200:
                message = _error_message((await resp.aread()).decode("utf-8", "replace"))
                if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                    raise _Refused(resp.status_code, message)
                raise _UpstreamDown(f"HTTP {resp.status_code}: {message}")
            return await self._consume(req, resp)

    async def _consume(self, req: _Request, resp: httpx.Response) -> _Outcome:
        """Chunks -> TextFilter -> Deltas; returning early (a stop string) closes the response."""
        filt = TextFilter(tuple(dict.fromkeys((*req.stop_strings, *req.params.stop))), req.replacements)
        finish: str | None = None
        usage: dict[str, Any] = {}
        req.chunks = 0
        async with contextlib.aclosing(_sse_objects(resp)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if self._take(req, filt, _choice_text(choice)):
                        return _Outcome(FinishReason.STOP, _int_or_none(usage.get("prompt_tokens")), req.chunks)
                    finish = choice.get("finish_reason") or finish
        if finish is None:
            raise _UpstreamDown("malformed stream: it ended without a finish_reason")
        self._deliver(req, filt.push("", final=True).text)
        reason = FinishReason.LENGTH if finish == "length" else FinishReason.STOP
        completion = _int_or_none(usage.get("completion_tokens"))
        return _Outcome(reason, _int_or_none(usage.get("prompt_tokens")),
                        req.chunks if completion is None else completion)

    def _take(self, req: _Request, filt: TextFilter, piece: str) -> bool:
        """One piece of upstream text through the filter to the consumer; True: a stop string ended it."""
        if not piece:
            return False
        req.chunks += 1
        if req.t_first is None:
            req.t_first = time.perf_counter()
            self.lifecycle.first_token(req.stream.id)
        result = filt.push(piece)
        self._deliver(req, result.text)
        return result.stopped

    def _deliver(self, req: _Request, text: str) -> None:
        if text:
            req.pieces.append(text)
            req.stream._push(Delta(req.stream.id, text))


# -- the wire ------------------------------------------------------------------------------------
async def _sse_objects(resp: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON objects of an OpenAI-style event stream, up to ``data: [DONE]``.

    A line that is not JSON, or an ``error`` object, means the upstream is not speaking the
    protocol (or gave up on the request): both end the attempt.
    """
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, ": comments", "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise _UpstreamDown(f"malformed stream: {data[:80]!r} is not JSON") from exc
        if not isinstance(obj, dict):
            raise _UpstreamDown(f"malformed stream: {data[:80]!r} is not an object")
        if obj.get("error"):  # this request failed there; the upstream itself may be fine
            raise _Refused(502, f"error event: {_error_message(json.dumps(obj))}")
        yield obj


def _choice_text(choice: Any) -> str:
    """A completions choice's ``text`` or a chat choice's ``delta.content``."""
    if not isinstance(choice, dict):
        return ""
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    return text if isinstance(text, str) else ""


def _error_message(body: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's start."""
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    except (ValueError, AttributeError):
        pass
    return body.strip()[:300] or "no body"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


__all__ = ["RemoteEngine"]
