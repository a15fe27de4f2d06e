"""RemoteEngine contract against a scripted OpenAI-compatible upstream (a real uvicorn server on
127.0.0.1 port 0): streaming, stop strings, the gate, cancellation, failover, back-off, health.

The fake is a raw ASGI app so it can see a client disconnect the way a real engine does (an
``http.disconnect`` message while it streams) and count it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import chatstream_lab as csl
from chatstream_lab.admission import AdmissionGate
from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.engine.core.protocol import EngineState
from chatstream_lab.engine.remote import RemoteEngine
from chatstream_lab.errors import ConfigError, EngineUnavailable, GenerationError, InvalidParameter, QueueFull
from chatstream_lab.models import ByteTokenizer, remote_model
from chatstream_lab.models.remote import normalize_url
from chatstream_lab.server import BackgroundServer
from chatstream_lab.types import Delta, Finished, FinishReason, Queued

GREEDY = SamplingParams(temperature=0, max_new_tokens=32)
IDS = [1, 2, 3, 4]


# -- the fake upstream ----------------------------------------------------------------------------
@dataclass
class Fake:
    """What the fake does next (tests change it between requests) and what it saw."""

    chunks: list[str] = field(default_factory=lambda: ["Hel", "lo", " world"])
    mode: str = "ok"  # ok | 500 | refuse_ids | refuse_logprobs | hang | hang_mid | malformed | cut_mid | error_event
    reports_ids: bool = False  # chunk i is token ID_BASE + i, reported when the body asks for ids
    delay: float = 0.0  # between chunks
    finish: str = "stop"
    health_status: int = 200
    models: dict[str, Any] = field(default_factory=lambda: {"id": "fake-model", "max_model_len": 4096})
    bodies: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    disconnects: int = 0
    completed: int = 0
    streaming: int = 0  # streams open now
    url: str = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (msg := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if scope["method"] == "GET":
            if scope["path"] == "/health":
                return await _json(send, self.health_status, {"status": "ok"})
            return await _json(send, 200, {"object": "list", "data": [self.models]})
        body = json.loads(raw)
        self.bodies.append(body)
        self.paths.append(scope["path"])
        await self._complete(body, scope["path"].endswith("chat/completions"), receive, send)

    async def _complete(self, body: dict[str, Any], chat: bool, receive: Any, send: Any) -> None:
        mode = self.mode
        if mode == "500":
            return await _json(send, 500, {"error": {"message": "boom"}})
        if mode == "refuse_ids" and isinstance(body.get("prompt"), list):
            return await _json(send, 400, {"error": {"message": "token ids are not supported"}})
        if mode == "refuse_logprobs" and "logprobs" in body:
            return await _json(send, 400, {"error": {"message": "logprobs are not supported by this backend"}})
        start = _resumes_at(body.get("prompt"), len(self.chunks))
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
        self.streaming += 1
        try:
            if mode == "hang" and await _wait(gone, 30):
                return self._gone()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for i, piece in enumerate(self.chunks):
                if i < start:  # a continuation: these were generated already (a greedy model's own)
                    continue
                if i == 1 and mode in ("hang_mid", "malformed", "cut_mid", "error_event"):
                    if mode == "hang_mid" and await _wait(gone, 30):
                        return self._gone()
                    if mode == "malformed":
                        await _frame(send, b"data: {not json\n\n")
                    if mode == "error_event":
                        await _frame(send, b'data: {"error": {"message": "slot failed"}}\n\n')
                    return await send({"type": "http.response.body", "body": b"", "more_body": False})
                choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                if self.reports_ids and body.get("return_token_ids"):
                    choice["token_ids"] = [ID_BASE + i]
                await _frame(send, _sse({"choices": [{**choice, "finish_reason": None}]}))
                if await _wait(gone, self.delay):
                    return self._gone()
            last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
            await _frame(send, _sse({"choices": [{**last, "finish_reason": self.finish}]}))
            await _frame(send, _sse({"choices": [], "usage": {"prompt_tokens": 7,
                                                              "completion_tokens": len(self.chunks)}}))
            await _frame(send, b"data: [DONE]\n\n")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.completed += 1
        except OSError:  # the client went away while we wrote
            self._gone()
        finally:
            self.streaming -= 1
            watcher.cancel()

    def _gone(self) -> None:
        self.disconnects += 1


ID_BASE = 100  # the fake's token ids: chunk i is token ID_BASE + i


def _resumes_at(prompt: Any, n_chunks: int) -> int:
    """Where a deterministic upstream goes on: a prompt that ends with chunks 0..k-1's ids makes it
    produce chunk k onwards (what a greedy model does with prompt + the ids generated so far)."""
    if not isinstance(prompt, list):
        return 0
    for k in range(n_chunks, 0, -1):
        if prompt[-k:] == [ID_BASE + i for i in range(k)]:
            return k
    return 0


def _sse(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


async def _frame(send: Any, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _json(send: Any, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": data})


async def _watch_disconnect(receive: Any, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _wait(gone: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``; True at once if the client disconnected meanwhile."""
    if seconds <= 0:
        return gone.is_set()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(gone.wait(), seconds)
    return gone.is_set()


@pytest.fixture
def fakes() -> Iterator[Callable[[], Fake]]:
    servers: list[BackgroundServer] = []

    def make() -> Fake:
        fake = Fake()
        server = BackgroundServer(fake, port=0, graceful_timeout_s=0.5).start(timeout=15)
        servers.append(server)
        fake.url = server.url
        return fake

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def engines() -> Iterator[Callable[..., RemoteEngine]]:
    made: list[RemoteEngine] = []

    def make(*fakes_or_urls: Fake | str, limits: Limits = Limits(4, 4), tokenizer: Any = None,
             **options: Any) -> RemoteEngine:
        urls = [f.url if isinstance(f, Fake) else f for f in fakes_or_urls]
        options.setdefault("timeout_s", 5.0)
        options.setdefault("retry_after_s", 0.2)
        engine = RemoteEngine(remote_model(urls, tokenizer=tokenizer), gate=AdmissionGate(limits), **options)
        made.append(engine.start())
        return engine

    yield make
    for engine in made:
        engine.close()
        assert engine.gate.snapshot().running == 0, "a slot leaked"
        assert engine.gate.snapshot().waiting == 0


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def dead_url() -> str:
    import socket

    with socket.socket() as s:  # a port nobody listens on (refused at once)
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# -- remote_model ---------------------------------------------------------------------------------
def test_remote_model_normalizes_urls_and_never_touches_the_network() -> None:
    lm = remote_model(["127.0.0.1:9/v1/", "http://127.0.0.1:9", "https://h.example/api/v1"], model="m")
    assert lm.backend == "remote" and lm.tokenizer is None and lm.name == "m"
    assert lm.model.urls == ("http://127.0.0.1:9", "https://h.example/api")
    assert lm.context_window == 2048 and lm.model.context_window is None
    assert normalize_url("http://x:1/v1") == "http://x:1"
    assert "secret" not in repr(remote_model("http://x:1", api_key="secret").model)


def test_remote_model_takes_tokenizer_forms(scripted) -> None:
    tok = ByteTokenizer()
    assert remote_model("http://x:1", tokenizer=tok).stop_token_ids == (tok.eos_token_id,)
    lm = scripted("x")
    assert remote_model("http://x:1", tokenizer=lm).tokenizer is lm.tokenizer
    assert remote_model("http://x:1", context_window=512).context_window == 512
    with pytest.raises(ConfigError):
        remote_model([])
    with pytest.raises(ConfigError):
        remote_model("ftp://x")
    with pytest.raises(csl.ModelLoadError):
        remote_model("http://x:1", tokenizer="/no/such/dir")


# -- streaming ------------------------------------------------------------------------------------
def test_streams_deltas_and_one_finished_with_upstream_usage(fakes, engines) -> None:
    fake = fakes()
    engine = engines(fake)
    events = list(engine.submit(IDS, SamplingParams(temperature=0.7, top_p=0.8, top_k=5, min_p=0.1,
                                                    repetition_penalty=1.2, seed=3, max_new_tokens=9,
                                                    stop=("END",)), stop_strings=("<|im_end|>",)))
    assert isinstance(events[0], Queued)
    assert [e.text for e in events if isinstance(e, Delta)] == ["Hel", "lo", " world"]
    assert sum(isinstance(e, Finished) for e in events) == 1
    fin = events[-1]
    assert isinstance(fin, Finished)
    assert (fin.finish_reason, fin.text) == (FinishReason.STOP, "Hello world")
    assert (fin.usage.prompt_tokens, fin.usage.completion_tokens) == (7, 3)
    assert fin.usage.ttft_s is not None
    body = fake.bodies[-1]
    assert fake.paths[-1] == "/v1/completions"
    assert body["prompt"] == IDS and body["stream"] is True and body["model"] == "fake-model"
    assert body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["top_k"], body["min_p"],
            body["seed"]) == (9, 0.7, 0.8, 5, 0.1, 3)
    assert body["repetition_penalty"] == body["repeat_penalty"] == 1.2
    assert body["stop"] == ["<|im_end|>", "END"]
    assert engine.context_window == 4096  # learned from /v1/models' max_model_len


def test_greedy_is_sent_as_greedy_and_length_maps(fakes, engines) -> None:
    fake = fakes()
    fake.finish = "length"
    fin = engines(fake).submit(IDS, GREEDY).result(5)
    assert fin.finish_reason is FinishReason.LENGTH
    body = fake.bodies[-1]
    assert (body["temperature"], body["top_k"], body["top_p"]) == (0, 1, 1.0)


def test_stop_string_split_across_chunks_never_leaks_and_closes_upstream(fakes, engines) -> None:
    fake = fakes()
    fake.chunks = ["Answer.", "\nUS", "ER: forged", " turn", " more"]
    fake.delay = 0.05
    stream = engines(fake).submit(IDS, GREEDY, stop_strings=("\nUSER:",))
    deltas = "".join(e.text for e in stream if isinstance(e, Delta))
    assert deltas == "Answer." == stream.finished.text
    assert stream.finished.finish_reason is FinishReason.STOP
    assert wait_for(lambda: fake.disconnects == 1)  # we closed the upstream stream early
    assert fake.completed == 0


def test_output_replacements_apply(fakes, engines) -> None:
    fake = fakes()
    fake.chunks = ["a<N", "L>b"]
    fin = engines(fake).submit(IDS, GREEDY, output_replacements=(("<NL>", "\n"),)).result(5)
    assert fin.text == "a\nb"


def test_messages_go_to_chat_completions(fakes, engines) -> None:
    fake = fakes()
    msgs = [{"role": "user", "content": "hi"}]
    fin = engines(fake).submit((), GREEDY, messages=msgs).result(5)
    assert fin.text == "Hello world"
    assert fake.paths[-1] == "/v1/chat/completions" and fake.bodies[-1]["messages"] == msgs


def test_upstream_refusing_ids_gets_decoded_text(fakes, engines) -> None:
    fake = fakes()
    fake.mode = "refuse_ids"
    tok = ByteTokenizer()
    ids = tok.encode("Hi there", add_special_tokens=False)
    engine = engines(fake, tokenizer=tok)
    assert engine.submit(ids, GREEDY).result(5).text == "Hello world"
    assert fake.bodies[-1]["prompt"] == "Hi there"
    engine.submit(ids, GREEDY).result(5)
    assert fake.bodies[-1]["prompt"] == "Hi there" and len(fake.bodies) == 3  # remembered: no ids again


def test_invalid_prompts_are_refused_synchronously(fakes, engines) -> None:
    engine = engines(fakes())
    with pytest.raises(InvalidParameter):
        engine.submit([], GREEDY)
    with pytest.raises(InvalidParameter):
        engine.submit(list(range(5000)), GREEDY)


# -- the gate and cancellation --------------------------------------------------------------------
def test_queue_full_is_synchronous_and_cancel_while_queued_never_sends(fakes, engines) -> None:
    fake = fakes()
    fake.mode = "hang"
    engine = engines(fake, limits=Limits(1, 1))
    running = engine.submit(IDS, GREEDY)
    assert wait_for(lambda: fake.streaming == 1)
    queued = engine.submit(IDS, GREEDY)
    with pytest.raises(QueueFull):
        engine.submit(IDS, GREEDY)
    queued.cancel()
    assert queued.result(2).finish_reason is FinishReason.CANCELLED
    assert len(fake.bodies) == 1  # the queued one never reached the upstream
    running.cancel()
    assert running.result(2).finish_reason is FinishReason.CANCELLED
    assert wait_for(lambda: fake.disconnects == 1 and fake.streaming == 0)
    assert wait_for(lambda: engine.gate.snapshot().running == 0)


def test_cancel_while_running_closes_the_upstream_request(fakes, engines) -> None:
    fake = fakes()
    fake.chunks = ["tick "] * 200
    fake.delay = 0.02
    engine = engines(fake)
    stream = engine.submit(IDS, GREEDY)
    seen = []
    for ev in stream:
        seen.append(ev)
        if isinstance(ev, Delta):
            stream.cancel()
    assert sum(isinstance(e, Finished) for e in seen) == 1
    assert stream.finished.finish_reason is FinishReason.CANCELLED
    assert wait_for(lambda: fake.disconnects == 1)
    assert fake.completed == 0 and engine.gate.snapshot().running == 0


async def test_async_consumer_and_cross_thread_cancel(fakes, engines) -> None:
    fake = fakes()
    fake.mode = "hang"
    engine = engines(fake)
    stream = engine.submit(IDS, GREEDY)
    threading.Timer(0.2, stream.cancel).start()
    events = [ev async for ev in stream]
    assert isinstance(events[-1], Finished) and events[-1].finish_reason is FinishReason.CANCELLED


def test_close_ends_running_and_queued_requests_once(fakes, engines) -> None:
    fake = fakes()
    fake.mode = "hang"
    engine = engines(fake, limits=Limits(1, 2))
    streams = [engine.submit(IDS, GREEDY) for _ in range(3)]
    assert wait_for(lambda: fake.streaming == 1)
    engine.close(timeout=5)
    for s in streams:
        assert s.result(2).finish_reason is FinishReason.CANCELLED
        assert sum(isinstance(e, Finished) for e in s) == 1
    assert engine.health().state is EngineState.CLOSED
    with pytest.raises(csl.ChatStreamLabError):
        engine.submit(IDS, GREEDY)


# -- failures, failover, back-off -----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["500", "hang", "refused"])
def test_failover_before_first_byte(fakes, engines, mode: str) -> None:
    bad, good = fakes(), fakes()
    bad.mode = mode if mode != "refused" else "ok"
    first = dead_url() if mode == "refused" else bad
    engine = engines(first, good, timeout_s=0.5)
    t0 = time.monotonic()
    fin = engine.submit(IDS, GREEDY).result(5)
    assert (fin.finish_reason, fin.text) == (FinishReason.STOP, "Hello world")
    assert time.monotonic() - t0 < 3
    health = engine.health()
    assert health.state is EngineState.DEGRADED
    down = [u for u in health.upstreams if not u.healthy]
    assert len(down) == 1 and down[0].failures == 1 and down[0].last_error
    assert wait_for(lambda: good.completed == 1, 2)  # the fake counts a stream once its handler returns


@pytest.mark.parametrize("mode", ["cut_mid", "malformed", "hang_mid", "error_event"])
def test_failure_after_text_that_cannot_continue_ends_with_error_not_a_hang(fakes, engines, mode: str) -> None:
    """Without the generated ids (the upstream reports none) and without a local tokenizer to
    re-encode the text, a reply cut after its first text cannot go on elsewhere: it ends with an
    error, at once. (An error event is the upstream refusing this one request: never continued.)"""
    bad, other = fakes(), fakes()
    bad.mode = mode
    engine = engines(bad, other, timeout_s=0.5)
    t0 = time.monotonic()
    stream = engine.submit(IDS, GREEDY)
    events = list(stream)
    fin = events[-1]
    assert isinstance(fin, Finished) and fin.finish_reason is FinishReason.ERROR
    assert "upstream" in (fin.error or "") and fin.text == "Hel"
    assert [e.text for e in events if isinstance(e, Delta)] == ["Hel"]
    assert time.monotonic() - t0 < 3
    assert other.bodies == []  # text was already streamed: no failover
    if mode == "error_event":  # that request failed there; the upstream itself stays in
        assert engine.health().state is EngineState.RUNNING


@pytest.mark.parametrize("mode", ["cut_mid", "malformed", "hang_mid"])
def test_a_reply_cut_mid_generation_continues_on_another_upstream_from_its_ids(fakes, engines, mode: str) -> None:
    """The dying upstream reported the id of what it generated ("Hel" = token 100): the next one
    is sent prompt ids + [100] with max_tokens one less, and the consumer sees one reply."""
    bad, good = fakes(), fakes()
    bad.mode, bad.reports_ids, good.reports_ids = mode, True, True
    engine = engines(bad, good, timeout_s=0.5)
    events = list(engine.submit(IDS, GREEDY))
    fin = events[-1]
    assert isinstance(fin, Finished) and (fin.finish_reason, fin.text) == (FinishReason.STOP, "Hello world"), fin
    assert [e.text for e in events if isinstance(e, Delta)] == ["Hel", "lo", " world"]
    assert sum(isinstance(e, Finished) for e in events) == 1
    assert fin.usage is not None and (fin.usage.prompt_tokens, fin.usage.completion_tokens) == (4, 3)
    (continued,) = good.bodies
    assert continued["prompt"] == [*IDS, ID_BASE] and continued["max_tokens"] == GREEDY.max_new_tokens - 1
    assert bad.bodies[0]["return_token_ids"] is True  # what made the ids come back


def test_without_reported_ids_the_text_so_far_is_re_encoded_by_the_local_tokenizer(fakes, engines) -> None:
    bad, good = fakes(), fakes()
    bad.mode = "cut_mid"
    tok = ByteTokenizer()
    ids = tok.encode("Hi there", add_special_tokens=False)
    engine = engines(bad, good, tokenizer=tok, timeout_s=0.5)
    fin = engine.submit(ids, GREEDY).result(5)
    assert fin.finish_reason is FinishReason.STOP and fin.text.startswith("Hel")
    (continued,) = good.bodies
    assert continued["prompt"] == [*ids, *tok.encode("Hel", add_special_tokens=False)]


def test_a_stop_string_spanning_the_two_attempts_still_ends_the_reply(fakes, engines) -> None:
    bad, good = fakes(), fakes()
    bad.mode, bad.reports_ids, good.reports_ids = "cut_mid", True, True
    engine = engines(bad, good, timeout_s=0.5)
    fin = engine.submit(IDS, GREEDY.replace(stop=("llo",))).result(5)  # "Hel" | "lo": it spans both
    assert (fin.finish_reason, fin.text) == (FinishReason.STOP, "He")  # "l" was held back, then matched


def test_an_upstream_refusing_the_id_fields_is_asked_without_them(fakes, engines) -> None:
    fake = fakes()
    fake.mode = "refuse_logprobs"
    engine = engines(fake)
    assert engine.submit(IDS, GREEDY).result(5).text == "Hello world"
    assert "logprobs" in fake.bodies[0] and "logprobs" not in fake.bodies[1]
    assert fake.bodies[1]["prompt"] == IDS  # still token ids: only the id fields were refused
    engine.submit(IDS, GREEDY).result(5)
    assert len(fake.bodies) == 3 and "logprobs" not in fake.bodies[2]  # remembered


def test_all_down_fails_fast_with_503_then_backs_off_and_rejoins(fakes, engines) -> None:
    fake = fakes()
    fake.mode = "500"
    engine = engines(fake, retry_after_s=0.3)
    fin = engine.submit(IDS, GREEDY).result(5)
    assert fin.finish_reason is FinishReason.ERROR and "HTTP 500" in (fin.error or "")
    assert engine.health().state is EngineState.FAILED and not engine.health().ok
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable):
        engine.submit(IDS, GREEDY)
    assert time.monotonic() - t0 < 0.1
    fake.health_status = 503  # the health check fails: it stays out, for longer
    assert wait_for(lambda: engine.health().upstreams[0].failures == 2, 3)
    assert engine.health().upstreams[0].retry_in_s > 0.3
    fake.mode, fake.health_status = "ok", 200
    assert wait_for(lambda: engine.health().state is EngineState.RUNNING, 5)
    assert engine.submit(IDS, GREEDY).result(5).text == "Hello world"


def test_queued_requests_fail_when_the_fleet_goes_down(fakes, engines) -> None:
    fake = fakes()
    fake.mode = "hang_mid"
    engine = engines(fake, limits=Limits(1, 3), timeout_s=0.5, retry_after_s=5)
    streams = [engine.submit(IDS, GREEDY) for _ in range(3)]
    t0 = time.monotonic()
    reasons = [s.result(5).finish_reason for s in streams]
    assert reasons == [FinishReason.ERROR] * 3
    assert time.monotonic() - t0 < 3
    assert len(fake.bodies) == 1
    assert "no upstream is healthy" in (streams[2].finished.error or "")


def test_first_use_of_an_unreachable_upstream_is_a_clear_error(engines) -> None:
    engine = engines(dead_url())
    fin = engine.submit(IDS, GREEDY).result(5)
    assert fin.finish_reason is FinishReason.ERROR and "ConnectError" in (fin.error or "")


# -- dispatch ---------------------------------------------------------------------------------------
def test_least_loaded_dispatch_and_session_affinity(fakes, engines) -> None:
    a, b = fakes(), fakes()
    for f in (a, b):
        f.chunks, f.delay = ["x"] * 10, 0.02
    engine = engines(a, b, limits=Limits(4, 4))
    streams = [engine.submit(IDS, GREEDY) for _ in range(4)]
    for s in streams:
        s.result(5)
    assert wait_for(lambda: (a.completed, b.completed) == (2, 2), 2)  # spread by load
    for _ in range(3):
        engine.submit(IDS, GREEDY, session_key="s1").result(5)
    assert wait_for(lambda: sorted((a.completed, b.completed)) == [2, 5], 2)  # one session, one upstream
    sticky = a if a.completed == 5 else b
    sticky.mode = "500"  # its upstream fails: the session moves on
    assert engine.submit(IDS, GREEDY, session_key="s1").result(5).text == "x" * 10
    assert wait_for(lambda: a.completed + b.completed == 8, 2)


def test_health_states(fakes, engines) -> None:
    a = fakes()
    lm = remote_model([a.url, dead_url()])
    engine = RemoteEngine(lm, retry_after_s=5)
    assert engine.health().state is EngineState.IDLE
    engine.start()  # returns at once: the loop and client are made on the engine's thread
    try:
        assert engine.health().state in (EngineState.STARTING, EngineState.RUNNING)
        engine.wait_ready(5)
        assert engine.health().state is EngineState.RUNNING
        for _ in range(2):
            engine.submit(IDS, GREEDY).result(5)
        h = engine.health()
        assert h.state is EngineState.DEGRADED and h.ok
        d = h.as_dict()
        assert [u["healthy"] for u in d["upstreams"]] == [True, False]
    finally:
        engine.close()
    assert engine.health().state is EngineState.CLOSED


# -- the public entry points -------------------------------------------------------------------------
def test_csl_stream_on_a_remote_model(fakes) -> None:
    fake = fakes()
    lm = remote_model(fake.url, tokenizer=ByteTokenizer())
    events = list(csl.stream(lm, "hi", template="chatml", temperature=0))
    assert not any(isinstance(e, Queued) for e in events)
    assert events[-1].text == "Hello world"
    assert fake.bodies[-1]["prompt"][:1] == [ByteTokenizer().special_ids["<|im_start|>"]]
    assert csl.stream(lm, "hi", template="chatml").text() == "Hello world"
    with pytest.raises(GenerationError):
        csl.stream(remote_model(dead_url(), tokenizer=ByteTokenizer()), "hi", template="chatml").text()
    assert not [t for t in threading.enumerate() if t.name == "chatstream-remote"]


def test_served_through_the_app_with_health_per_upstream(fakes) -> None:
    from chatstream_lab.server import create_app
    from chatstream_lab.service import Service

    fake = fakes()
    service = Service.build(remote_model([fake.url, dead_url()], tokenizer=ByteTokenizer()), template="chatml",
                            limits=Limits(2, 2), retry_after_s=5)
    with BackgroundServer(create_app(service, close_on_shutdown=True), port=0) as server:
        url = server.url
        r = httpx.post(url + "/v1/chat/completions", timeout=10,
                       json={"messages": [{"role": "user", "content": "hi"}], "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello world"
        health = httpx.get(url + "/health", timeout=5).json()
        assert health["engine"]["backend"] == "remote" and len(health["engine"]["upstreams"]) == 2
        assert httpx.get(url + "/stats", timeout=5).json()["backend"] == "remote"
    service.close()
    assert service.gate.snapshot().running == 0


def test_cli_serve_upstream_builds_a_remote_model(fakes) -> None:
    from chatstream_lab.cli import _remote, build_parser

    fake = fakes()
    args = build_parser().parse_args(["serve", "--upstream", fake.url, "--upstream", dead_url() + "/v1",
                                      "--upstream-model", "m"])
    lm = _remote(args)
    assert lm.backend == "remote" and len(lm.model.urls) == 2 and lm.tokenizer is None and lm.name == "m"
    with pytest.raises(ConfigError):
        _remote(build_parser().parse_args(["serve", "--upstream", fake.url, "--template", "chatml"]))
    with pytest.raises(ConfigError):
        _remote(build_parser().parse_args(["serve", "--upstream", fake.url, "--model", "x"]))
