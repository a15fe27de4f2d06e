"""Clean shutdown with streams open (issue 10, row 13), against real uvicorn servers on loopback.

Every open stream must end with a final event (SSE ``done``/``error``, the seed framing's last
record and a clean end of body, OpenAI's ``[DONE]``), no traceback or "Task was destroyed" may be
logged, and stopping must not wait for the streams to finish by themselves.
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import httpx

from chatstream_lab.models import scripted_model
from chatstream_lab.server import SEED_DELIMITER, BackgroundServer, ChatStream, create_app

from .conftest import sse_events, wait_for

# 80 words at 50 ms a token: many seconds if nobody stopped it,, far beyond any graceful timeout used here
SLOW = dict(token_delay=0.05)
LONG_REPLY = "word " * 80


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Everything logged (uvicorn's own loggers, asyncio's, ours) while the block runs."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "asyncio")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield buffer
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


class Client(threading.Thread):
    """One streaming request on its own thread; keeps the whole body it received."""

    def __init__(self, url: str, kind: str) -> None:
        super().__init__(daemon=True)
        self.url, self.kind = url, kind
        self.body = ""
        self.first = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.kind == "openai":
            path, payload, headers = "/v1/chat/completions", {
                "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}, {}
        else:
            path, payload = "/chat_stream", {"user_input": "hi"}
            headers = {"accept": "text/event-stream"} if self.kind == "sse" else {}
        try:
            with httpx.Client(timeout=30) as client, client.stream(
                    "POST", self.url + path, json=payload, headers=headers) as r:
                for chunk in r.iter_text():
                    self.body += chunk
                    if len(self.body) > 40:
                        self.first.set()
        except BaseException as exc:  # a cut body (RemoteProtocolError) is what this test catches
            self.error = exc
        finally:
            self.first.set()

    def ended_with_a_final_event(self) -> bool:
        if self.error is not None:
            return False
        if self.kind == "sse":
            events = sse_events(self.body)
            return bool(events) and events[-1][0] in ("done", "error")
        if self.kind == "openai":
            return self.body.rstrip().endswith("data: [DONE]")
        return self.body.endswith(SEED_DELIMITER)


def _open_streams(url: str, kinds: tuple[str, ...] = ("sse", "seed", "openai", "sse")) -> list[Client]:
    clients = [Client(url, kind) for kind in kinds]
    for c in clients:
        c.start()
    for c in clients:
        assert c.first.wait(15) and c.error is None, c.error
    return clients


def _assert_clean(clients: list[Client], logs: str) -> None:
    for c in clients:
        c.join(15)
        assert not c.is_alive()
        assert c.ended_with_a_final_event(), (c.kind, c.error, c.body[-200:])
    assert "Traceback" not in logs and "Task was destroyed" not in logs, logs[-3000:]
    assert "Exception in ASGI application" not in logs, logs[-3000:]


def test_background_server_stop_ends_open_streams_with_a_final_event() -> None:
    """The CLI's path: ``BackgroundServer.stop()`` on ``create_app``. A graceful timeout far
    longer than the test tolerates proves stop() did not wait for it (it would cut the bodies)."""
    cs = ChatStream(model=scripted_model(LONG_REPLY, **SLOW), num_of_concurrent_executions=4)
    app = create_app(cs, close_on_shutdown=True)
    with captured_logs() as logs:
        server = BackgroundServer(app, port=0, log_level="info", graceful_timeout_s=60).start(15)
        clients = _open_streams(server.url)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        stopper.join(20)
        assert not stopper.is_alive()
        _assert_clean(clients, logs.getvalue())
    assert cs.load()["running"] == 0 and cs.load()["queued"] == 0
    cancelled = [d for c in clients if c.kind == "sse" for e, d in sse_events(c.body) if e == "done"]
    assert cancelled and all(d["finish_reason"] == "cancelled" for d in cancelled)


def test_a_stopped_background_server_serves_again() -> None:
    cs = ChatStream(model=scripted_model("again", token_delay=0.001))
    server = BackgroundServer(create_app(cs), port=0)
    for _ in range(2):
        server.start(15)
        r = httpx.post(server.url + "/chat_stream", json={"user_input": "hi"}, timeout=10)
        assert r.status_code == 200 and r.text.endswith("again" + SEED_DELIMITER)
        server.stop()
    cs.close()


def test_a_graceful_timeout_that_cancels_the_tasks_still_ends_each_stream() -> None:
    """When uvicorn itself cancels the request tasks (its graceful timeout ran out, e.g. under plain
    ``uvicorn --timeout-graceful-shutdown``, where nobody tells the app it is stopping), each open
    stream still gets its final event and nothing is logged as a traceback."""
    cs = ChatStream(model=scripted_model(LONG_REPLY, **SLOW), num_of_concurrent_executions=4)
    app = create_app(cs, close_on_shutdown=True)
    app.state.begin_shutdown = None  # what plain uvicorn does: nobody tells the app before the timeout
    with captured_logs() as logs:
        server = BackgroundServer(app, port=0, log_level="info", graceful_timeout_s=0.5).start(15)
        clients = _open_streams(server.url)
        server.stop()
        _assert_clean(clients, logs.getvalue())
    assert cs.load()["running"] == 0


def test_endpoint_stop_ends_open_streams_cleanly() -> None:
    from chatstream_lab import Lab

    lab = Lab(scripted_model(LONG_REPLY, **SLOW))
    try:
        with captured_logs() as logs:
            ep = lab.serve(port=0)
            clients = _open_streams(ep.url, ("sse", "seed"))
            ep.stop()
            _assert_clean(clients, logs.getvalue())
    finally:
        lab.close()


SERVED_MODULE = textwrap.dedent("""
    from chatstream_lab.models import scripted_model
    from chatstream_lab.server import create_app

    app = create_app(model=scripted_model("word " * 400, token_delay=0.05), num_of_concurrent_executions=4)
""")


def test_create_app_under_plain_uvicorn_ends_streams_on_sigint(tmp_path) -> None:
    """``uvicorn module:app --timeout-graceful-shutdown 1`` and Ctrl-C: uvicorn's own signal
    handling; it cancels the request tasks after its timeout without telling the app first."""
    import os
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "served.py").write_text(SERVED_MODULE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "served:app", "--port", str(port),
                             "--timeout-graceful-shutdown", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _up(url), timeout=60)
        clients = _open_streams(url, ("sse", "seed", "openai"))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_clean(clients, out)
    assert proc.returncode == 0, out[-3000:]


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
