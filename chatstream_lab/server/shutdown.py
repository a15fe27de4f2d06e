"""A graceful stop: refuse new requests, let the open replies finish (bounded), end the rest.

What ``chatstream-lab serve`` does on SIGTERM or Ctrl-C, and what ``BackgroundServer.stop(drain_s=)``
does for any script:

1. **Refuse new work.** ``Service.stop_accepting()``: a request that arrives from now on gets JSON 503
   ``shutting_down`` with ``Retry-After`` (and ``/health`` answers 503), so a load balancer sends it
   elsewhere; the socket stays open meanwhile, so nobody sees a refused connection or a reset.
2. **Drain.** The open replies (streamed or not) keep generating until they end on their own, at
   most ``drain_s`` seconds, or until ``cut()`` says stop waiting (a second signal).
3. **End the rest.** Whatever is still open is cancelled: each reply ends with its engine's final
   event (SSE ``done`` ``cancelled``, the seed's last record, OpenAI's ``[DONE]``; a non-streamed
   one gets 503 ``shutting_down``) within about a decode step, and each callback fires once.

:class:`StopSignals` turns SIGINT and SIGTERM into such stops for a process that serves (the main
thread only; never at import, never in a kernel): the first starts a graceful stop, the second cuts
the drain short, a third gets the signal's default action (the process dies at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import FrameType
from typing import Any, Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# how long the replies cancelled at the end of a drain may take to write their final event (one
# decode step normally; a bound so a wedged engine cannot hold the stop forever)
CANCEL_WAIT_S = 5.0


class Drainable(Protocol):
    """What a drain needs of the served thing (a :class:`~chatstream_lab.service.Service`)."""

    def stop_accepting(self) -> None: ...

    def detach(self) -> None: ...

    def open_streams(self) -> list[Any]: ...


class DrainEnd(str, Enum):
    """Why a drain stopped waiting for the open replies."""

    FINISHED = "finished"  # every open reply ended on its own
    TIMED_OUT = "timed out"  # drain_s passed: the rest were cancelled
    CUT = "cut short"  # cut() (a second signal): the rest were cancelled

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class DrainReport:
    """How a graceful stop went: replies that ended on their own, replies cancelled when the drain
    ended (each still ended with its final event), replies that had not ended even
    ``CANCEL_WAIT_S`` after their cancel (should be none), and how long it took."""

    end: DrainEnd
    finished: int
    cancelled: int
    unfinished: int
    waited_s: float

    def summary(self) -> str:
        counts = f"{self.finished} finished, {self.cancelled} cancelled"
        if self.unfinished:
            counts += f", {self.unfinished} did not end"
        return f"open replies {self.end} after {self.waited_s:.1f} s ({counts})"


def drain(served: Drainable, drain_s: float, *, cut: Callable[[], bool] = lambda: False,
          poll_s: float = 0.02) -> DrainReport:
    """Stop ``served`` gracefully (see the module docstring); returns when every reply has ended
    (or ``drain_s`` + ``CANCEL_WAIT_S`` passed). Any thread but an event loop's."""
    t0 = time.monotonic()
    served.stop_accepting()  # from here on no stream is added: the count only falls
    at_start = len(served.open_streams())
    deadline = t0 + max(0.0, drain_s)
    end = DrainEnd.FINISHED
    while served.open_streams():
        if cut():
            end = DrainEnd.CUT
            break
        if time.monotonic() >= deadline:
            end = DrainEnd.TIMED_OUT
            break
        time.sleep(poll_s)
    still_open = len(served.open_streams())
    served.detach()  # cancels what is still open; each stream ends with its Finished
    cancel_deadline = time.monotonic() + CANCEL_WAIT_S
    while served.open_streams() and time.monotonic() < cancel_deadline:
        time.sleep(poll_s)
    unfinished = len(served.open_streams())
    return DrainReport(end, finished=at_start - still_open, cancelled=still_open - unfinished,
                       unfinished=unfinished, waited_s=time.monotonic() - t0)


class StopSignals:
    """SIGINT and SIGTERM as stop requests, for a process whose main thread serves (the CLI).

    ``with StopSignals() as signals: signals.wait()`` blocks until the first one. The handlers only
    append to a list (no lock, so a signal arriving anywhere cannot deadlock the main thread);
    after the second signal the default actions are restored, so a third ends the process at
    once. Leaving the block restores the handlers that were there before.

    Raises:
        ConfigError: entered off the main thread (Python delivers signals to the main thread only).
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: list[signal.Signals] = []
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError("StopSignals works on the main thread only (signal handlers live there)",
                              name="signals")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum))
        if len(self.received) >= 2:
            for sig in self.signals:
                signal.signal(sig, signal.SIG_DFL)

    @property
    def first(self) -> signal.Signals | None:
        return self.received[0] if self.received else None

    def requested(self) -> bool:
        """A stop was asked for (one signal or more)."""
        return bool(self.received)

    def repeated(self) -> bool:
        """A second signal came: stop waiting for open replies."""
        return len(self.received) >= 2

    def wait(self, poll_s: float = 0.1) -> signal.Signals:
        """Block until the first signal; return it. (A poll: sleeping is interrupted by the
        signal, and the handler needs no lock.)"""
        while not self.received:
            time.sleep(poll_s)
        return self.received[0]


class LifespanDrainMiddleware:
    """Pure ASGI: holds the app's lifespan shutdown until the HTTP requests in flight have ended
    (at most ``wait_s``), then lets their last bytes leave (``flush_s``).

    Why: at its graceful timeout plain uvicorn cancels the request tasks and goes straight on to
    the lifespan shutdown and the exit, without waiting for them. A cancelled stream still writes
    its final event (``EventStreamResponse``), but only while the loop keeps running; after SIGTERM
    uvicorn re-raises the signal as soon as it is done, so without this hold those last bytes were
    lost. ``create_app`` and ``ChatStream.append_middlewares`` install it.
    """

    def __init__(self, app: ASGIApp, *, wait_s: float = CANCEL_WAIT_S, flush_s: float = 0.1) -> None:
        self.app = app
        self.wait_s = wait_s
        self.flush_s = flush_s
        self.in_flight = 0
        self._idle: asyncio.Event | None = None  # made when a shutdown waits, on the server's loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._holding_shutdown(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    def _holding_shutdown(self, receive: Receive) -> Receive:
        async def hold() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown" and self.in_flight:
                self._idle = asyncio.Event()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), self.wait_s)
                self._idle = None
                await asyncio.sleep(self.flush_s)
            return message

        return hold
