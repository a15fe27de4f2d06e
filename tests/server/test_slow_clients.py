"""Slow clients are timed out (issue 10, row 14): raw sockets against real uvicorn servers on
loopback. A head sent a byte at a time and a body that trickles (or never comes) each hold a
connection forever unless something bounds them."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from chatstream_lab.errors import ConfigError
from chatstream_lab.models import scripted_model
from chatstream_lab.server import BackgroundServer, create_app

from .conftest import seed_reply

pytestmark = pytest.mark.timeout(60)

GIVE_UP_S = 20  # the client keeps trickling this long at most; far beyond the server's limits here


def _app(**options):
    return create_app(model=scripted_model("ok"), close_on_shutdown=True, **options)


def _trickle(sock: socket.socket, pieces: list[bytes], every_s: float = 0.1) -> bytes:
    """Send ``pieces`` one by one (then keep the connection open) until the server answers or
    closes; returns what it sent back (b"" for a close without an answer)."""
    sock.settimeout(every_s)
    deadline = time.monotonic() + GIVE_UP_S
    received = b""
    pieces = list(pieces)
    while time.monotonic() < deadline:
        if pieces:
            try:
                sock.sendall(pieces.pop(0))
            except OSError:
                return received
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open {GIVE_UP_S} s; got {received!r}")


def test_a_head_sent_a_byte_at_a_time_is_cut():
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 400 + b"\r\n\r\n"
    with BackgroundServer(_app(), port=0, header_timeout_s=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            assert _trickle(sock, [bytes([b]) for b in head]) == b""  # closed, never answered
        assert httpx.get(server.url + "/health").status_code == 200  # still serving


def test_a_connection_that_never_sends_its_head_is_cut_but_quick_clients_are_not():
    with BackgroundServer(_app(), port=0, header_timeout_s=0.5, timeout_keep_alive=60) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as idle:
            assert _trickle(idle, []) == b""
        # a keep-alive client that sends each head at once is served request after request
        with httpx.Client(base_url=server.url) as client:
            for _ in range(3):
                assert client.get("/health").status_code == 200
                time.sleep(0.2)


@pytest.mark.parametrize("route", ["/chat_stream", "/v1/chat/completions", "/set_generation_params"])
def test_a_body_that_trickles_gets_a_json_408_and_the_connection_closes(route):
    body = json.dumps({"user_input": "hi", "messages": [{"role": "user", "content": "hi"}],
                       "model": "m", "temperature": 0.5}).encode()
    head = (f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) + 1000}\r\n\r\n").encode()
    with BackgroundServer(_app(body_timeout_s=0.5), port=0) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            answer = _trickle(sock, [head] + [bytes([b]) for b in body])  # and then the rest never comes
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), answer[:300]
        headers, _, payload = rest.partition(b"\r\n\r\n")
        assert b"connection: close" in headers.lower()
        assert json.loads(payload)["error"]["message"].startswith("the request body did not arrive")
        assert server.app.state.chat_stream.load()["running"] == 0
        assert seed_reply(httpx.post(server.url + "/chat_stream", json={"user_input": "hi"}).text) == "ok"


def test_a_streaming_reply_is_not_cut_by_the_body_timeout():
    app = create_app(model=scripted_model("slow " * 20, token_delay=0.05), close_on_shutdown=True,
                     body_timeout_s=0.3)
    with BackgroundServer(app, port=0, header_timeout_s=0.3) as server:
        r = httpx.post(server.url + "/chat_stream", json={"user_input": "hi"},
                       headers={"accept": "text/event-stream"}, timeout=30)
        assert r.status_code == 200 and "event: done" in r.text


def test_timeouts_are_validated():
    with pytest.raises(ConfigError):
        BackgroundServer(_app(), header_timeout_s=0)
    with pytest.raises(ConfigError):
        from chatstream_lab.server.timeouts import BodyTimeoutMiddleware

        BodyTimeoutMiddleware(_app(), body_timeout_s=-1)


