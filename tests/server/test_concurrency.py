"""Slots, queue, 429, disconnects and callbacks on a real uvicorn server (scripted model holds slots)."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import httpx
import pytest
from fastapi import FastAPI, Request

from chatstream_lab.models import echo_reply, scripted_model
from chatstream_lab.server import ChatStream, Outcome, create_app

from .conftest import seed_reply, serving, stats, wait_for

pytestmark = pytest.mark.timeout(90)

N, Q = 2, 2
DELAY = 0.02  # seconds per decode step
LONG_REPLY = "word " * 12  # 60 tokens (byte tokenizer): about 1.2 s


class Recorder:
    """A reply script that remembers every prompt the engine actually ran."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, prompt: str) -> str:
        with self.lock:
            self.prompts.append(prompt)
        if "LONG" in prompt:
            return LONG_REPLY
        return echo_reply(prompt)

    def saw(self, text: str) -> bool:
        with self.lock:
            return any(text in p for p in self.prompts)


@pytest.fixture(scope="module")
def setup():
    script = Recorder()
    cs = ChatStream(model=scripted_model(script, token_delay=DELAY), template="chatml",
                    num_of_concurrent_executions=N, max_queue_size=Q, max_new_tokens=500)
    callbacks: list[tuple[str, str]] = []

    def callback(request: Request, message: str) -> None:
        callbacks.append((request.headers.get("x-tag", ""), message))

    app = FastAPI()

    @app.post("/chat_stream")
    async def stream_api(request: Request):
        return await cs.handle_chat_stream_request(request, callback=callback)

    @app.get("/stats")
    async def get_stats():
        return cs.recorder.snapshot(with_history=False).as_dict(with_history=False)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    with serving(app) as url:
        yield url, cs, script, callbacks
    cs.close()


def idle(url: str) -> bool:
    s = stats(url)
    return s["running"] == 0 and s["queued"] == 0


def callback_for(callbacks, tag: str, timeout: float = 5.0) -> list[str]:
    wait_for(lambda: any(t == tag for t, _ in callbacks), timeout)
    return [m for t, m in callbacks if t == tag]


async def post(url: str, text: str, tag: str = "") -> httpx.Response:
    """One request from a new client (no cookie: a new session, as a distinct user)."""
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url + "/chat_stream", json={"user_input": text}, headers={"x-tag": tag})


async def stream_until(url: str, tag: str, text: str, *, records: int) -> None:
    """Open a stream, read ``records`` seed records (0 = only the headers), then drop the connection."""
    body = {"user_input": text}
    async with httpx.AsyncClient(timeout=30) as client, \
            client.stream("POST", url + "/chat_stream", json=body, headers={"x-tag": tag}) as r:
        assert r.status_code == 200
        seen = 0
        if records:
            async for chunk in r.aiter_text():
                seen += chunk.count("<::EOS::>")
                if seen >= records:
                    break


def test_n_plus_q_are_served_and_one_more_gets_429(setup):
    url, cs, script, callbacks = setup
    assert wait_for(lambda: idle(url))

    async def main():
        if True:
            held = [asyncio.create_task(post(url, f"LONG {i}", f"held{i}")) for i in range(N + Q)]
            assert await asyncio.to_thread(wait_for, lambda: stats(url)["running"] + stats(url)["queued"] == N + Q)
            s = stats(url)
            assert (s["running"], s["queued"]) == (N, Q)
            extra = await post(url, "one too many", "extra")
            assert extra.status_code == 429
            assert extra.headers["retry-after"] == "1"
            assert extra.json()["error"]["type"] == "queue_full"
            done = await asyncio.gather(*held)
            assert all(r.status_code == 200 and seed_reply(r.text) == LONG_REPLY for r in done)

    asyncio.run(main())
    assert not script.saw("one too many")
    assert callback_for(callbacks, "extra") == [Outcome.UNKNOWN_ERROR_OCCURRED.value]
    assert all(callback_for(callbacks, f"held{i}") == ["success"] for i in range(N + Q))
    assert wait_for(lambda: idle(url))


def test_mid_stream_disconnect_frees_slot_within_a_step(setup):
    url, cs, script, callbacks = setup
    assert wait_for(lambda: idle(url))

    async def main():
        await stream_until(url, "mid", "LONG mid", records=3)
        t0 = time.monotonic()
        assert await asyncio.to_thread(wait_for, lambda: stats(url)["running"] == 0, 2.0)
        return time.monotonic() - t0

    freed_after = asyncio.run(main())
    assert freed_after < 0.5  # about one decode step (20 ms) plus polling
    assert callback_for(callbacks, "mid") == [Outcome.CLIENT_DISCONNECTED_WHILE_STREAMING.value]
    assert stats(url)["cancelled"] >= 1


def test_disconnect_while_queued_never_reaches_engine(setup):
    url, cs, script, callbacks = setup
    assert wait_for(lambda: idle(url))

    async def main():
        blockers = [asyncio.create_task(post(url, f"LONG b{i}", f"blk{i}")) for i in range(N)]
        assert await asyncio.to_thread(wait_for, lambda: stats(url)["running"] == N)
        await stream_until(url, "queued", "QUEUED-ONLY text", records=0)  # headers, then leave
        assert await asyncio.to_thread(wait_for, lambda: stats(url)["queued"] == 0, 2.0)
        for b in blockers:  # drop the slot holders too
            b.cancel()
        await asyncio.gather(*blockers, return_exceptions=True)

    asyncio.run(main())
    assert callback_for(callbacks, "queued") == [Outcome.CLIENT_DISCONNECTED_BEFORE_STREAMING.value]
    assert wait_for(lambda: idle(url), 5)
    assert not script.saw("QUEUED-ONLY")


def test_health_answers_fast_while_every_slot_generates(setup):
    url, cs, script, callbacks = setup
    assert wait_for(lambda: idle(url))

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.create_task(post(url, f"LONG h{i}")) for i in range(N)]
            assert await asyncio.to_thread(wait_for, lambda: stats(url)["running"] == N)
            worst = 0.0
            for _ in range(10):
                t0 = time.perf_counter()
                r = await client.get(url + "/health")
                worst = max(worst, time.perf_counter() - t0)
                assert r.status_code == 200
            assert stats(url)["running"] == N  # still generating while we probed
            await asyncio.gather(*tasks)
            return worst

    assert asyncio.run(main()) < 0.1


def test_bounded_load_with_random_disconnects(setup):
    url, cs, script, callbacks = setup
    assert wait_for(lambda: idle(url))
    rng = random.Random(1234)
    clients = 4 * (N + Q)
    outcomes: list[str] = []

    async def one(i: int) -> None:
        await asyncio.sleep(rng.random() * 0.3)
        leave = i % 5 == 0
        try:
            async with httpx.AsyncClient(timeout=30) as client, \
                    client.stream("POST", url + "/chat_stream", json={"user_input": f"load {i}"},
                                  headers={"x-tag": f"load{i}"}) as r:
                assert r.status_code in (200, 429), r.status_code
                if r.status_code == 429:
                    await r.aread()
                    outcomes.append("429")
                    return
                body = ""
                limit = rng.randint(0, 20)
                async for chunk in r.aiter_text():
                    body += chunk
                    if leave and body.count("<::EOS::>") >= limit:
                        outcomes.append("left")
                        return
                assert seed_reply(body) == f"You said: load {i}. This is a scripted reply."
                outcomes.append("ok")
        except httpx.HTTPError as exc:  # never expected: count it so the assert below shows it
            outcomes.append(f"error {exc!r}")

    async def main():
        await asyncio.gather(*(one(i) for i in range(clients)))

    asyncio.run(main())
    assert len(outcomes) == clients and all(o in ("ok", "429", "left") for o in outcomes), outcomes
    assert outcomes.count("ok") + outcomes.count("left") >= N + Q and outcomes.count("ok") >= 1
    assert outcomes.count("429") >= 1  # the burst really overflowed the queue
    assert wait_for(lambda: idle(url), 5), stats(url)
    r = httpx.post(url + "/chat_stream", json={"user_input": "after the storm"}, timeout=10)
    assert seed_reply(r.text) == "You said: after the storm. This is a scripted reply."


def test_create_app_shares_one_limit_with_direct_engine_use():
    cs = ChatStream(model=scripted_model("x" * 200, token_delay=0.01), template="chatml",
                    num_of_concurrent_executions=1, max_queue_size=0, max_new_tokens=5)
    with serving(create_app(cs, close_on_shutdown=True)) as url:
        ids = [1, 2, 3]
        from chatstream_lab.config import SamplingParams

        held = cs.engine.submit(ids, SamplingParams(max_new_tokens=200))  # e.g. a notebook preview
        r = httpx.post(url + "/chat_stream", json={"user_input": "hi"})
        assert r.status_code == 429
        held.cancel()
        held.result(timeout=5)
        assert httpx.post(url + "/chat_stream", json={"user_input": "hi"}).status_code == 200
