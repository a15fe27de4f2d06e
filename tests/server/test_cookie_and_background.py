import contextlib
import signal
import socket
import threading
import time

import httpx
import pytest
from fastapi import FastAPI

from chatstream_lab.errors import ConfigError, ServerStartError
from chatstream_lab.server import BackgroundServer, CookieSettings
from chatstream_lab.server.session_cookie import SessionCookies


def test_cookie_signature_roundtrip_and_forgery():
    cookies = SessionCookies("a-secret-of-enough-length")
    value = cookies.dump("sid-1")
    assert cookies.load(value) == "sid-1"
    assert cookies.load(value[:-2] + "xx") is None
    assert SessionCookies("another-secret-of-length").load(value) is None
    assert SessionCookies().load(SessionCookies().dump("x")) is None  # random secret per launch
    assert cookies.load(None) is None and cookies.load("") is None


def test_cookie_flags_secure_the_right_way_round():
    plain = SessionCookies(settings=CookieSettings())
    v = plain.set_cookie_value("s", https=False)
    assert "HttpOnly" in v and "SameSite=Lax" in v and "Secure" not in v
    assert "Secure" in plain.set_cookie_value("s", https=True)  # auto: secure iff https
    forced = SessionCookies(settings=CookieSettings(secure=True, same_site="strict", max_age_s=60))
    v = forced.set_cookie_value("s", https=False)
    assert "Secure" in v and "SameSite=Strict" in v and "Max-Age=60" in v
    assert "Secure" not in SessionCookies(settings=CookieSettings(secure=False)).set_cookie_value("s", https=True)
    with pytest.raises(ConfigError):
        CookieSettings(same_site="none")  # SameSite=None needs Secure
    with pytest.raises(ConfigError):
        SessionCookies("short")


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return app


def test_background_server_start_stop_restart_and_no_signal_handlers():
    before = signal.getsignal(signal.SIGINT)
    server = BackgroundServer(_app(), port=0)
    for _ in range(2):  # restartable
        server.start(timeout=10)
        assert server.port and server.url.startswith("http://127.0.0.1:")
        assert httpx.get(server.url + "/ping").json() == {"ok": True}
        assert signal.getsignal(signal.SIGINT) is before
        port = server.port
        server.stop()
        assert not server.running
        with socket.socket() as s:  # the port is free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    assert not any(t.name.startswith("chatstream-server") for t in threading.enumerate())


def test_busy_port_fails_fast_with_a_clear_message():
    with BackgroundServer(_app(), port=0) as first:
        t0 = time.monotonic()
        with pytest.raises(ServerStartError) as info:
            BackgroundServer(_app(), port=first.port).start(timeout=10)
        assert time.monotonic() - t0 < 2
        assert str(first.port) in str(info.value) and "port=0" in str(info.value)
        assert httpx.get(first.url + "/ping").status_code == 200  # the first one is unharmed


def test_startup_failure_is_reraised():
    @contextlib.asynccontextmanager
    async def lifespan(app):
        raise RuntimeError("no startup for you")
        yield

    app = FastAPI(lifespan=lifespan)
    with pytest.raises(ServerStartError):
        BackgroundServer(app, port=0).start(timeout=10)
