"""``Endpoint``: the handle ``Lab.serve()`` returns for a server running inside the kernel.

It wires the Lab's engine, stats recorder and frozen configuration into the server package's
``ChatStream`` facade and ``create_app``, and runs it with ``BackgroundServer`` (uvicorn on its own
thread and loop). HTTP clients and notebook previews therefore share one engine, one admission
gate and one recorder: ``/stats``, ``ep.stats()`` and the dashboard read the same snapshot, which
carries the served configuration's id.

``stop()`` shuts uvicorn down, joins its thread and frees the port; it is idempotent. A busy port
fails at once with :class:`~chatstream_lab.errors.ServerStartError` (naming the Lab's endpoint
that holds it, when it is one of ours).
"""

from __future__ import annotations

import threading
import weakref
from html import escape
from typing import TYPE_CHECKING, Any

from ..errors import ServerStartError
from ..stats import StatsSnapshot
from .loadtest import LoadTest, LoadTestResult, run_load_test

if TYPE_CHECKING:  # pragma: no cover
    from ..lab import Lab, LabConfig
    from .dashboard import Dashboard

_LIVE: weakref.WeakSet[Endpoint] = weakref.WeakSet()  # running endpoints of this process, for hints only
_LIVE_LOCK = threading.Lock()


class EndpointEngine:
    """The Lab's engine as one endpoint sees it: same engine, same gate, but the streams this
    endpoint submitted are remembered, so ``stop()`` can cancel them (their slots are freed and the
    open HTTP responses end) before uvicorn is asked to exit. After ``close()`` it accepts nothing."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def model(self) -> Any:
        return self._engine.model

    @property
    def gate(self) -> Any:
        return self._engine.gate

    def start(self) -> EndpointEngine:
        self._engine.start()
        return self

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._closed:
                from ..engine import EngineClosed

                raise EngineClosed("this endpoint was stopped")
            stream = self._engine.submit(*args, **kwargs)
            self._streams.add(stream)
        return stream

    def open_streams(self) -> list[Any]:
        with self._lock:
            return [s for s in self._streams if not s.done]

    def close(self) -> None:
        """Refuse new requests and cancel this endpoint's open ones (the Lab's engine keeps running)."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        for stream in streams:
            stream.cancel()


def make_chat_stream(lab: Lab, config: LabConfig, engine: Any = None) -> Any:
    """The server's ChatStream facade over the Lab's engine, recorder and ``config``."""
    from ..server.chatstream import ChatStream

    return ChatStream(model=lab.model, template=config.template, engine=engine or lab.engine,
                      recorder=lab.recorder, num_of_concurrent_executions=lab.num_of_concurrent_executions,
                      max_queue_size=lab.max_queue_size, params=config.params, config_id=config.config_id)


def _holder_of(host: str, port: int) -> Endpoint | None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for ep in live:
        if ep.running and ep.port == port and ep.host in (host, "0.0.0.0", "::"):
            return ep
    return None


class Endpoint:
    """A running HTTP endpoint serving one Lab configuration. See :meth:`Lab.serve`."""

    def __init__(self, lab: Lab, config: LabConfig, chat_stream: Any, server: Any, token: str | None,
                 engine: EndpointEngine) -> None:
        self.lab = lab
        self.engine = engine
        self.config = config
        self.chat_stream = chat_stream
        self.server = server
        self.token = token
        self.host: str = server.host
        self.port: int = server.port
        self._url = server.url
        self._stopped = False

    @classmethod
    def start(cls, lab: Lab, config: LabConfig, *, host: str = "127.0.0.1", port: int = 0,
              token: str | None = None, timeout: float = 10.0, **app_options: Any) -> Endpoint:
        from ..server.app import create_app
        from ..server.background import BackgroundServer

        holder = _holder_of(host, port) if port else None
        if holder is not None:
            raise ServerStartError(f"port {port} is in use by another Lab's endpoint in this kernel "
                                   f"({holder.url}, config {holder.config.config_id}); call its stop(), or "
                                   "pass port=None to pick a free port")
        engine = EndpointEngine(lab.engine)
        chat_stream = make_chat_stream(lab, config, engine)
        app = create_app(chat_stream, token=token, **app_options)
        server = BackgroundServer(app, host=host, port=port)
        server.start(timeout)
        ep = cls(lab, config, chat_stream, server, token, engine)
        with _LIVE_LOCK:
            _LIVE.add(ep)
        return ep

    # -- state -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL (``/v1`` for OpenAI clients, ``/`` for the chat page, ``/stats``)."""
        return self._url

    @property
    def running(self) -> bool:
        return not self._stopped and self.server.running

    @property
    def config_id(self) -> str:
        return self.config.config_id

    def stats(self) -> StatsSnapshot:
        """The same snapshot ``GET /stats`` returns."""
        return self.lab.recorder.snapshot()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: open streams get a short grace period, then are cancelled; the thread is
        joined and the port freed. Idempotent. The Lab's engine keeps running for previews."""
        self._stopped = True
        self.engine.close()  # cancel this endpoint's generations first, so responses end promptly
        self.server.stop(timeout)
        self.chat_stream.close()
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if self.lab._endpoint is self:
            self.lab._endpoint = None

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- notebook tools -----------------------------------------------------------------------------
    def dashboard(self, interval: float = 1.0, **options: Any) -> Dashboard:
        """A live plot of this endpoint's stats (display it: last expression of a cell, or
        ``display(dash)``); it redraws about once a second until the endpoint stops."""
        from .dashboard import Dashboard

        return Dashboard(self.lab.recorder.snapshot, interval=interval, alive=lambda: self.running,
                         title=self.url, **options)

    def load_test(self, clients: int = 8, requests: int = 32, max_new_tokens: int = 32,
                  duration_limit: float = 60.0, **options: Any) -> LoadTest:
        """Start a bounded loopback load test on its own thread; returns at once.

        ``await`` it (or ``.result()``) for the :class:`LoadTestResult`; displayed, it shows its
        table and plot when done. Options: ``message``, ``temperature``.
        """
        return LoadTest(self.url, clients=clients, requests=requests, max_new_tokens=max_new_tokens,
                        duration_limit=duration_limit, token=self.token, **options).start()

    async def aload_test(self, clients: int = 8, requests: int = 32, max_new_tokens: int = 32,
                         duration_limit: float = 60.0, **options: Any) -> LoadTestResult:
        """The load test on the current loop (``await ep.aload_test(...)`` in a cell)."""
        return await run_load_test(self.url, clients=clients, requests=requests,
                                   max_new_tokens=max_new_tokens, duration_limit=duration_limit,
                                   token=self.token, **options)

    def run_load_test(self, clients: int = 8, requests: int = 32, max_new_tokens: int = 32,
                      duration_limit: float = 60.0, **options: Any) -> LoadTestResult:
        """The load test, blocking until done. Inside a kernel the loop keeps running meanwhile
        (nest-asyncio, see ``_loop.run_sync``), so a dashboard keeps redrawing."""
        from ._loop import run_sync

        return run_sync(self.aload_test(clients, requests, max_new_tokens, duration_limit, **options))

    # -- display ----------------------------------------------------------------------------------
    def __repr__(self) -> str:
        state = f"serving {self.url}" if self.running else "stopped"
        return f"<Endpoint {state} config_id={self.config_id}>"

    def _repr_html_(self) -> str:
        if not self.running:
            return f"<div>endpoint <code>{escape(self._url)}</code> <b>stopped</b></div>"
        snap = self.stats()
        u = escape(self.url)
        links = " · ".join(f"<a href='{u}{p}' target='_blank'>{escape(label)}</a>" for p, label in
                           (("/", "chat page"), ("/stats", "/stats"), ("/metrics", "/metrics"),
                            ("/v1/models", "/v1 (OpenAI)")))
        auth = " · bearer token required" if self.token else ""
        return (f"<div><b>serving</b> <a href='{u}' target='_blank'>{u}</a>{auth}<br>"
                f"<small>model {escape(self.lab.model.name)} · template {escape(self.config.template_name)}"
                f" · config <code>{self.config_id}</code> · running {snap.running}/"
                f"{self.lab.num_of_concurrent_executions} · queued {snap.queued}/{self.lab.max_queue_size}"
                f" · completed {snap.completed} · rejected {snap.rejected}</small><br>"
                f"<small>{links}</small></div>")
