"""HTTP transport for one :class:`~chatstream_lab.engine.core.stream.RequestStream`.

:class:`EventStreamResponse` is an ASGI response that writes encoded events and, concurrently,
listens on the ASGI ``receive`` channel for ``http.disconnect``. On a disconnect (or a failed
``send``) it calls ``stream.cancel()`` and keeps draining the stream until the engine's own
``Finished(CANCELLED)`` arrives: the slot is released by the engine retiring the request, never
by the HTTP layer. A request still queued when its client leaves is withdrawn by the engine and
never runs.

Invariant: ``on_done`` is awaited exactly once per response, on every path (success, disconnect
before or during streaming, error, server shutdown, a response that is never sent because the
endpoint that made it raised), with the :class:`Outcome` and the final event (None if it never came
or was not sent).
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
        # A response that is never sent (the user's endpoint raised after our call returned it)
        # must still end its generation and have on_done awaited once: the request's task is
        # watched, and when it ends with the response unsent, the response is abandoned. Without
        # a task to watch, a finalizer cancels the generation when the response is dropped.
        self._task = _current_task()
        self._finalizer = weakref.finalize(self, _abandon, stream, on_abandon)
        if self._task is not None:
            self._finalizer.detach()
            self._task.add_done_callback(self._request_task_done)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._called:
            raise RuntimeError("an EventStreamResponse can be sent only once")
        self._called = True
        self._finalizer.detach()
        if self._task is not None:
            self._task.remove_done_callback(self._request_task_done)
        disconnected = asyncio.Event()
        watcher = asyncio.create_task(self._watch_disconnect(receive, disconnected))
        progress = _Progress()
        failed = False
        try:
            try:
                await self._stream_all(send, disconnected, progress)
            except asyncio.CancelledError:
                # The server tears this task down (its graceful timeout ran out, or its loop is
                # ending): stop generating, wait for the engine's retire, and still end the body
                # with the final event, so the client is told the reply is over, not cut off.
                _uncancel_current_task()
                self.stream.cancel()
                progress.finished = progress.finished or await _drain(self.stream)
                await self._end_body(send, disconnected, progress)
        except Exception:
            failed = True
            log.exception("error while streaming a response")
            self.stream.cancel()
            progress.finished = progress.finished or await _drain(self.stream)
        finally:
            watcher.cancel()
            self.stream.cancel()  # no-op once finished
            outcome = _outcome(disconnected.is_set(), progress.saw_text, progress.finished, failed)
            if self.on_done is not None:  # first: the client may already send its next request
                try:
                    await self.on_done(outcome, progress.finished)
                except Exception:
                    log.exception("on_done hook raised")
            with contextlib.suppress(BaseException):  # let the watcher see its cancel before we go
                await asyncio.wait([watcher], timeout=1.0)
        if self.background is not None:
            await self.background()

    def _request_task_done(self, task: asyncio.Task[Any]) -> None:
        """The request's task ended and this response was never sent: end its generation, and
        await ``on_done(UNKNOWN_ERROR_OCCURRED, None)`` once (no result, so no turn committed)."""
        if self._called:
            return
        self._called = True
        self.stream.cancel()
        try:
            task.get_loop().create_task(self._abandoned())
        except RuntimeError:  # the loop is closed: only the synchronous part can still run
            _abandon(self.stream, None)

    async def _abandoned(self) -> None:
        if self.on_done is not None:
            try:
                await self.on_done(Outcome.UNKNOWN_ERROR_OCCURRED, None)
            except Exception:
                log.exception("on_done hook raised")

    async def _stream_all(self, send: Send, disconnected: asyncio.Event, progress: _Progress) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            progress.started = True
        except OSError:
            self._client_left(disconnected)
        async for event in self.stream:
            progress.see(event, counts=not disconnected.is_set())
            if isinstance(event, Finished):
                break
            chunk = self.encoder.encode(event)
            if chunk and not disconnected.is_set():
                await self._send_body(send, chunk, disconnected)
        await self._end_body(send, disconnected, progress)

    async def _end_body(self, send: Send, disconnected: asyncio.Event, progress: _Progress) -> None:
        """Write the final event (the engine's, or a ``cancelled`` one if it never came), the
        closing bytes and the end of the body; each at most once."""
        if progress.ended or disconnected.is_set() or not progress.started:
            return
        progress.ended = True
        final = progress.finished or progress.synthetic_finish()
        chunk = self.encoder.encode(final)
        if chunk:
            await self._send_body(send, chunk, disconnected)
        if self.closing:
            await self._send_body(send, self.closing, disconnected)
        await self._send_body(send, b"", disconnected, more=False)

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


class _Progress:
    """What one response has seen and sent so far (mutated only by its own task)."""

    def __init__(self) -> None:
        self.started = False  # http.response.start went out
        self.ended = False  # the final event and the end of body went out (or were attempted)
        self.saw_text = False  # the client received some reply text
        self.finished: Finished | None = None
        self.request_id: Any = ""
        self.text = ""

    def see(self, event: StreamEvent, *, counts: bool) -> None:
        self.request_id = getattr(event, "request_id", self.request_id)
        if isinstance(event, Finished):
            self.finished = event
        elif isinstance(event, Delta) and event.text:
            self.text += event.text
            self.saw_text = self.saw_text or counts

    def synthetic_finish(self) -> Finished:
        """The final event when the engine's never came (it did not answer within the drain)."""
        return Finished(self.request_id, FinishReason.CANCELLED, self.text)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def _uncancel_current_task() -> None:
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):  # Python 3.11+
        task.uncancel()


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
