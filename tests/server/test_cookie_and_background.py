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


def test_background_server_answers_without_the_nagle_delay(scripted):
    """Every accepted connection gets TCP_NODELAY: a keep-alive /health round trip is not ~40 ms
    (Nagle + delayed ACK). Compared with a plain no-delay socket server in the same test."""
    import socket
    import statistics
    import threading
    import time

    import httpx

    from chatstream_lab.server import BackgroundServer, create_app

    def median_round_trip(get) -> float:
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            get()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[3:])

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def plain_server() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(65536):
                if b"\r\n\r\n" in data:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    threading.Thread(target=plain_server, daemon=True).start()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as plain:
        baseline = median_round_trip(lambda: plain.get("/"))
    server = BackgroundServer(create_app(model=scripted("hi"), template="chatml"), port=0).start()
    try:
        with httpx.Client(base_url=server.url, trust_env=False) as client:
            ours = median_round_trip(lambda: client.get("/health"))
    finally:
        server.stop()
        listener.close()
    assert ours < baseline + 0.02, (ours, baseline)  # Nagle would add ~40 ms to every round trip
