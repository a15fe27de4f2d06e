"""Bounded input and request hygiene (issue 10, rows 2-6, 8, 9), each on a real uvicorn server on
loopback with httpx (or the openai SDK): body size before buffering, stop lists, feedback, message
count, nesting depth, invalid Unicode, one error shape with error ids, sessions only where needed,
lenient cookie parsing, the Host / cross-site guard."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from fastapi import Request

from chatstream_lab.models import scripted_model
from chatstream_lab.server import MESSAGE_ID_HEADER, ChatStream, create_app

from .conftest import seed_reply, serving

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20


def _chat_stream(**options) -> ChatStream:
    return ChatStream(model=scripted_model(token_delay=0.0005), template="chatml", max_new_tokens=16, **options)


@pytest.fixture(scope="module")
def server():
    """One server for the stateless checks: default limits, plus a route that counts the body
    bytes it is handed and one that fails unexpectedly."""
    app = create_app(_chat_stream(), close_on_shutdown=True)
    seen: list[int] = []

    @app.post("/_count")
    async def count(request: Request) -> dict[str, int]:
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
            seen.append(n)
        return {"n": n}

    @app.get("/_boom")
    async def boom() -> None:
        raise RuntimeError("secret detail: /home/user/model.bin on cuda:3")

    with serving(app) as url:
        yield url, seen


def _error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    if param is not None:
        assert err["param"] == param, err
    return err


def _history(client: httpx.Client) -> list[str]:
    return [m["content"] for m in client.get("/get_prompt").json()["messages"]]


# -- row 2: the body limit is enforced while the body streams in ---------------------------------

@pytest.mark.parametrize("path", ["/_count", "/chat_stream", "/v1/chat/completions", "/set_feedback"])
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_huge_body_gets_413_before_it_is_buffered(server, path, declared):
    url, seen = server
    seen.clear()
    total, sent = 100 * MiB, [0]

    def body():
        for _ in range(total // MiB):
            sent[0] += MiB
            yield b"x" * MiB

    headers = {"content-length": str(total)} if declared else {}
    r = httpx.post(url + path, content=body(), headers=headers, timeout=60)
    err = _error(r, 413)
    assert err["type"] == "request_too_large" and "max_body_bytes" in err["message"]
    assert max(seen, default=0) <= MiB  # the app never held more than the default limit
    assert sent[0] < total // 4  # the server stopped reading: the client could not send it all
    assert httpx.get(url + "/health").status_code == 200


def test_a_body_within_the_limit_is_read_whole(server):
    url, seen = server
    r = httpx.post(url + "/_count", content=b"y" * (MiB - 10))
    assert r.status_code == 200 and r.json() == {"n": MiB - 10}


def test_the_body_limit_is_configurable():
    from chatstream_lab.config import RequestLimits

    cs = _chat_stream(request_limits=RequestLimits(max_body_bytes=1000))
    with serving(create_app(cs, close_on_shutdown=True)) as url:
        r = httpx.post(url + "/chat_stream", json={"user_input": "x" * 990})
        _error(r, 413)
        r = httpx.post(url + "/chat_stream", json={"user_input": "small"})
        assert r.status_code == 200
        assert httpx.get(url + "/stats").json()["request_limits"]["max_body_bytes"] == 1000


# -- row 3: stop lists are bounded on every route that takes them ---------------------------------

@pytest.mark.parametrize("stop", [[f"s{i}" for i in range(17)], ["x" * 257], "x" * 257],
                         ids=["count", "length", "one-long-string"])
def test_stop_lists_are_bounded_on_every_route(server, stop):
    url, _ = server
    with httpx.Client(base_url=url) as c:
        c.post("/chat_stream", json={"user_input": "hi"})
        before = c.get("/get_generation_params").json()["generation_params"]
        err = _error(c.post("/set_generation_params", json={"stop": stop}), 400, "stop")
        assert "max_stop" in err["message"]
        assert c.get("/get_generation_params").json()["generation_params"] == before  # untouched
        _error(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                     "stop": stop}), 400, "stop")
    ok = [f"s{i}" for i in range(16)]
    with httpx.Client(base_url=url) as c:
        r = c.post("/set_generation_params", json={"stop": ok})
        assert r.status_code == 200 and r.json()["generation_params"]["stop"] == ok
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stop": ok})
        assert r.status_code == 200


# -- row 4: feedback is bounded in size, and so is the store --------------------------------------

def test_feedback_form_data_is_bounded_and_the_log_too():
    cs = _chat_stream()  # no sink: records are kept in memory
    with serving(create_app(cs, close_on_shutdown=True)) as url, httpx.Client(base_url=url) as c:
        mid = c.post("/chat_stream", json={"user_input": "rate me"}).headers[MESSAGE_ID_HEADER]
        big = {"comment": "x" * (17 << 10)}
        _error(c.post("/set_feedback", json={"message_id": mid, "is_like": True, "form_data": big}), 413,
               "form_data")
        assert len(cs.feedback) == 0
        fits = {"comment": "y" * (15 << 10)}
        for _ in range(300):  # 300 x 15 KiB = 4.5 MB of form data
            r = c.post("/set_feedback", json={"message_id": mid, "is_like": False, "form_data": fits})
            assert r.status_code == 200
        sessions = c.get("/stats").json()["sessions"]
    assert 0 < len(cs.feedback) < 300 and cs.feedback.chars <= 4_000_000
    assert sessions["feedback_records"] == len(cs.feedback)
    assert cs.feedback[-1]["form_data"] == fits


# -- message count, nesting depth, invalid Unicode: 400, never 500 --------------------------------

def test_message_count_is_bounded(server):
    url, _ = server
    messages = [{"role": "user", "content": "a"}] * 257
    _error(httpx.post(url + "/v1/chat/completions", json={"messages": messages}), 400, "messages")


@pytest.mark.parametrize("path", ["/chat_stream", "/set_generation_params", "/set_feedback",
                                  "/v1/chat/completions"])
@pytest.mark.parametrize("depth", [33, 100_000])
def test_deep_json_is_400_on_every_route(server, path, depth):
    url, _ = server
    body = '{"user_input": ' + "[" * depth + "]" * depth + "}"
    with httpx.Client(base_url=url) as c:
        err = _error(c.post(path, content=body, headers={"content-type": "application/json"}), 400)
        assert "nested" in err["message"]


@pytest.mark.parametrize("path,body,param", [
    ("/chat_stream", '{"user_input": "hi \\ud800"}', "user_input"),
    ("/chat_stream", '{"user_input": "hi", "\\udfff": 1}', "\\udfff"),
    ("/set_generation_params", '{"stop": ["\\ud800"]}', "stop"),
    ("/set_feedback", '{"message_id": "m", "form_data": {"a": ["\\udbff"]}}', "form_data"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
])
def test_lone_surrogates_are_400_and_never_stored(server, path, body, param):
    url, _ = server
    with httpx.Client(base_url=url) as c:
        c.post("/chat_stream", json={"user_input": "first"})
        r = c.post(path, content=body, headers={"content-type": "application/json"})
        err = _error(r, 400)
        assert "Unicode" in err["message"]
        assert err["param"] == param
        r = c.get("/get_generation_params")  # the session still answers (main: 500 forever)
        assert r.status_code == 200 and r.json()["generation_params"]["stop"] == []
        assert _history(c)[0] == "first"


def test_raw_surrogate_bytes_are_400_too(server):
    url, _ = server
    raw = b'{"user_input": "hi \xed\xa0\x80"}'  # UTF-8 of U+D800, which json.loads lets through
    _error(httpx.post(url + "/chat_stream", content=raw, headers={"content-type": "application/json"}),
           400, "user_input")


# -- row 9: one JSON error shape, no internals, error ids ------------------------------------------

def test_an_unexpected_error_is_json_with_an_error_id_and_no_detail(server, caplog):
    url, _ = server
    with caplog.at_level(logging.ERROR, logger="chatstream_lab.server.errors"):
        r = httpx.get(url + "/_boom")
    err = _error(r, 500)
    assert err["type"] == "internal_error" and err["error_id"] in err["message"]
    assert "secret" not in r.text and "cuda" not in r.text and "Traceback" not in r.text
    logged = [rec for rec in caplog.records if err["error_id"] in rec.getMessage()]
    assert logged and logged[0].exc_info is not None  # the detail is in the log, under that id


def test_every_kind_of_route_answers_the_same_shape(server):
    url, _ = server
    shapes = [
        httpx.get(url + "/nope"),
        httpx.post(url + "/health"),
        httpx.post(url + "/chat_stream", content=b"{oops", headers={"content-type": "application/json"}),
        httpx.post(url + "/set_generation_params", json={"top_p": 5}),
        httpx.post(url + "/v1/chat/completions", json={"messages": []}),
        httpx.post(url + "/v1/chat/completions", content=b"{bad"),
    ]
    for r in shapes:
        assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("application/json")
        assert set(r.json()) == {"error"} and {"message", "type", "param", "code"} <= set(r.json()["error"])


def test_the_openai_sdk_reads_our_errors(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}],
                                       stop=[f"s{i}" for i in range(17)])
    assert info.value.code == "invalid_parameter" and info.value.param == "stop"
    assert "max_stop_strings" in info.value.message


# -- row 5: sessions only where needed; memory bounded and reported -------------------------------

def test_cookieless_read_only_calls_never_create_or_evict_sessions():
    cs = _chat_stream(max_sessions=10)
    with serving(create_app(cs, close_on_shutdown=True)) as url, httpx.Client(base_url=url) as alice:
        alice.post("/chat_stream", json={"user_input": "remember me"})
        with httpx.Client(base_url=url) as anon:
            for _ in range(100):  # 400 cookieless calls against max_sessions=10
                anon.cookies.clear()
                for r in (anon.get("/get_prompt"), anon.get("/get_generation_params"),
                          anon.post("/clear_context", json={}),
                          anon.post("/set_feedback", json={"message_id": "x", "is_like": True})):
                    assert "set-cookie" not in r.headers
                    assert r.status_code in (200, 404)
        fresh = httpx.get(url + "/get_prompt").json()
        assert fresh["success"] is True and fresh["messages"] == []
        assert _history(alice)[0] == "remember me"
        assert httpx.get(url + "/stats").json()["sessions"]["live"] == 1


def test_session_memory_is_bounded_and_reported_in_stats():
    cs = _chat_stream(max_session_chars=600, max_sessions=4)
    with serving(create_app(cs, close_on_shutdown=True)) as url, httpx.Client(base_url=url) as c:
        for i in range(12):
            r = c.post("/chat_stream", json={"user_input": f"turn {i} " + "z" * 140})
            assert r.status_code == 200
        history = _history(c)
        usage = c.get("/stats").json()["sessions"]
    assert history[-2].startswith("turn 11") and not any(m.startswith("turn 0 ") for m in history)
    assert sum(len(m) for m in history) <= 600
    assert 0 < usage["chars"] <= 600 and usage["live"] == 1
    assert usage["max_session_chars"] == 600 and usage["max_total_chars"] == 4 * 600


# -- row 6: other cookies with JSON, space or quote values do not hide ours -----------------------

def test_the_session_cookie_survives_foreign_cookies(server):
    url, _ = server
    with httpx.Client(base_url=url) as c:
        c.post("/chat_stream", json={"user_input": "keep me"})
        ours = c.cookies["chatstream_sid"]
    header = f'g_state={{"i_l":0}}; theme=dark mode; quoted="a b"; chatstream_sid={ours}; x=\\"'
    r = httpx.get(url + "/get_prompt", headers={"Cookie": header})
    assert [m["content"] for m in r.json()["messages"]][0] == "keep me"
    r = httpx.post(url + "/chat_stream", json={"user_input": "again"},
                   headers={"Cookie": header, "Content-Type": "application/json"})
    assert "set-cookie" not in r.headers and seed_reply(r.text).startswith("You said: again")


# -- row 8: cross-site writes and foreign Host names are refused ----------------------------------

def test_cross_site_writes_with_the_cookie_are_refused_and_the_session_untouched(server):
    url, _ = server
    port = url.rsplit(":", 1)[1]
    with httpx.Client(base_url=url) as c:
        c.post("/chat_stream", json={"user_input": "mine"})
        attacks = [
            ("/chat_stream", {"content": json.dumps({"user_input": "injected"}),
                              "headers": {"content-type": "text/plain"}}, 415),
            ("/chat_stream", {"json": {"user_input": "injected"},
                              "headers": {"origin": "http://localhost:9"}}, 403),
            ("/set_generation_params", {"json": {"temperature": 2.0},
                                        "headers": {"sec-fetch-site": "same-site"}}, 403),
            ("/set_generation_params", {"content": '{"temperature": 2.0}',
                                        "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415),
            ("/clear_context", {"headers": {"origin": "null", "sec-fetch-site": "cross-site"}}, 403),
            ("/clear_context", {"headers": {"origin": f"http://127.0.0.1:{int(port) + 1}"}}, 403),
        ]
        for path, kwargs, status in attacks:
            err = _error(c.post(path, **kwargs), status)
            assert err["type"] in ("cross_origin", "unsupported_media_type")
        assert _history(c)[0] == "mine" and len(_history(c)) == 2
        assert c.get("/get_generation_params").json()["generation_params"]["temperature"] != 2.0
        # the page's own requests: same origin, JSON
        same = {"origin": url, "sec-fetch-site": "same-origin"}
        assert c.post("/chat_stream", json={"user_input": "ok"}, headers=same).status_code == 200
        assert c.post("/clear_context", json={}, headers=same).status_code == 200
        assert _history(c) == []


@pytest.mark.parametrize("host,ok", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("[::1]:{port}", True), ("localhost", True),
    ("127.0.0.2:{port}", True), ("app.localhost:{port}", True),
    ("evil.example:{port}", False), ("evil.example", False), ("192.168.1.20:{port}", False),
])
def test_a_loopback_server_answers_only_loopback_host_names(server, host, ok):
    url, _ = server
    port = url.rsplit(":", 1)[1]
    r = httpx.get(url + "/get_prompt", headers={"host": host.format(port=port)})
    if ok:
        assert r.status_code == 200
    else:
        assert _error(r, 400)["type"] == "invalid_host"


def test_allowed_hosts_admit_a_proxy_name():
    app = create_app(_chat_stream(), allowed_hosts=["demo.example.org", "*.lab.example"], close_on_shutdown=True)
    with serving(app) as url:
        assert httpx.get(url + "/health", headers={"host": "demo.example.org"}).status_code == 200
        assert httpx.get(url + "/health", headers={"host": "a.lab.example:443"}).status_code == 200
        assert httpx.get(url + "/health", headers={"host": "localhost"}).status_code == 200
        assert httpx.get(url + "/health", headers={"host": "evil.example"}).status_code == 400


def _lan_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 1))  # no packet is sent: this only picks an interface
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_a_server_bound_wider_answers_its_lan_name_and_still_guards_loopback():
    """``chatstream-lab serve --host 0.0.0.0`` (and ``Lab.serve(host="0.0.0.0")``): clients on the
    network use any name; a request arriving on loopback still needs a loopback name."""
    from chatstream_lab.server import BackgroundServer

    server = BackgroundServer(create_app(_chat_stream(), close_on_shutdown=True), host="0.0.0.0", port=0)
    server.start(timeout=15)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(server.url + "/health").status_code == 200
        assert httpx.get(server.url + "/health", headers={"host": "rebound.example"}).status_code == 400
        lan = _lan_address()
        if lan is not None:
            r = httpx.get(f"http://{lan}:{server.port}/health", headers={"host": "mybox.local"})
            assert r.status_code == 200
    finally:
        server.stop()


async def test_a_request_on_a_wider_interface_is_not_host_checked_unless_configured():
    """A server bound to 0.0.0.0 answers under any name on its other interfaces (the LAN address,
    a hostname); only loopback arrivals are checked, since that is where DNS rebinding lands."""
    from chatstream_lab.server.guard import RequestGuardMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def status(guard, server_addr, host):
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "method": "GET", "path": "/", "server": server_addr,
                 "headers": [(b"host", host.encode())]}
        await guard(scope, receive, send)
        return sent[0]["status"]

    default = RequestGuardMiddleware(app)
    assert await status(default, ("192.168.1.5", 8000), "mybox.local:8000") == 200
    assert await status(default, ("127.0.0.1", 8000), "mybox.local:8000") == 400
    assert await status(default, ("::ffff:127.0.0.1", 8000), "mybox.local:8000") == 400
    configured = RequestGuardMiddleware(app, allowed_hosts=["mybox.local"])
    assert await status(configured, ("192.168.1.5", 8000), "mybox.local:8000") == 200
    assert await status(configured, ("192.168.1.5", 8000), "other.example") == 400
