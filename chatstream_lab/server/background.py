"""Serve an ASGI app from a background thread (its own event loop), e.g. inside a Jupyter kernel.

:class:`BackgroundServer` binds the socket itself in :meth:`~BackgroundServer.start`, so a busy
port fails at once with :class:`~chatstream_lab.errors.ServerStartError` naming the port and the
fix, and port 0 gives a free port whose number is read back. uvicorn runs on a new thread with
``asyncio.run``-style loop of its own; its signal handling is disabled (a kernel's SIGINT must
stay the kernel's). ``stop()`` first tells the app it is stopping (``on_stop``, by default the
``app.state.begin_shutdown`` that :func:`~chatstream_lab.server.create_app` sets: refuse new
generations and cancel the open ones, so every stream ends with its final event at once instead of
being cut by uvicorn's graceful timeout), then asks uvicorn to exit, lets the tasks still on its
loop finish, joins the thread and closes the socket, so the same object (or a new one on the same
port) can start again. ``stop(drain_s=...)`` lets the open replies finish first (bounded) while
new requests get 503 ``shutting_down`` (``server/shutdown.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from ..errors import ServerStartError
from .shutdown import Drainable, DrainReport, StopSignals, drain
from .timeouts import DEFAULT_HEADER_TIMEOUT_S, header_timeout_protocol

log = logging.getLogger(__name__)


class _QuietServer(uvicorn.Server):
    """uvicorn.Server that never touches signal handlers (it is not on the main thread anyway)."""

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # newer uvicorn
        yield


class BackgroundServer:
    """uvicorn on its own thread and loop; start/stop/start again in one process.

    Args:
        app: any ASGI app.
        host: interface to bind; 127.0.0.1 unless you mean to share it on the network.
        port: 0 picks a free port (read back as :attr:`port`).
        log_level: uvicorn's log level ("warning" keeps a notebook quiet).
        graceful_timeout_s: how long ``stop()`` lets open requests finish before uvicorn cancels
            them (a backstop: ``on_stop`` normally ends every stream first).
        on_stop: called first in ``stop()`` to end the app's open streams; default
            ``app.state.begin_shutdown`` when the app has one, else ``served.detach``.
        header_timeout_s: a connection whose request head is not complete this long after it
            opened (or after its previous response) is closed (slow-header clients).
        served: what ``stop(drain_s=...)`` drains (a :class:`~chatstream_lab.service.Service`,
            e.g. ``chat_stream.service`` for a seed-style app of your own); default
            ``app.state.service``, which ``create_app`` sets.
        uvicorn_options: passed to ``uvicorn.Config`` (e.g. ``timeout_keep_alive``, ``http``).

    Example::

        server = BackgroundServer(create_app(...), port=0).start()
        print(server.url)
        server.stop()
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning",
                 graceful_timeout_s: float = 3.0, on_stop: Callable[[], object] | None = None,
                 header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S, served: Drainable | None = None,
                 **uvicorn_options: Any) -> None:
        self.app = app
        self.on_stop = on_stop
        self.served = served
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.log_level = log_level
        self.graceful_timeout_s = graceful_timeout_s
        self.uvicorn_options = {"http": header_timeout_protocol(header_timeout_s), **uvicorn_options}
        self._server: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerStartError("the server is not running; call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Bind, start uvicorn on a thread, wait until it accepts connections (idempotent).

        Raises:
            ServerStartError: the port is busy, the app's startup failed, or ``timeout`` passed.
        """
        if self.running:
            return self
        sock = self._bind()
        self.port = sock.getsockname()[1]
        graceful: Any = self.graceful_timeout_s  # uvicorn annotates int; a float works
        config = uvicorn.Config(self.app, log_level=self.log_level, lifespan="auto",
                                timeout_graceful_shutdown=graceful, **self.uvicorn_options)
        server = _QuietServer(config)
        self._server, self._socket, self._error = server, sock, None
        self._thread = threading.Thread(target=self._run, args=(server, sock),
                                        name=f"chatstream-server-{self.port}", daemon=True)
        self._thread.start()
        ready = threading.Event()
        deadline_step = 0.01
        waited = 0.0
        while waited < timeout:
            if server.started:
                ready.set()
                break
            if not self._thread.is_alive():
                break
            self._thread.join(deadline_step)
            waited += deadline_step
        if not ready.is_set():
            error = self._error
            self.stop()
            if isinstance(error, ServerStartError):
                raise error
            reason = f": {error!r}" if error else f" within {timeout} s"
            raise ServerStartError(f"the server on {self.host}:{self.port} failed to start{reason}") \
                from error
        return self

    def stop(self, timeout: float = 10.0, *, drain_s: float = 0.0,
             cut: Callable[[], bool] | None = None) -> DrainReport | None:
        """End the app's open streams, ask uvicorn to exit, join its thread and free the port
        (idempotent).

        ``drain_s`` > 0 stops gracefully first (:func:`~chatstream_lab.server.shutdown.drain`):
        new requests get 503 ``shutting_down`` while the open replies may finish for up to
        ``drain_s`` seconds (or until ``cut()`` is true); the rest are then cancelled, each
        ending with its final event. Returns that drain's report (None without a drain, or for an
        app that has no ``state.service``: uvicorn's graceful timeout is then ``drain_s``).
        """
        server, thread = self._server, self._thread
        report: DrainReport | None = None
        if server is not None and thread is not None and thread.is_alive():
            served = self._drainable()
            if drain_s > 0 and served is not None:
                report = drain(served, drain_s, cut=cut or (lambda: False))
            elif drain_s > 0:
                server.config.timeout_graceful_shutdown = drain_s  # type: ignore[assignment]
            self._begin_shutdown()
        if server is not None:
            server.should_exit = True
        if thread is not None and thread.is_alive():
            thread.join(timeout)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
        self._server = self._thread = self._socket = None
        return report

    def run_until_signalled(self, shutdown_timeout_s: float = 10.0, *,
                            announce: Callable[[str], object] | None = None) -> DrainReport | None:
        """Block until SIGINT or SIGTERM, then stop gracefully: ``stop(drain_s=shutdown_timeout_s)``,
        a second signal cutting the drain short, a third ending the process. For a script's main
        thread (the CLI calls it; so can a seed-style app of your own, with ``served=``), never a
        kernel's. ``announce`` gets one line when the stop begins. Returns the drain's report.
        """
        with StopSignals() as signals:
            sig = signals.wait()
            if announce is not None:
                served = self._drainable()
                count = len(served.open_streams()) if served is not None else 0
                announce(f"{sig.name}: stopping; new requests get 503. Letting {count} open "
                         f"repl{'y' if count == 1 else 'ies'} finish (up to {shutdown_timeout_s:g} s; "
                         "send it again to cancel them now)…")
            return self.stop(drain_s=shutdown_timeout_s, cut=signals.repeated)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self.url}" if self.running else "stopped"
        return f"<BackgroundServer {state}>"

    # -- internals ------------------------------------------------------------------------
    def _drainable(self) -> Drainable | None:
        """``served``, else the app's Service (``create_app`` sets ``app.state.service``), if any."""
        if self.served is not None:
            return self.served
        served = getattr(getattr(self.app, "state", None), "service", None)
        return served if callable(getattr(served, "stop_accepting", None)) else None

    def _begin_shutdown(self) -> None:
        hook = self.on_stop or getattr(getattr(self.app, "state", None), "begin_shutdown", None) or \
            getattr(self.served, "detach", None)
        if callable(hook):
            try:
                hook()
            except Exception:
                log.exception("the on_stop hook raised; stopping anyway")

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # accepted connections inherit it. Without it every response waits ~40 ms (Nagle + delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only, never a live listener
        try:
            sock.bind((self.host, self.requested_port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ServerStartError(
                    f"port {self.requested_port} on {self.host} is already in use (is a previous server "
                    f"still running? stop() it, or pass port=0 to pick a free port)") from exc
            raise ServerStartError(f"cannot bind {self.host}:{self.requested_port}: {exc}") from exc
        sock.setblocking(False)
        return sock

    def _run(self, server: _QuietServer, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # SystemExit from uvicorn's startup failure included
            self._error = exc
        finally:
            with contextlib.suppress(Exception):
                _finish_pending_tasks(loop)
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _finish_pending_tasks(loop: asyncio.AbstractEventLoop, grace_s: float = 5.0) -> None:
    """Let the tasks uvicorn left on its loop (request tasks it cancelled at its graceful timeout,
    which do not wait for them) end before the loop closes, as ``asyncio.run`` does: no "Task
    was destroyed but it is pending!", and a cancelled stream still writes its final event."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    _, still = loop.run_until_complete(asyncio.wait(pending, timeout=grace_s))
    for task in still:
        task.cancel()
    if still:
        loop.run_until_complete(asyncio.wait(still, timeout=grace_s))
    for task in pending:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("a server task failed while stopping", exc_info=task.exception())
