"""Clean shutdown with streams open (issue 10, row 13), against real uvicorn servers on loopback.

Every open stream must end with a final event (SSE ``done``/``error``, the seed framing's last
record and a clean end of body, OpenAI's ``[DONE]``), no traceback or "Task was destroyed" may be
logged, and stopping must not wait for the streams to finish by themselves.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from chatstream_lab.models import scripted_model
from chatstream_lab.server import SEED_DELIMITER, SEED_ERROR_MARKER, BackgroundServer, ChatStream, create_app

from .conftest import seed_reply, sse_events, wait_for

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
    """One request on its own thread (streamed, except ``openai-json``); keeps the whole body.

    Kinds: ``sse`` and ``seed`` (``/chat_stream``), ``openai`` (streamed chat completion),
    ``openai-json`` (not streamed: its headers come with the whole reply).
    """

    def __init__(self, url: str, kind: str, text: str = "hi", max_tokens: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.kind, self.text, self.max_tokens = url, kind, text, max_tokens
        self.body = ""
        self.status: int | None = None
        self.first = threading.Event()
        self.error: BaseException | None = None

    def _request(self) -> tuple[str, dict, dict]:
        if self.kind.startswith("openai"):
            payload = {"model": "m", "stream": self.kind == "openai",
                       "messages": [{"role": "user", "content": self.text}]}
            if self.max_tokens is not None:
                payload["max_tokens"] = self.max_tokens
            return "/v1/chat/completions", payload, {}
        headers = {"accept": "text/event-stream"} if self.kind == "sse" else {}
        return "/chat_stream", {"user_input": self.text}, headers

    def run(self) -> None:
        path, payload, headers = self._request()
        try:
            with httpx.Client(timeout=60) as client, client.stream(
                    "POST", self.url + path, json=payload, headers=headers) as r:
                self.status = r.status_code
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
        if self.kind == "openai-json":
            return self.status == 200 and "choices" in json.loads(self.body) or \
                self.status == 503 and json.loads(self.body)["error"]["type"] == "shutting_down"
        return self.body.endswith(SEED_DELIMITER)

    def finish_reason(self) -> str | None:
        """How the reply ended, as its final event says (None: it says nothing)."""
        if self.kind == "sse":
            done = [d for e, d in sse_events(self.body) if e == "done"]
            return done[-1]["finish_reason"] if done else None
        if self.kind == "openai":
            reasons = [d["choices"][0]["finish_reason"] for _, d in sse_events(self.body.replace("data: [DONE]", ""))
                       if d.get("choices") and d["choices"][0].get("finish_reason")]
            return reasons[-1] if reasons else None
        if self.kind == "openai-json":
            body = json.loads(self.body)
            return body["choices"][0]["finish_reason"] if self.status == 200 else body["error"]["type"]
        return "stop" if self.body.endswith(SEED_DELIMITER) and SEED_ERROR_MARKER not in self.body else None


def _open_streams(url: str, kinds: tuple[str, ...] = ("sse", "seed", "openai", "sse"), **request: Any
                  ) -> list[Client]:
    """Start one client per kind; return once each streamed one has text and every request is
    running or queued on the server (a reply that is not streamed shows only in ``/stats``)."""
    clients = [Client(url, kind, **request) for kind in kinds]
    for c in clients:
        c.start()
    for c in clients:
        if c.kind != "openai-json":
            assert c.first.wait(60) and c.error is None, c.error
    if "openai-json" in kinds:
        assert wait_for(lambda: _in_flight(url) >= len(clients), timeout=60)
    return clients


def _in_flight(url: str) -> int:
    snap = httpx.get(url + "/stats", timeout=5).json()
    return int(snap["running"]) + int(snap["queued"])


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


# -- graceful stop: drain, then end the rest (issue 16, item 2) ------------------------------------
SHORT_REPLY = "word " * 16  # 80 one-character tokens, 4 s: ends well within a drain, not before the races


def _race(url: str) -> list[httpx.Response]:
    """What a client that arrives during the stop gets, on each kind of route."""
    with httpx.Client(base_url=url, timeout=10) as client:
        return [client.post("/chat_stream", json={"user_input": "hi"}),
                client.post("/chat_stream", json={"user_input": "hi"}, headers={"accept": "text/event-stream"}),
                client.post("/v1/chat/completions", json={"model": "m", "messages": [
                    {"role": "user", "content": "hi"}]}),
                client.post("/v1/completions", json={"model": "m", "prompt": [1, 2, 3]}),
                client.get("/health")]


def _assert_shutting_down(responses: list[httpx.Response]) -> None:
    for r in responses:
        assert r.status_code == 503, (r.request.url, r.status_code, r.text)
        assert r.headers["retry-after"] == "1"
        body = r.json()
        kind = body.get("status") if r.request.url.path == "/health" else body["error"]["type"]
        assert kind == "shutting_down", body


def test_a_drain_lets_open_replies_finish_while_new_requests_get_503() -> None:
    cs = ChatStream(model=scripted_model(SHORT_REPLY, **SLOW), num_of_concurrent_executions=8, max_queue_size=8)
    with captured_logs() as logs:
        server = BackgroundServer(create_app(cs, close_on_shutdown=True), port=0, log_level="info").start(15)
        clients = _open_streams(server.url, ("sse", "seed", "openai", "openai-json"))
        reports = []
        stopper = threading.Thread(target=lambda: reports.append(server.stop(drain_s=30)))
        stopper.start()
        assert wait_for(lambda: not cs.service.accepting, timeout=5)
        _assert_shutting_down(_race(server.url))
        stopper.join(30)
        assert not stopper.is_alive()
        _assert_clean(clients, logs.getvalue())
    assert {c.kind: c.finish_reason() for c in clients} == {
        "sse": "stop", "seed": "stop", "openai": "stop", "openai-json": "stop"}
    assert seed_reply(clients[1].body).strip() == SHORT_REPLY.strip()  # the whole reply, not a cut one
    (report,) = reports
    assert (str(report.end), report.finished, report.cancelled, report.unfinished) == ("finished", 4, 0, 0)
    assert cs.load()["running"] == 0


def test_a_drain_that_times_out_ends_the_rest_with_their_final_event() -> None:
    """Replies longer than the drain are cancelled at its end: streams get a ``cancelled`` final
    event, a reply that is not streamed gets 503 ``shutting_down`` (retry elsewhere), not a 499."""
    import time

    cs = ChatStream(model=scripted_model(LONG_REPLY, **SLOW), num_of_concurrent_executions=8)
    with captured_logs() as logs:
        server = BackgroundServer(create_app(cs, close_on_shutdown=True), port=0, log_level="info").start(15)
        clients = _open_streams(server.url, ("sse", "seed", "openai", "openai-json"))
        t0 = time.monotonic()
        report = server.stop(drain_s=0.5)
        took = time.monotonic() - t0
        _assert_clean(clients, logs.getvalue())
    assert report is not None and str(report.end) == "timed out" and report.cancelled == 4, report
    assert took < 5, took  # the drain's bound, plus a decode step, not the 4 s the replies need
    assert {c.kind: c.finish_reason() for c in clients if c.kind != "seed"} == {
        "sse": "cancelled", "openai": None, "openai-json": "shutting_down"}  # OpenAI: [DONE], no reason


def test_cut_ends_a_drain_at_once() -> None:
    """What a second SIGTERM / Ctrl-C does: stop waiting for the open replies."""
    import time

    cs = ChatStream(model=scripted_model(LONG_REPLY, **SLOW), num_of_concurrent_executions=4)
    server = BackgroundServer(create_app(cs, close_on_shutdown=True), port=0).start(15)
    clients = _open_streams(server.url, ("sse", "openai"))
    t0 = time.monotonic()
    report = server.stop(drain_s=60, cut=lambda: time.monotonic() - t0 > 0.3)
    assert report is not None and str(report.end) == "cut short" and report.cancelled == 2
    assert time.monotonic() - t0 < 5
    _assert_clean(clients, "")


def test_a_seed_style_app_drains_and_fires_each_callback_once() -> None:
    """A user's own FastAPI app with the seed's callback, stopped with ``BackgroundServer(...,
    served=chat_stream.service).stop(drain_s=...)``: one callback per request, ``success`` for the
    replies that finished, and the racing request is refused with 503 (its callback fires too)."""
    cs = ChatStream(model=scripted_model(SHORT_REPLY, **SLOW), num_of_concurrent_executions=4)
    fired: list[str] = []
    app = FastAPI()

    @app.post("/chat_stream")
    async def stream_api(request: Request):
        return await cs.handle_chat_stream_request(request, callback=lambda req, message: fired.append(message))

    server = BackgroundServer(app, port=0, served=cs.service).start(15)
    clients = _open_streams(server.url, ("seed", "sse", "seed"))
    stopper = threading.Thread(target=lambda: server.stop(drain_s=30))
    stopper.start()
    assert wait_for(lambda: not cs.service.accepting, timeout=5)
    refused = httpx.post(server.url + "/chat_stream", json={"user_input": "late"}, timeout=10)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
    stopper.join(30)
    _assert_clean(clients, "")
    assert sorted(fired) == ["success"] * 3 + ["unknown_error_occurred"], fired
    cs.close()


_STOP_SIGNALS_SCRIPT = """
import signal
from chatstream_lab.server.shutdown import StopSignals

before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
with StopSignals() as signals:
    assert not signals.requested()
    signal.raise_signal(signal.SIGTERM)
    assert signals.requested() and not signals.repeated() and signals.first is signal.SIGTERM
    assert signals.wait() is signal.SIGTERM
    signal.raise_signal(signal.SIGINT)
    assert signals.repeated()
    # a third signal would get the default action: the process ends at once
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
assert {sig: signal.getsignal(sig) for sig in before} == before
print("ok")
"""


def test_stop_signals_record_the_first_cut_on_the_second_and_restore_the_handlers() -> None:
    """In a process of its own: between the second signal and the end of the block the default
    actions are back, so a stray signal there would end the test runner itself."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", _STOP_SIGNALS_SCRIPT], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stdout, proc.stderr)


def test_stop_signals_refuse_a_thread_other_than_the_main_one() -> None:
    from chatstream_lab.errors import ConfigError
    from chatstream_lab.server.shutdown import StopSignals

    errors: list[BaseException] = []

    def enter() -> None:
        try:
            with StopSignals():
                pass
        except ConfigError as exc:
            errors.append(exc)

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])


# -- the real CLI: SIGTERM and Ctrl-C with 8 open requests ---------------------------------------
CLI_KINDS = ("sse", "sse", "sse", "seed", "seed", "openai", "openai", "openai-json")
STORY = "Write a long story about a dragon who learns to bake bread."
# what the CLI may write to stderr: its own lines, uvicorn's INFO log lines, progress bars
NOT_A_LOG_LINE = ("Traceback", "Error", "ERROR", "Exception", "Task was destroyed", "WARNING")


def _serve_cli(*argv: str) -> tuple[subprocess.Popen[str], str]:
    """``chatstream-lab serve`` on a free port (default backend, bundled model) and its URL."""
    import os
    import re

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "chatstream_lab.cli", "serve", "--port", "0", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r" at (http://\S+)", line)
    if match is None:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"no URL printed: {line!r}\n{err[-3000:]}")
    return proc, match.group(1).split("#", 1)[0].rstrip("/")


def _health_status(url: str) -> int | None:
    try:
        return httpx.get(url + "/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def _stop_cli(proc: subprocess.Popen[str], *signals: int, timeout: float = 90) -> tuple[str, str]:
    import time

    try:
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.3)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _assert_only_log_lines(stderr: str) -> None:
    for line in stderr.splitlines():
        assert not any(bad in line for bad in NOT_A_LOG_LINE), stderr[-4000:]


@pytest.mark.real_model
@pytest.mark.timeout(420)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_cli_stops_gracefully_with_8_open_requests(sig: int) -> None:
    """``kill <pid>`` (what docker stop and systemd send) does what Ctrl-C does: requests that
    arrive get JSON 503 ``shutting_down``, the 8 open replies finish whole, exit status 0, nothing
    on stderr but log lines."""
    # a drain bound far above what 96 tokens take even on a loaded 2-core machine: the replies end whole
    proc, url = _serve_cli("--num-of-concurrent-executions", "8", "--max-queue-size", "8",
                           "--max-new-tokens", "96", "--shutdown-timeout", "300")
    try:
        clients = _open_streams(url, CLI_KINDS, text=STORY)
        proc.send_signal(sig)
        assert wait_for(lambda: _health_status(url) == 503, timeout=10)
        racing = _race(url)  # the replies are still streaming: the server is draining, not gone
        out, err = _stop_cli(proc, timeout=330)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _assert_shutting_down(racing)
    for c in clients:
        c.join(30)
        assert c.ended_with_a_final_event(), (c.kind, c.status, c.error, c.body[-300:])
        if c.kind != "seed":  # the seed framing has no finish reason; its body ended with a record
            assert c.finish_reason() in ("stop", "length"), (c.kind, c.body[-300:])
    assert proc.returncode == 0, err[-3000:]
    _assert_only_log_lines(err)
    assert f"{signal.Signals(sig).name}: stopping" in err and "Stopped: open replies finished" in err, err


@pytest.mark.real_model
@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["timeout", "second signal"])
def test_the_cli_ends_replies_longer_than_the_shutdown_timeout_with_their_final_event(how: str) -> None:
    """``--shutdown-timeout`` bounds the stop; a second signal cuts it short. Either way each open
    reply ends with its final event (``cancelled``) and the exit status is 0."""
    import time

    timeout = "0.5" if how == "timeout" else "600"
    proc, url = _serve_cli("--num-of-concurrent-executions", "4", "--max-new-tokens", "2000",
                           "--shutdown-timeout", timeout)
    try:
        clients = _open_streams(url, ("sse", "openai", "seed", "openai-json"), text=STORY)
        t0 = time.monotonic()
        out, err = _stop_cli(proc, *([signal.SIGTERM] if how == "timeout" else [signal.SIGTERM, signal.SIGTERM]))
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert took < 15, took
    for c in clients:
        c.join(30)
        assert c.ended_with_a_final_event(), (c.kind, c.status, c.error, c.body[-300:])
    # OpenAI's stream has no "cancelled" reason: it ends with [DONE] and none
    assert [c.finish_reason() for c in clients if c.kind != "seed"] == ["cancelled", None, "shutting_down"]
    _assert_only_log_lines(err)
    assert ("timed out" if how == "timeout" else "cut short") in err, err


SEED_STYLE_MODULE = textwrap.dedent("""
    import contextlib

    from fastapi import FastAPI, Request

    from chatstream_lab.models import scripted_model
    from chatstream_lab.server import ChatStream

    chat_stream = ChatStream(model=scripted_model("word " * 400, token_delay=0.05), num_of_concurrent_executions=4)


    @contextlib.asynccontextmanager
    async def lifespan(app):
        await chat_stream.start_queue_worker()
        yield
        chat_stream.close()


    app = FastAPI(lifespan=lifespan)
    chat_stream.append_middlewares(app)


    def callback(request, message):
        print("callback:", message, flush=True)


    @app.post("/chat_stream")
    async def stream_api(request: Request):
        return await chat_stream.handle_chat_stream_request(request, callback=callback)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_seed_style_app_under_plain_uvicorn_stops_cleanly(tmp_path, sig: int) -> None:
    """The seed's own app shape (a FastAPI app of yours calling ``handle_chat_stream_request`` with
    a callback) under ``uvicorn served:app --timeout-graceful-shutdown 1``: on SIGTERM as on
    Ctrl-C, uvicorn stops accepting, lets the open replies run for its timeout, then cancels them;
    each stream ends with its final event and each callback fires once. Exit status: 0 after
    Ctrl-C; after SIGTERM uvicorn re-raises the signal once it has shut down (status -15)."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "served.py").write_text(SEED_STYLE_MODULE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "served:app", "--port", str(port),
                             "--timeout-graceful-shutdown", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _up_seed(url), timeout=60)
        clients = _open_streams(url, ("sse", "seed", "seed"))
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_clean(clients, out)
    # the probe that found the server up (a 400) made one callback too
    assert out.count("callback:") == len(clients) + 1, out[-3000:]
    assert proc.returncode == (0 if sig == signal.SIGINT else -signal.SIGTERM), (proc.returncode, out[-3000:])


def _up_seed(url: str) -> bool:
    try:
        return httpx.post(url + "/chat_stream", content=b"not json", timeout=1).status_code == 400
    except httpx.HTTPError:
        return False


def test_an_endpoint_stopped_with_a_drain_lets_its_replies_finish_and_the_lab_goes_on() -> None:
    from chatstream_lab import Lab

    lab = Lab(scripted_model(SHORT_REPLY, **SLOW), num_of_concurrent_executions=4)
    try:
        ep = lab.serve(port=0)
        clients = _open_streams(ep.url, ("sse", "openai"))
        ep.stop(drain_s=30)
        _assert_clean(clients, "")
        assert [c.finish_reason() for c in clients] == ["stop", "stop"]
        assert lab.generate("still here?") == SHORT_REPLY  # the Lab's own requests are not refused
    finally:
        lab.close()
