"""The app on a real uvicorn server with the scripted model: protocol, sessions, validation, ops routes."""

from __future__ import annotations

import json

import httpx
import pytest

from chatstream_lab.models import scripted_model
from chatstream_lab.server import MESSAGE_ID_HEADER, ChatStream, create_app

from .conftest import seed_reply, serving, sse_events

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def feedback() -> list[dict]:
    return []


@pytest.fixture(scope="module")
def url(feedback):
    cs = ChatStream(model=scripted_model(token_delay=0.001), template="chatml", max_input_chars=200,
                    max_new_tokens=64, feedback_sink=feedback.append)
    with serving(create_app(cs, close_on_shutdown=True)) as u:
        yield u


def history(client: httpx.Client) -> list[dict[str, str]]:
    return client.get("/get_prompt").json()["messages"]


def test_seed_framing_multiturn_and_session_isolation(url):
    with httpx.Client(base_url=url) as alice, httpx.Client(base_url=url) as bob:
        r = alice.post("/chat_stream", json={"user_input": "apples", "regenerate": False})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert r.headers[MESSAGE_ID_HEADER]
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
        assert seed_reply(r.text) == "You said: apples. This is a scripted reply."
        records = r.text.split("<::EOS::>")[:-1]
        assert all(b.startswith(a) for a, b in zip(records, records[1:]))  # cumulative
        r = alice.post("/chat_stream", json={"user_input": "pears"})
        assert "set-cookie" not in r.headers  # same session
        assert seed_reply(r.text) == "You said: pears. This is a scripted reply."
        bob.post("/chat_stream", json={"user_input": "cherries"})
        assert [m["content"] for m in history(alice)][::2] == ["apples", "pears"]
        assert [m["content"] for m in history(bob)] == ["cherries", "You said: cherries. This is a scripted reply."]
        prompt = alice.get("/get_prompt").json()["prompt"]
        assert "apples" in prompt and "cherries" not in prompt


def test_sse_framing_regenerate_and_clear(url):
    with httpx.Client(base_url=url, headers={"Accept": "text/event-stream"}) as c:
        r = c.post("/chat_stream", json={"user_input": "figs"})
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        kinds = [k for k, _ in events]
        assert kinds[0] == "queued" and kinds[-1] == "done" and "delta" in kinds
        text = "".join(d["text"] for k, d in events if k == "delta")
        done = events[-1][1]
        assert text == done["text"] == "You said: figs. This is a scripted reply."
        assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] > 0
        assert done["message_id"] == r.headers[MESSAGE_ID_HEADER]
        r = c.post("/chat_stream", json={"user_input": None, "regenerate": True})
        assert sse_events(r.text)[-1][0] == "done"
        assert [m["content"] for m in history(c)] == ["figs", "You said: figs. This is a scripted reply."]
        assert c.post("/clear_context").json()["success"] is True
        assert history(c) == []
        r = c.post("/chat_stream", json={"regenerate": True})
        assert r.status_code == 409 and r.json()["error"]["type"] == "nothing_to_regenerate"


BAD_BODIES = [
    (b"not json", 400, None), (b"[]", 400, None), (b'{"user_input": 12}', 400, "user_input"),
    (b'{"user_input": null}', 400, "user_input"), (b'{"user_input": ""}', 400, "user_input"),
    (b'{"user_input": {"a": 1}}', 400, "user_input"), (json.dumps({"user_input": "x" * 201}).encode(), 413,
                                                        "user_input"),
    (b'{"user_input": "hi", "regenerate": "yes"}', 400, "regenerate"),
]


@pytest.mark.parametrize("body,status,param", BAD_BODIES)
def test_bad_input_is_4xx_json_and_leaves_history(url, body, status, param):
    with httpx.Client(base_url=url) as c:
        c.post("/chat_stream", json={"user_input": "keep me"})
        before = history(c)
        r = c.post("/chat_stream", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == status
        err = r.json()["error"]
        assert err["message"] and err["param"] == param
        assert history(c) == before
        assert c.post("/chat_stream", json={"user_input": "still"}).status_code == 200


def test_unknown_routes_and_methods_are_json(url):
    r = httpx.get(url + "/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = httpx.get(url + "/chat_stream")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


def test_generation_params_are_validated_and_session_scoped(url):
    with httpx.Client(base_url=url) as a, httpx.Client(base_url=url) as b:
        r = a.post("/set_generation_params", json={"temperature": 0, "top_k_value": 5, "max_new_tokens": 8})
        assert r.status_code == 200 and r.json()["generation_params"]["top_k"] == 5
        assert a.get("/get_generation_params").json()["generation_params"]["max_new_tokens"] == 8
        assert b.get("/get_generation_params").json()["generation_params"]["max_new_tokens"] == 64
        for bad, param in (({"top_p": 3}, "top_p"), ({"temperature": "hot"}, "temperature"),
                           ({"top_k": True}, "top_k"), ({"warmth": 1}, "warmth")):
            r = a.post("/set_generation_params", json=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == param
        assert a.get("/get_generation_params").json()["generation_params"]["top_k"] == 5
        r = a.post("/chat_stream", json={"user_input": "short please"})
        assert len(seed_reply(r.text).encode()) == 8  # byte tokenizer: 8 tokens


def test_feedback_goes_to_the_sink(url, feedback):
    with httpx.Client(base_url=url) as c:
        mid = c.post("/chat_stream", json={"user_input": "rate me"}).headers[MESSAGE_ID_HEADER]
        r = c.post("/set_feedback", json={"message_id": mid, "is_like": True, "form_data": {"note": "good"}})
        assert r.json()["success"] is True
        assert feedback[-1]["message_id"] == mid and feedback[-1]["is_like"] is True
        assert feedback[-1]["target_message"] == "You said: rate me. This is a scripted reply."
        assert c.post("/set_feedback", json={"message_id": "nope", "is_like": True}).status_code == 404
        assert c.post("/set_feedback", json={"message_id": mid, "is_like": "y"}).status_code == 400


def test_ops_routes(url):
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["engine"]["state"] in ("idle", "running")
    s = httpx.get(url + "/stats").json()
    assert s["config_id"] and s["limit"] == 2 and s["max_queue_size"] == 5 and "history" not in s
    assert "history" in httpx.get(url + "/stats?history=true").json()
    m = httpx.get(url + "/metrics")
    assert m.headers["content-type"].startswith("text/plain") and "chatstream_running_requests" in m.text
    load = httpx.get(url + "/get_load").json()
    assert load["success"] and load["chatstream_workers"][0]["max_processing"] == 2


def test_openai_routes_scripted(url):
    r = httpx.get(url + "/v1/models").json()
    assert r["data"][0]["id"] == "scripted"
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hey"}], "max_tokens": 5}
    r = httpx.post(url + "/v1/chat/completions", json=body).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 5
    r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": True,
                                                       "stream_options": {"include_usage": True}})
    lines = [ln for ln in r.text.split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "You s"
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    for bad, status, param in (({**body, "temperature": -1}, 400, "temperature"),
                               ({**body, "max_tokens": 0}, 400, "max_tokens"),
                               ({"messages": []}, 422, "messages"), ({**body, "n": 2}, 400, "n")):
        r = httpx.post(url + "/v1/chat/completions", json=bad)
        assert r.status_code == status and r.json()["error"]["param"] == param, r.text
    assert httpx.post(url + "/v1/chat/completions", content=b"{bad").status_code == 422


def test_page_and_assets_are_served_locally(url):
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "static/app.js" in page.text and "http" not in page.text.split("<body>")[0]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    js = httpx.get(url + "/static/app.js")
    assert js.headers["content-type"].startswith("text/javascript") and "textContent" in js.text
    assert "innerHTML" not in js.text
    assert httpx.get(url + "/static/style.css").status_code == 200
    assert httpx.get(url + "/static/../app.py").status_code == 404


def test_token_auth_and_cors():
    cs = ChatStream(model=scripted_model(), template="chatml")
    app = create_app(cs, token="s3cret-token", cors_origins=["http://example.test"], close_on_shutdown=True)
    with serving(app) as u:
        assert httpx.get(u + "/health").status_code == 200
        assert httpx.get(u + "/").status_code == 200 and httpx.get(u + "/static/app.js").status_code == 200
        r = httpx.post(u + "/chat_stream", json={"user_input": "hi"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert httpx.get(u + "/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.post(u + "/chat_stream", json={"user_input": "hi"},
                        headers={"Authorization": "Bearer s3cret-token", "Origin": "http://example.test"})
        assert ok.status_code == 200 and seed_reply(ok.text).startswith("You said: hi")
        assert ok.headers["access-control-allow-origin"] == "http://example.test"
        assert ok.headers["access-control-allow-credentials"] == "true"
        pre = httpx.options(u + "/chat_stream", headers={"Origin": "http://evil.test",
                                                        "Access-Control-Request-Method": "POST"})
        assert pre.headers.get("access-control-allow-origin") != "*"
        assert "http://evil.test" not in pre.headers.get("access-control-allow-origin", "")


def test_a_dead_engine_makes_health_and_requests_answer_503(scripted, serve):
    from chatstream_lab.engine import Engine
    from chatstream_lab.engine.batching.backends import ScriptedBackend
    from chatstream_lab.service import Service

    class Exploding(ScriptedBackend):
        def join(self, *args, **kwargs):
            raise MemoryError("cannot grow the KV cache")

    lm = scripted("never streamed")
    engine = Engine(lm, gather_s=0, backend=Exploding(lm.model, lm.tokenizer))
    with serve(create_app(Service.build(lm, template="chatml", generator=engine))) as url:
        body = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                          timeout=10).json()
        assert "error" in body
        health = httpx.get(url + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["engine"]["state"] == "failed"
        again = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]},
                           timeout=5)
        assert again.status_code == 503 and again.headers["retry-after"]
        assert again.json()["error"]["type"] == "engine_unavailable"
    engine.close()


def test_a_mid_stream_model_error_is_visible_to_seed_clients_and_never_committed(scripted):
    from chatstream_lab.server import SEED_ERROR_MARKER

    cs = ChatStream(model=scripted("this reply breaks halfway", fail_after=5), template="chatml")
    with serving(create_app(cs, close_on_shutdown=True)) as url, httpx.Client(base_url=url, timeout=10) as client:
        body = client.post("/chat_stream", json={"user_input": "go"}).text
        records = body.split("<::EOS::>")[:-1]
        assert len(records) >= 2 and records[-1].startswith(SEED_ERROR_MARKER)  # partial text, then the marker
        assert "error id" in records[-1]
        assert "scripted failure" not in body and "RuntimeError" not in body  # no internals
        messages = client.get("/get_prompt").json()["messages"]
        assert not [m for m in messages if m["role"] == "assistant"]  # the failed reply is not a turn
        events = sse_events(client.post("/chat_stream", json={"user_input": "again"},
                                        headers={"Accept": "text/event-stream"}).text)
        kind, data = events[-1]
        assert kind == "error" and "error id" in data["message"] and "scripted failure" not in data["message"]
        chunks = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                             "stream": True}).text
        assert "error id" in chunks and "scripted failure" not in chunks


def test_auth_lets_only_real_preflights_through_and_closes_unauthenticated_websockets():
    import asyncio

    from chatstream_lab.server.auth import BearerAuthMiddleware

    cs = ChatStream(model=scripted_model(), template="chatml")
    with serving(create_app(cs, token="s3cret-token", close_on_shutdown=True)) as u:
        assert httpx.options(u + "/stats").status_code == 401  # a bare OPTIONS is not a preflight
        assert httpx.request("OPTIONS", u + "/get_prompt").status_code == 401
    reached: list[str] = []

    async def app(scope, receive, send):
        reached.append(scope["type"])

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "websocket.connect"}

    guard = BearerAuthMiddleware(app, token="s3cret-token")
    asyncio.run(guard({"type": "websocket", "path": "/ws", "headers": []}, receive, send))
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]
    asyncio.run(guard({"type": "websocket", "path": "/ws",
                       "headers": [(b"authorization", b"Bearer s3cret-token")]}, receive, send))
    asyncio.run(guard({"type": "lifespan"}, receive, send))
    assert reached == ["websocket", "lifespan"]
