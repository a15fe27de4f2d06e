"""The seed article's three examples, verbatim in a user's own FastAPI app (with and without our middleware)."""

from __future__ import annotations

import contextlib
import json

import httpx
import pytest
from fastapi import FastAPI, Request

from chatstream_lab.errors import ConfigError
from chatstream_lab.models import scripted_model
from chatstream_lab.prompts import ChatPrompt
from chatstream_lab.server import ChatStream

from .conftest import seed_reply, serving, wait_for

pytestmark = pytest.mark.timeout(60)


class ChatPromptSmolChat(ChatPrompt):
    """A seed-style prompt class: configured in __init__, instantiated per session."""

    def __init__(self) -> None:
        super().__init__(template="chatml")
        self.set_system("You are a helpful assistant.")


def build_user_app(with_middleware: bool):
    printed: list[str] = []
    messages: list[str] = []
    chat_stream = ChatStream(
        model=scripted_model(token_delay=0.001),
        chat_prompt_clazz=ChatPromptSmolChat,
        num_of_concurrent_executions=2,
        max_queue_size=5,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await chat_stream.start_queue_worker()  # the seed's startup hook: harmless
        yield
        chat_stream.close()

    app = FastAPI(lifespan=lifespan)
    if with_middleware:
        chat_stream.append_middlewares(app)

    # 1. the endpoint is one call
    @app.post("/chat_stream")
    async def stream_api(request: Request):
        response = await chat_stream.handle_chat_stream_request(request)
        return response

    # 2. intercepting the request: read the body, pass the bytes on
    @app.post("/chat_stream_edit")
    async def stream_api_edit(request: Request):
        request_body = await request.body()
        data = json.loads(request_body)
        user_input = data["user_input"]  # noqa: F841 (the seed reads it, e.g. to log it)
        regenerate = data["regenerate"]  # noqa: F841
        response = await chat_stream.handle_chat_stream_request(request, request_body)
        return response

    # 3. the completion callback, as written in the seed
    def callback_func(request, message):
        session_mgr = getattr(request.state, "session", None)
        session = session_mgr.get_session()
        chat_prompt = session.get("chat_prompt")
        printed.append(chat_prompt.create_prompt())
        messages.append(message)

    @app.post("/chat_stream_cb")
    async def stream_api_cb(request: Request):
        response = await chat_stream.handle_chat_stream_request(request, callback=callback_func)
        return response

    return app, printed, messages


@pytest.mark.parametrize("with_middleware", [False, True])
def test_seed_examples_run_as_written(with_middleware):
    app, printed, messages = build_user_app(with_middleware)
    with serving(app) as url, httpx.Client(base_url=url) as client:
        r = client.post("/chat_stream", json={"user_input": "one", "regenerate": False})
        assert r.status_code == 200 and seed_reply(r.text) == "You said: one. This is a scripted reply."
        assert "chatstream_sid" in client.cookies
        r = client.post("/chat_stream_edit", json={"user_input": "two", "regenerate": False})
        assert seed_reply(r.text) == "You said: two. This is a scripted reply."
        r = client.post("/chat_stream_cb", json={"user_input": "three", "regenerate": False})
        assert seed_reply(r.text) == "You said: three. This is a scripted reply."
        assert wait_for(lambda: messages == ["success"])
        prompt = printed[0]
        assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.")
        for word in ("one", "two", "three", "You said: three."):  # history of this cookie, committed
            assert word in prompt
        r = client.post("/chat_stream_edit", json={"user_input": None, "regenerate": True})
        assert seed_reply(r.text) == "You said: three. This is a scripted reply."
        r = client.post("/chat_stream_cb", content=b"{oops", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert wait_for(lambda: messages == ["success", "unknown_error_occurred"])


def test_async_callback_fires_exactly_once():
    chat_stream = ChatStream(model=scripted_model(token_delay=0.001), template="chatml")
    seen: list[str] = []

    async def callback(request, message):
        seen.append(message)

    app = FastAPI()

    @app.post("/chat_stream")
    async def stream_api(request: Request):
        return await chat_stream.handle_chat_stream_request(request, callback=callback)

    with serving(app) as url:
        for _ in range(3):
            httpx.post(url + "/chat_stream", json={"user_input": "hi"})
        assert wait_for(lambda: len(seen) == 3)
        assert seen == ["success"] * 3
    chat_stream.close()


def test_constructor_starts_nothing_and_rejects_unknown_options():
    import threading

    before = {t.name for t in threading.enumerate()}
    cs = ChatStream(model=scripted_model(), template="chatml", too_many_request_as_http_error=True)
    assert {t.name for t in threading.enumerate()} == before
    assert cs.service.health().state.value == "idle"
    with pytest.raises(ConfigError) as info:
        ChatStream(model=scripted_model(), template="chatml", max_que_size=3)
    assert info.value.name == "max_que_size"
    with pytest.raises(ConfigError):
        ChatStream(model=None)


@pytest.mark.parametrize("user_middleware", [False, True])
@pytest.mark.parametrize("raises", ["RuntimeError", "HTTPException"])
def test_callback_fires_once_when_the_endpoint_raises_after_the_call(user_middleware, raises):
    """Issue 10, row 15: the user's endpoint raises after ``handle_chat_stream_request`` returned
    its (never sent) response. The callback still fires exactly once, the slot and the session's
    turn are freed, and the history is unchanged."""
    import gc

    from fastapi import HTTPException

    chat_stream = ChatStream(model=scripted_model("fine", token_delay=0.02), template="chatml",
                             num_of_concurrent_executions=1, max_queue_size=1)
    seen: list[str] = []

    async def callback(request, message):
        seen.append(message)

    app = FastAPI()
    chat_stream.append_middlewares(app)
    if user_middleware:
        @app.middleware("http")
        async def timing(request: Request, call_next):  # a BaseHTTPMiddleware, as tutorials show
            return await call_next(request)

    @app.post("/chat_stream")
    async def stream_api(request: Request):
        return await chat_stream.handle_chat_stream_request(request, callback=callback)

    @app.post("/chat_stream_then_fail")
    async def stream_api_fails(request: Request):
        await chat_stream.handle_chat_stream_request(request, callback=callback)
        if raises == "HTTPException":
            raise HTTPException(status_code=418, detail="changed my mind")
        raise RuntimeError("a bug in the user's endpoint")

    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert seed_reply(client.post("/chat_stream", json={"user_input": "one"}).text) == "fine"
        r = client.post("/chat_stream_then_fail", json={"user_input": "two"})
        assert r.status_code == (418 if raises == "HTTPException" else 500)
        assert wait_for(lambda: len(seen) == 2)
        gc.collect()
        assert wait_for(lambda: chat_stream.load()["running"] == 0 and chat_stream.load()["queued"] == 0)
        assert seen == ["success", "unknown_error_occurred"]
        # the session is free again and its history holds only the first turn
        assert seed_reply(client.post("/chat_stream", json={"user_input": "three"}).text) == "fine"
        (sid,) = chat_stream.sessions._sessions

        def user_turns() -> list[str]:
            messages = chat_stream.sessions.require(sid).prompt.to_messages()
            return [m["content"] for m in messages if m["role"] == "user"]

        # (a BaseHTTPMiddleware forwards the body's end before the inner task commits the turn)
        assert wait_for(lambda: len(seen) == 3 and user_turns() == ["one", "three"])
        assert seen == ["success", "unknown_error_occurred", "success"]
    chat_stream.close()
