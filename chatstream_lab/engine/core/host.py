"""The engine thread and what every generator does around it, written once.

:class:`EngineHost` owns one generator's thread: ``start`` (returns at once; the thread *builds*
the engine, then serves), ``health``, ``close``, the hand-off of new and cancelled requests, and
what happens when the build fails or the thread dies: every admitted and queued request ends with
exactly one ``Finished(ERROR)`` (each slot freed, each callback fired), later ``submit`` calls
raise :class:`~chatstream_lab.errors.EngineUnavailable` (HTTP 503) and ``health`` says why.

The engine supplies a :class:`Worker` (build, serve, end its rows, release). Engines that step a
batch (the torch engine, OpenVINO's) serve with :meth:`EngineHost.run_steps`, the one admit ->
cancel -> heartbeat -> gather a burst -> step loop; the remote engine serves an asyncio loop of
its own and uses the rest.

No caller waits on a build: ``start()`` returns while the thread loads weights or compiles, and
requests submitted meanwhile wait in the admission gate (their streams show ``Queued``) until the
loop admits them. :meth:`EngineHost.wait_ready` is for whoever *chooses* to wait (``serve``
before it prints its URL, a benchmark).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ...errors import ConfigError, EngineClosed, EngineUnavailable
from ...stats import KVCacheStats
from ...types import FinishReason, RequestId
from .capabilities import Capabilities
from .lifecycle import R, RequestLifecycle
from .protocol import EngineHealth, EngineState

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # queued requests hear their position at least this often
IDLE_WAIT_S = 0.25  # an idle loop looks at its flags this often even when nobody wakes it
ENGINE_FAILED = "the engine failed"  # what a request that an engine failure ended is told


def bind_to_model(model: Any, generator: Any) -> None:
    """Close ``generator`` when ``model`` closes (``LoadedModel.close()`` frees the weights, so what
    runs them must stop first). Raises ModelClosed for a model that is closed already."""
    close_with = getattr(model, "close_with", None)
    if callable(close_with):
        close_with(generator)


def check_gather_s(value: Any) -> float:
    """``gather_s`` (burst gathering, see :meth:`EngineHost.gather_burst`) as a float in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"gather_s must be a number of seconds in [0, 1], got {value!r}", name="gather_s")
    return float(value)


class Worker(Protocol):
    """What an engine runs on the host's thread."""

    def build(self) -> None:
        """Load / compile / connect: the slow part, on the engine thread (never a caller's)."""
        ...

    def serve(self) -> None:
        """Run until the host is closing (``run_steps`` for engines that step a batch)."""
        ...

    def end_rows(self, reason: FinishReason, error: str | None) -> None:
        """Finish every admitted request the worker holds (each exactly once)."""
        ...

    def release(self) -> None:
        """Free the runtime after the loop ended (on the engine thread)."""
        ...


class Stepper(Protocol[R]):
    """A worker that steps a batch: what :meth:`EngineHost.run_steps` drives."""

    def has_work(self) -> bool:
        """Rows are admitted (or the runtime still finishes cancelled ones): step again."""
        ...

    def add(self, rows: list[R]) -> None:
        """Admitted requests join (their prompts go in at the next step)."""
        ...

    def cancel(self, ids: set[RequestId]) -> None:
        """End these admitted requests now (finish reason ``cancelled``)."""
        ...

    def between_steps(self) -> None:
        """Work that runs between two steps (scoring jobs)."""
        ...

    def step(self) -> None:
        """One step of every running row."""
        ...


class EngineHost(Generic[R]):
    """One generator's thread, state and request hand-off (see the module docstring).

    Args:
        worker: what runs on the thread.
        lifecycle: the generator's gate + observer bookkeeping.
        backend: the name ``health`` reports (``torch``, ``openvino``, ``remote``...).
        label: how messages name the engine ("the OpenVINO engine").
        thread_name: the thread's name (tests and profilers look for it).
        gather_s: burst gathering after idle (see :meth:`gather_burst`); 0 disables it.
        wake_hook: called by :meth:`wake` besides setting the flag (an asyncio loop to poke).
        building: what ``health`` says the thread does while it builds.
    """

    def __init__(self, worker: Worker, lifecycle: RequestLifecycle[R], *, backend: str, label: str,
                 thread_name: str, gather_s: float = 0.0, wake_hook: Callable[[], None] | None = None,
                 building: str = "loading the model") -> None:
        self.worker = worker
        self.lifecycle = lifecycle
        self.gate = lifecycle.gate
        self.backend = backend
        self.label = label
        self.thread_name = thread_name
        self.gather_s = gather_s
        self._wake_hook = wake_hook
        self.building = building
        self._lock = threading.Lock()
        self._cancelled: set[RequestId] = set()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._ready = threading.Event()  # built, or the build failed (then _failure says why)
        self._thread: threading.Thread | None = None
        self._failure: str | None = None  # why this engine cannot serve (build failed, crashed)
        self._build_error: BaseException | None = None
        self.build_s: float | None = None  # how long the build took (once it is done)

    # -- state ---------------------------------------------------------------------------
    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    @property
    def failed(self) -> bool:
        """The build failed or the thread died: nothing more will run."""
        return self._failure is not None or (self._thread is not None and not self._thread.is_alive()
                                             and not self._closing.is_set())

    @property
    def running(self) -> bool:
        """The thread is alive (building or serving)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def state(self) -> EngineState:
        if self._closing.is_set():
            return EngineState.CLOSED
        if self._thread is None:
            return EngineState.IDLE
        if self._failure is not None or not self._thread.is_alive():
            return EngineState.FAILED
        return EngineState.RUNNING if self._ready.is_set() else EngineState.STARTING

    def health(self) -> EngineHealth:
        """The engine's state for ``/health`` (``starting`` while the thread builds)."""
        state = self.state
        detail = None
        if state is EngineState.FAILED:
            detail = self._failure or f"{self.label} stopped; restart the server"
        elif state is EngineState.STARTING:
            detail = f"{self.label} is {self.building}"
        return EngineHealth(state, self.backend, detail)

    def check_can_serve(self) -> None:
        """Raise what a new request must hear: EngineClosed, or EngineUnavailable and why."""
        if self._closing.is_set():
            raise EngineClosed(f"{self.label} was closed; create a new one")
        if self._failure is not None or (self._thread is not None and not self._thread.is_alive()):
            raise EngineUnavailable(self._failure or f"{self.label} stopped; restart the server")

    # -- the caller's side -----------------------------------------------------------------
    def start(self) -> None:
        """Start the thread, which builds the engine and then serves (idempotent; returns at once).

        Raises:
            EngineClosed: the engine was closed.
        """
        with self._lock:
            if self._closing.is_set():
                raise EngineClosed(f"{self.label} was closed; create a new one")
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self.thread_name, daemon=True)
                self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the engine was built (for a caller that chooses to wait).

        Raises:
            EngineUnavailable: the build failed (the message says why; the cause is chained).
            TimeoutError: not built within ``timeout`` seconds.
        """
        self.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.label} did not finish loading within {timeout} s")
        if self._failure is not None:
            exc = self._build_error
            raise EngineUnavailable(self._failure if exc is None else f"{self.label} could not start: "
                                    f"{type(exc).__name__}: {exc}") from exc

    def enqueue(self, pending: R) -> None:
        """Put a request in line (QueueFull raised here) and wake the thread. A request that lost
        the race with a crash or a close ends at once."""
        self.lifecycle.enqueue(pending)
        if self._failure is not None or self._closing.is_set():
            self.lifecycle.fail_waiting(FinishReason.ERROR if self._failure else FinishReason.CANCELLED,
                                        ENGINE_FAILED if self._failure else None)
        self.wake()

    def cancel(self, rid: RequestId) -> None:
        """Any thread: a queued request is withdrawn (it never runs); a running one is marked for
        the engine thread, which ends it at its next step boundary."""
        if self.lifecycle.withdraw(rid):
            return
        with self._lock:
            self._cancelled.add(rid)
        self.wake()

    def take_cancelled(self) -> set[RequestId]:
        """Engine thread: the running requests cancelled since the last call."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
        return cancelled

    def wake(self) -> None:
        self._wake.set()
        if self._wake_hook is not None:
            self._wake_hook()

    def close(self, timeout: float = 10.0, interrupt: Callable[[], None] | None = None) -> None:
        """Cancel every request, stop the thread and wait for it (idempotent). ``interrupt`` makes
        the worker's ``serve`` return (the flag and a wake are enough for ``run_steps``).

        A thread that is still building is not waited for (no caller waits on a build): it sees
        the flag when its build returns, serves nothing and releases what it built."""
        self._closing.set()
        self.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            if interrupt is not None and thread.is_alive():
                interrupt()
            if self._ready.is_set():
                thread.join(timeout)
        self.lifecycle.fail_waiting(FinishReason.CANCELLED)

    # -- the engine thread -----------------------------------------------------------------
    def _main(self) -> None:
        t0 = time.perf_counter()
        try:
            self.worker.build()
        except BaseException as exc:
            self._fail_build(exc)
            return
        self.build_s = time.perf_counter() - t0
        self._ready.set()
        try:
            self.worker.serve()
        except BaseException as exc:  # never leave consumers hanging, whatever happened
            log.exception("%s crashed", self.label)
            self._failure = f"{self.label} crashed ({type(exc).__name__}); restart the server"
            self._end_everything(FinishReason.ERROR, ENGINE_FAILED)
        finally:
            self._end_everything(FinishReason.CANCELLED)
            try:
                self.worker.release()
            except Exception:
                log.exception("%s could not release its runtime", self.label)

    def _fail_build(self, exc: BaseException) -> None:
        """The build failed: ``health`` and later requests say so, naming the exception's type
        (its message may hold paths: it goes to the log, and to a local caller that waits in
        :meth:`wait_ready`), and every waiting request ends."""
        log.error("%s could not start", self.label, exc_info=(type(exc), exc, exc.__traceback__))
        self._build_error = exc
        self._failure = f"{self.label} could not start ({type(exc).__name__}); the server log has the detail"
        self._ready.set()
        self.lifecycle.fail_waiting(FinishReason.ERROR, f"{self.label} could not start")

    def _end_everything(self, reason: FinishReason, error: str | None = None) -> None:
        """Finish every admitted and queued request (each exactly once), however the loop ended."""
        try:
            self.worker.end_rows(reason, error)
        except Exception:  # the runtime could not even reset: the queue must still end
            log.exception("%s: ending its rows raised", self.label)
        self.lifecycle.fail_waiting(reason, error)

    def run_steps(self, stepper: Stepper[R]) -> None:
        """The loop of an engine that steps a batch: admit -> cancels -> work between steps ->
        queue positions -> (after idle) gather a burst -> one step, until closing."""
        last_heartbeat = time.monotonic()
        while not self._closing.is_set():
            self._wake.clear()
            before = self.gate.snapshot().waiting
            was_idle = not stepper.has_work()
            stepper.add(self.lifecycle.admit())
            cancelled = self.take_cancelled()
            if cancelled:
                stepper.cancel(cancelled)
            stepper.between_steps()
            now = time.monotonic()
            if self.gate.snapshot().waiting != before or now - last_heartbeat >= HEARTBEAT_S:
                self.lifecycle.announce_positions()
                last_heartbeat = now
            if not stepper.has_work():
                self._wake.wait(IDLE_WAIT_S)
                continue
            if was_idle:
                self.gather_burst(stepper)
            stepper.step()

    def gather_burst(self, stepper: Stepper[R]) -> None:
        """Before the first step after idle, admit the rest of a burst that is still arriving.

        Requests sent together reach the engine a few ms apart (each is parsed and tokenized on
        the server's thread). Starting the first one alone would put the others a prefill behind,
        and the batch would then run partial steps at both ends; waiting while arrivals keep
        coming (each within ``gather_s`` of the last, ``8 * gather_s`` at most) costs a lone
        request at most ``gather_s`` of time to first token.
        """
        if self.gather_s <= 0:
            return
        deadline = time.monotonic() + 8 * self.gather_s
        while not self._closing.is_set() and self.gate.snapshot().running < self.gate.limit:
            left = deadline - time.monotonic()
            self._wake.clear()
            if left <= 0 or not self._wake.wait(min(self.gather_s, left)):
                return
            stepper.add(self.lifecycle.admit())


G = TypeVar("G", bound="HostedGenerator")


class HostedGenerator:
    """What every engine's :class:`~chatstream_lab.engine.core.protocol.Generator` face answers the
    same way, through its :class:`EngineHost`: capabilities, start, wait_ready, health, close, and
    no session state by default. An engine class sets ``CAPABILITIES`` and ``_host``."""

    CAPABILITIES: ClassVar[Capabilities]
    _host: EngineHost[Any]

    @classmethod
    def capabilities_for(cls, model: Any) -> Capabilities:
        """What this engine can do for ``model`` (known before anything is built)."""
        return cls.CAPABILITIES

    @property
    def capabilities(self) -> Capabilities:
        return self.CAPABILITIES

    @property
    def running(self) -> bool:
        """The engine's thread is alive (building or serving)."""
        return self._host.running

    def start(self: G) -> G:
        """Start the engine's thread, which builds the engine and then serves (idempotent;
        returns at once: requests submitted meanwhile wait in the queue)."""
        self._host.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the engine was built (EngineUnavailable if the build failed)."""
        self._host.wait_ready(timeout)

    def health(self) -> EngineHealth:
        """The engine's state for ``/health``."""
        return self._host.health()

    def wake(self) -> None:
        """Look at the gate now (any thread)."""
        self._host.wake()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every request, stop the thread and wait for it (idempotent)."""
        self._host.close(timeout)

    def forget(self, session_key: str) -> None:
        """Nothing kept per session (an engine that keeps a session's KV overrides this)."""

    def kv_cache_stats(self) -> KVCacheStats | None:
        """None: this engine keeps no KV across a session's turns."""
        return None

    def __enter__(self: G) -> G:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ENGINE_FAILED", "HEARTBEAT_S", "EngineHost", "HostedGenerator", "Stepper", "Worker", "bind_to_model",
           "check_gather_s"]
