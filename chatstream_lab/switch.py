"""A model switch behind a running service: the new engine warms while the old one drains.

``Service.switch_model`` swaps, in one step under the service's lock, the model, a new generator
and a new admission gate that is *held* (``AdmissionGate.hold``): from that instant every new
request queues there (its stream shows ``Queued``, QueueFull still applies) while the old engine
finishes what it had accepted. :class:`ModelSwitch` then waits, on a thread of its own, for both:

1. the new engine is built (``wait_ready``: it warms on its own thread);
2. the old engine has no request left (at most ``drain_s``; what is still running then is
   cancelled, each ending with its final event);

then closes the old engine (and the old model, if asked), releases the hold and wakes the new
engine, which admits the waiting requests. If the new engine cannot be built, the switch rolls
back: the old model, engine and gate serve again (the requests that waited for the new one end
with the build's error) and :meth:`ModelSwitch.result` raises it.

No caller waits on any of this: ``switch_model`` returns the handle at once; ``result()`` (or
``await``) is for whoever chooses to wait.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass
from html import escape
from typing import Any

from .admission import AdmissionGate
from .engine.core.protocol import Generator

log = logging.getLogger(__name__)

POLL_S = 0.02


class SwitchPhase(str, enum.Enum):
    """Where a switch is."""

    WARMING = "warming: the new engine is being built"
    DRAINING = "draining: the old engine finishes what it had"
    DONE = "done"
    FAILED = "failed (the old model serves again)"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class SwitchSides:
    """What a switch moves between: each side's model name, generator (None: never built) and gate."""

    old_name: str
    new_name: str
    old: Generator | None
    old_gate: AdmissionGate[Any]
    new: Generator
    new_gate: AdmissionGate[Any]


@dataclass(frozen=True, slots=True)
class SwitchReport:
    """How a switch went: how long it took, how many old requests ended on their own while it
    drained and how many had to be cancelled at ``drain_s``."""

    old_name: str
    new_name: str
    seconds: float
    drained: int
    cancelled: int


class ModelSwitch:
    """The handle ``Service.switch_model`` / ``Lab.use_model`` return at once.

    ``result(timeout)`` blocks until the switch is done (the new engine serves) and returns a
    :class:`SwitchReport`, or raises why it failed; ``await switch`` does the same in a notebook
    cell without blocking the kernel's loop. ``phase`` and the HTML repr say where it is.
    """

    def __init__(self, sides: SwitchSides, *, drain_s: float, close_old: Callable[[], None],
                 rollback: Callable[[BaseException], None], build_timeout_s: float | None = None) -> None:
        self.sides = sides
        self.drain_s = drain_s
        self.build_timeout_s = build_timeout_s
        self.phase = SwitchPhase.WARMING
        self._close_old = close_old
        self._rollback = rollback
        self.notes: list[str] = []  # what else the switch did (sessions cleared...), shown in its repr
        self._future: concurrent.futures.Future[SwitchReport] = concurrent.futures.Future()
        self._t0 = time.monotonic()
        self._thread: threading.Thread | None = None

    # -- the caller's side -------------------------------------------------------------------
    def start(self) -> ModelSwitch:
        """Run the switch on its own thread (returns at once; idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="chatstream-switch", daemon=True)
            self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> SwitchReport:
        """Wait for the switch; its report, or the error that made it roll back."""
        return self._future.result(timeout)

    def __await__(self) -> PyGenerator[Any, None, SwitchReport]:
        import asyncio

        return asyncio.wrap_future(self._future).__await__()

    # -- the switch's thread -----------------------------------------------------------------
    def _run(self) -> None:
        sides = self.sides
        try:
            sides.new.wait_ready(self.build_timeout_s)
        except BaseException as exc:  # the build failed: the old side serves again
            self.phase = SwitchPhase.FAILED
            log.error("switching to %s failed; %s serves again: %s", sides.new_name, sides.old_name, exc)
            self._rollback(exc)
            self._future.set_exception(exc)
            return
        try:
            self.phase = SwitchPhase.DRAINING
            drained, cancelled = self._drain()
            self._close_old()
            sides.new_gate.release_hold()
            sides.new.wake()
            self.phase = SwitchPhase.DONE
            report = SwitchReport(sides.old_name, sides.new_name, time.monotonic() - self._t0, drained, cancelled)
            log.info("switched from %s to %s in %.1f s (%d old requests finished, %d cancelled)",
                     sides.old_name, sides.new_name, report.seconds, drained, cancelled)
            self._future.set_result(report)
        except BaseException as exc:  # a bug must not leave the new requests held forever
            log.exception("the switch to %s failed while draining", sides.new_name)
            sides.new_gate.release_hold()
            sides.new.wake()
            self._future.set_exception(exc)

    def _drain(self) -> tuple[int, int]:
        """Wait until the old engine holds no request (at most ``drain_s``), then cancel the rest:
        (requests that ended on their own, requests cancelled)."""
        gate = self.sides.old_gate
        snap = gate.snapshot()
        at_start = snap.running + snap.waiting
        deadline = time.monotonic() + self.drain_s
        while _busy(gate) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        left = _busy(gate)
        return at_start - left, left  # the old engine's close cancels what is left

    # -- display -------------------------------------------------------------------------------
    def __repr__(self) -> str:
        notes = "".join(f"; {note}" for note in self.notes)
        return f"<ModelSwitch {self.sides.old_name} -> {self.sides.new_name}: {self._state()}{notes}>"

    def _state(self) -> str:
        if self._future.done() and self._future.exception() is None:
            report = self._future.result()
            return (f"done in {report.seconds:.1f} s ({report.drained} old requests finished, "
                    f"{report.cancelled} cancelled)")
        if self._future.done():
            return f"{self.phase}: {self._future.exception()}"
        return f"{self.phase} ({time.monotonic() - self._t0:.1f} s)"

    def _repr_html_(self) -> str:
        notes = "".join(f"<br><small>{escape(note)}</small>" for note in self.notes)
        return (f"<div>model switch <b>{escape(self.sides.old_name)}</b> &rarr; "
                f"<b>{escape(self.sides.new_name)}</b>: {escape(self._state())}{notes}</div>")


def _busy(gate: AdmissionGate[Any]) -> int:
    snap = gate.snapshot()
    return snap.running + snap.waiting


__all__ = ["ModelSwitch", "SwitchPhase", "SwitchReport", "SwitchSides"]
