"""``Endpoint``: the handle ``Lab.serve()`` returns for a server running inside the kernel.

It serves a :class:`~chatstream_lab.service.Service` view (the Lab's generator, gate and recorder
under the frozen configuration being served) with ``create_app`` on a ``BackgroundServer`` (uvicorn
on its own thread and loop). HTTP clients and notebook previews therefore share one engine, one
admission gate and one recorder: ``/stats``, ``ep.stats()`` and the dashboard read the same
snapshot, labelled with the served configuration's id.

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
from .labels import template_label
from .loadtest import LoadTest, LoadTestResult, run_load_test

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ServeConfig
    from ..service import Service
    from .dashboard import Dashboard

_LIVE: weakref.WeakSet[Endpoint] = weakref.WeakSet()  # running endpoints of this process, for hints only
_LIVE_LOCK = threading.Lock()


def _holder_of(host: str, port: int) -> Endpoint | None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for ep in live:
        if ep.running and ep.port == port and ep.host in (host, "0.0.0.0", "::"):
            return ep
    return None


class Endpoint:
    """A running HTTP endpoint serving one Lab configuration. See :meth:`Lab.serve`."""

    def __init__(self, service: Service, chat_stream: Any, server: Any, token: str | None) -> None:
        self.service = service
        self.config: ServeConfig = service.config
        self.chat_stream = chat_stream
        self.server = server
        self.token = token
        self.host: str = server.host
        self.port: int = server.port
        self._url = server.url
        self._stopped = False

    @classmethod
    def start(cls, service: Service, *, host: str = "127.0.0.1", port: int = 0,
              token: str | None = None, timeout: float = 10.0, **app_options: Any) -> Endpoint:
        """Serve ``service`` (a tracked view: ``stop()`` ends the streams it served)."""
        from ..server.app import create_app
        from ..server.background import BackgroundServer
        from ..server.chatstream import ChatStream

        holder = _holder_of(host, port) if port else None
        if holder is not None:
            raise ServerStartError(f"port {port} is in use by another Lab's endpoint in this kernel "
                                   f"({holder.url}, config {holder.config.config_id}); call its stop(), or "
                                   "pass port=None to pick a free port")
        chat_stream = ChatStream(service=service)
        app = create_app(chat_stream, token=token, **app_options)
        server = BackgroundServer(app, host=host, port=port)
        server.start(timeout)
        ep = cls(service, chat_stream, server, token)
        with _LIVE_LOCK:
            _LIVE.add(ep)
        return ep

    # -- state -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL (``/v1`` for OpenAI clients, ``/`` for the chat page, ``/stats``)."""
        return self._url

    @property
    def page_url(self) -> str:
        """The chat page, with the token (if any) in the URL's fragment: never sent to the server."""
        from ..server.auth import page_url

        return page_url(self._url, self.token)

    @property
    def running(self) -> bool:
        return not self._stopped and self.server.running

    @property
    def config_id(self) -> str:
        return self.config.config_id

    def stats(self) -> StatsSnapshot:
        """The same snapshot ``GET /stats`` returns."""
        return self.service.stats()

    def follow(self, config: ServeConfig, notice: str) -> int:
        """Serve ``config`` from now on (the Lab switched models): same URL, same numbers; the
        sessions' conversations are cleared, each user told ``notice``, only if the chat template
        changed. Returns how many were cleared."""
        self.service.config = config
        self.config = config
        cleared: int = self.chat_stream.follow_template(notice)
        return cleared

    def stop(self, timeout: float = 10.0, *, drain_s: float = 0.0) -> None:
        """Stop the server: this endpoint's open streams are cancelled (their responses end with a
        final event), the thread is joined and the port freed. Idempotent. The Lab's engine keeps
        running for previews.

        ``drain_s`` > 0: stop gracefully instead: new requests get 503 ``shutting_down`` while
        the open replies may finish for up to ``drain_s`` seconds; the rest are then cancelled.
        """
        self._stopped = True
        if drain_s > 0:
            self.server.stop(timeout, drain_s=drain_s)
        else:
            self.service.detach()  # cancel this endpoint's generations first, so responses end promptly
            self.server.stop(timeout)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- notebook tools -----------------------------------------------------------------------------
    def dashboard(self, interval: float = 1.0, **options: Any) -> Dashboard:
        """A live plot of this endpoint's stats (display it: last expression of a cell, or
        ``display(dash)``); it redraws about once a second until the endpoint stops."""
        from .dashboard import Dashboard
        from .display import model_label

        return Dashboard(self.service.stats, interval=interval, alive=lambda: self.running,
                         title=f"{self.url} · {model_label(self.service.model)} ·", **options)

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
        links = " · ".join([f"<a href='{escape(self.page_url)}' target='_blank'>chat page</a>"] + [
            f"<a href='{u}{p}' target='_blank'>{escape(label)}</a>" for p, label in
            (("/stats", "/stats"), ("/metrics", "/metrics"), ("/v1/models", "/v1 (OpenAI)"))])
        auth = " · bearer token required" if self.token else ""
        return (f"<div><b>serving</b> <a href='{u}' target='_blank'>{u}</a>{auth}<br>"
                f"<small>model {escape(self.service.model.name)} · template {template_label(self.config).html()}"
                f" · config <code>{self.config_id}</code> · running {snap.running}/"
                f"{self.service.limits.num_of_concurrent_executions} · queued {snap.queued}/"
                f"{self.service.limits.max_queue_size}"
                f" · completed {snap.completed} · rejected {snap.rejected}</small><br>"
                f"<small>{links}</small></div>")

