"""The bridge from the engine thread to one consumer: :class:`RequestStream`.

The producer (engine thread, or whoever cancels a queued request) calls :meth:`_push`; the
consumer iterates the events synchronously (``for ev in stream``, blocking) or asynchronously
(``async for ev in stream`` on *its own* event loop, woken with ``call_soon_threadsafe``). The
stream accepts exactly one :class:`~chatstream_lab.types.Finished`; anything pushed after it is
dropped, which is what makes "exactly one finish event" an invariant rather than a hope.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

from ...errors import GenerationError
from ...types import Delta, Finished, FinishReason, Queued, RequestId, StreamEvent


class RequestStream:
    """Events of one request, in order, ending with exactly one ``Finished``.

    Iterate it once, sync or async. ``cancel()`` works from any thread and at any time: a queued
    request is withdrawn without ever reaching the model; a running one stops within one step.
    """

    def __init__(self, request_id: RequestId, cancel_fn: Callable[[RequestId], None]) -> None:
        self.id = request_id
        self._cancel_fn = cancel_fn
        self._cond = threading.Condition()
        self._events: deque[StreamEvent] = deque()
        self._finished: Finished | None = None
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.position: int | None = None  # last known queue position (None once running)

    # -- producer side -------------------------------------------------------------------
    def _push(self, event: StreamEvent) -> bool:
        """Deliver ``event``; returns False (and drops it) if the stream already finished."""
        with self._cond:
            if self._finished is not None:
                return False
            if isinstance(event, Finished):
                self._finished = event
                self.position = None
            elif isinstance(event, Queued):
                self.position = event.position
            self._events.append(event)
            self._cond.notify_all()
            wakers = list(self._wakers)
        for loop, flag in wakers:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                pass
        return True

    # -- consumer side -------------------------------------------------------------------
    @property
    def finished(self) -> Finished | None:
        """The final event once it arrived, else None."""
        return self._finished

    @property
    def done(self) -> bool:
        return self._finished is not None

    def cancel(self) -> None:
        """Ask for the request to stop (thread-safe, idempotent)."""
        if self._finished is None:
            self._cancel_fn(self.id)

    def __iter__(self) -> Iterator[StreamEvent]:
        while True:
            with self._cond:
                while not self._events:
                    self._cond.wait()
                event = self._events.popleft()
            yield event
            if isinstance(event, Finished):
                return

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return _AsyncEvents(self)

    def _drain(self) -> list[StreamEvent]:
        """Take every event delivered so far without blocking (for inline driving)."""
        with self._cond:
            events = list(self._events)
            self._events.clear()
            return events

    def result(self, timeout: float | None = None) -> Finished:
        """Block until the request finished (draining events) and return the final event."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._finished is not None, timeout):
                raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
            assert self._finished is not None
            return self._finished

    def text(self, timeout: float | None = None) -> str:
        """The whole reply; raises GenerationError if the model failed."""
        fin = self.result(timeout)
        if fin.finish_reason is FinishReason.ERROR:
            raise GenerationError(fin.error or "generation failed")
        return fin.text

    def __repr__(self) -> str:
        state = self._finished.finish_reason.value if self._finished else "streaming"
        return f"<RequestStream {self.id} {state}>"


class _AsyncEvents:
    """``async for`` over a RequestStream on the consumer's loop.

    A plain async iterator, not an async generator: a consumer task that is cancelled or
    abandoned mid-stream leaves nothing for the loop to finalize later (async generators are
    closed by the loop's asyncgen hooks, which races with a second reader during shutdown).
    """

    def __init__(self, stream: RequestStream) -> None:
        self._stream = stream
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._done = False

    def __aiter__(self) -> _AsyncEvents:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._done:
            raise StopAsyncIteration
        s = self._stream
        if self._waker is None:
            self._waker = (asyncio.get_running_loop(), asyncio.Event())
            with s._cond:
                s._wakers.append(self._waker)
        flag = self._waker[1]
        while True:
            with s._cond:
                event = s._events.popleft() if s._events else None
                if event is None:
                    flag.clear()
            if event is not None:
                break
            await flag.wait()
        if isinstance(event, Finished):
            self._done = True
            with s._cond:
                s._wakers.remove(self._waker)
        return event


__all__ = ["Delta", "Finished", "Queued", "RequestStream"]
