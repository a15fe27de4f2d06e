"""Time limits for slow clients: a request head that never completes, a body that trickles.

uvicorn times out only an idle keep-alive connection (``timeout_keep_alive``); a client that
sends its headers one byte at a time, or its headers and then a body that never ends, holds a
connection (and a handler waiting in ``request.body()``) forever. Two bounds, one per layer:

* :class:`H11WithHeaderTimeout` (the protocol :class:`~chatstream_lab.server.BackgroundServer`
  runs; for plain uvicorn: ``uvicorn module:app --http chatstream_lab.server.timeouts:H11WithHeaderTimeout``):
  the request head must be complete within ``header_timeout_s`` of the connection opening or of the
  previous response ending, or the connection is closed.
* :class:`BodyTimeoutMiddleware` (installed by :func:`~chatstream_lab.server.create_app`, so it
  works under any server): the whole body must arrive within ``body_timeout_s`` of the request
  start, or the handler's read fails with :class:`BodyTimeout`, answered as a JSON 408 with
  ``Connection: close``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ConfigError
from .errors import BadRequest

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0


class BodyTimeout(BadRequest):
    """The request body did not arrive in time (HTTP 408)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request body did not arrive within {seconds:g} s", status=408)


class BodyTimeoutMiddleware:
    """Bound the time a request's body may take to arrive (pure ASGI; see the module doc).

    Only reads of the body are timed: once it is complete, ``receive`` (a streaming response
    waiting for ``http.disconnect``) is passed through untouched.
    """

    def __init__(self, app: ASGIApp, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        if not body_timeout_s > 0:
            raise ConfigError(f"body_timeout_s must be > 0, got {body_timeout_s!r}", name="body_timeout_s")
        self.app = app
        self.body_timeout_s = float(body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        state = {"body_done": False, "timed_out": False}

        async def timed_receive() -> Message:
            if state["body_done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                state["timed_out"] = True
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def closing_send(message: Message) -> None:
            if state["timed_out"] and message["type"] == "http.response.start":
                # the rest of the body may still come: do not keep reading it on this connection
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, timed_receive, closing_send)


class H11WithHeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is not complete within
    :attr:`header_timeout_s` (of the connection opening, or of the previous response ending)."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_late)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        waiting_for_head = self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete)
        if waiting_for_head and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(header_timeout_s: float) -> type[H11WithHeaderTimeout]:
    """:class:`H11WithHeaderTimeout` with its own ``header_timeout_s`` (for ``uvicorn.Config(http=...)``)."""
    if not header_timeout_s > 0:
        raise ConfigError(f"header_timeout_s must be > 0, got {header_timeout_s!r}", name="header_timeout_s")
    return type("H11WithHeaderTimeout", (H11WithHeaderTimeout,), {"header_timeout_s": float(header_timeout_s)})
