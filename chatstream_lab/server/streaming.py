"""HTTP transport for one :class:`~chatstream_lab.engine.stream.RequestStream`.

:class:`EventStreamResponse` is an ASGI response that writes encoded events and, concurrently,
listens on the ASGI ``receive`` channel for ``http.disconnect``. On a disconnect (or a failed
``send``) it calls ``stream.cancel()`` and keeps draining the stream until the engine's own
``Finished(CANCELLED)`` arrives: the slot is released by the engine retiring the request, never
by the HTTP layer. A request still queued when its client leaves is withdrawn by the engine and
never runs.

Invariant: ``on_done`` is awaited exactly once per response, on every path (success, disconnect
before or during streaming, error, server shutdown), with the :class:`Outcome` and the final
event (None if it never came).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ..types import Delta, Finished, FinishReason, StreamEvent

log = logging.getLogger(__name__)


class Outcome(str, enum.Enum):
    """How a streamed response ended; the values are the seed's callback messages."""

    SUCCESS = "success"
    CLIENT_DISCONNECTED_WHILE_STREAMING = "client_disconnected_while_streaming"
    CLIENT_DISCONNECTED_BEFORE_STREAMING = "client_disconnected_before_streaming"
    UNKNOWN_ERROR_OCCURRED = "unknown_error_occurred"

    def __str__(self) -> str:
        return self.value


class Encoder(Protocol):
    def encode(self, event: StreamEvent) -> bytes | None: ...


class CancellableStream(Protocol):
    def cancel(self) -> None: ...
    def __aiter__(self) -> Any: ...


OnDone = Callable[[Outcome, "Finished | None"], Awaitable[None]]

# how long a response waits for the engine's Finished after cancelling, when its own task is
# being torn down (server shutdown); normally the engine answers within one decode step
_DRAIN_TIMEOUT_S = 30.0


class EventStreamResponse(Response):
    """Streams ``stream`` through ``encoder``; cancels generation when the client leaves.

    Args:
        stream: the request's event stream (``async for`` + ``cancel()``).
        encoder: event -> bytes (or None to skip the event).
        on_done: awaited once at the end with the outcome and the final event.
        media_type, headers, status_code: of the HTTP response.
        closing: optional bytes written after the last event (e.g. ``data: [DONE]``).
    """

    def __init__(self, stream: CancellableStream, encoder: Encoder, *, on_done: OnDone | None = None,
                 media_type: str = "text/plain; charset=utf-8", headers: Mapping[str, str] | None = None,
                 status_code: int = 200, closing: bytes | None = None,
                 on_abandon: Callable[[], object] | None = None) -> None:
        self.stream = stream
        self.encoder = encoder
        self.on_done = on_done
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **dict(headers or {})})
        self.closing = closing
        self._called = False
        # Safety net: a response that is dropped without ever being sent (an exception in the
        # user's endpoint after our call) must not keep a request queued forever.
        self._finalizer = weakref.finalize(self, _abandon, stream, on_abandon)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._called:
            raise RuntimeError("an EventStreamResponse can be sent only once")
        self._called = True
        self._finalizer.detach()
        disconnected = asyncio.Event()
        watcher = asyncio.create_task(self._watch_disconnect(receive, disconnected))
        saw_text = False
        finished: Finished | None = None
        failed = False
        try:
            try:
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": self.raw_headers})
            except OSError:
                self._client_left(disconnected)
            async for event in self.stream:
                if isinstance(event, Finished):
                    finished = event
                elif isinstance(event, Delta) and event.text and not disconnected.is_set():
                    saw_text = True
                chunk = self.encoder.encode(event)
                if chunk and not disconnected.is_set():
                    await self._send_body(send, chunk, disconnected)
            if not disconnected.is_set():
                if self.closing:
                    await self._send_body(send, self.closing, disconnected)
                await self._send_body(send, b"", disconnected, more=False)
        except asyncio.CancelledError:
            # the server tears this task down (shutdown): stop generating, wait for the retire
            self.stream.cancel()
            finished = finished or await _drain(self.stream)
            disconnected.set()
            raise
        except Exception:
            failed = True
            log.exception("error while streaming a response")
            self.stream.cancel()
            finished = finished or await _drain(self.stream)
        finally:
            watcher.cancel()
            self.stream.cancel()  # no-op once finished
            outcome = _outcome(disconnected.is_set(), saw_text, finished, failed)
            if self.on_done is not None:
                try:
                    await self.on_done(outcome, finished)
                except Exception:
                    log.exception("on_done hook raised")
        if self.background is not None:
            await self.background()

    async def _send_body(self, send: Send, chunk: bytes, disconnected: asyncio.Event,
                         more: bool = True) -> None:
        if disconnected.is_set():
            return
        try:
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
        except OSError:  # uvicorn's ClientDisconnected; starlette's ClientDisconnect is an OSError too
            self._client_left(disconnected)

    def _client_left(self, disconnected: asyncio.Event) -> None:
        disconnected.set()
        self.stream.cancel()

    async def _watch_disconnect(self, receive: Receive, disconnected: asyncio.Event) -> None:
        await watch_disconnect(receive, lambda: self._client_left(disconnected))


async def watch_disconnect(receive: Receive, on_disconnect: Callable[[], None]) -> None:
    """Call ``on_disconnect`` when the client goes away (the one disconnect watcher, shared by
    streaming and non-streaming responses)."""
    with contextlib.suppress(Exception):
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                on_disconnect()
                return


async def collect_final(stream: CancellableStream, receive: Receive,
                        on_delta: Callable[[Delta], object] | None = None) -> Finished | None:
    """Wait for the final event of a response that is not streamed, cancelling the generation
    if the client goes away meanwhile (same watcher as :class:`EventStreamResponse`);
    ``on_delta`` sees every delta on the way (to collect logprobs)."""
    watcher = asyncio.ensure_future(watch_disconnect(receive, stream.cancel))
    try:
        async for event in stream:
            if isinstance(event, Finished):
                return event
            if on_delta is not None and isinstance(event, Delta):
                on_delta(event)
        return None
    finally:
        watcher.cancel()
        stream.cancel()


def _outcome(disconnected: bool, saw_text: bool, finished: Finished | None, failed: bool) -> Outcome:
    if failed:
        return Outcome.UNKNOWN_ERROR_OCCURRED
    if disconnected:
        return (Outcome.CLIENT_DISCONNECTED_WHILE_STREAMING if saw_text
                else Outcome.CLIENT_DISCONNECTED_BEFORE_STREAMING)
    if finished is None or finished.finish_reason in (FinishReason.ERROR, FinishReason.CANCELLED):
        return Outcome.UNKNOWN_ERROR_OCCURRED
    return Outcome.SUCCESS


async def _drain(stream: CancellableStream) -> Finished | None:
    """Read the remaining events until Finished (bounded), shielded from our own cancellation."""

    async def read() -> Finished | None:
        async for event in stream:
            if isinstance(event, Finished):
                return event
        return None

    task = asyncio.ensure_future(read())
    try:
        return await asyncio.wait_for(asyncio.shield(task), _DRAIN_TIMEOUT_S)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        task.cancel()
        return None


def _abandon(stream: CancellableStream, hook: Callable[[], object] | None) -> None:
    stream.cancel()
    if hook is not None:
        try:
            hook()
        except Exception:
            log.exception("on_abandon hook raised")
