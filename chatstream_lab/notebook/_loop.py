"""Where notebook code runs: on the kernel's asyncio loop when there is one, inline otherwise.

Widgets and matplotlib are touched only from the kernel's loop (its thread). Inside a kernel
(or any running loop) long work is a task on that loop; in a plain script, with no loop running,
the same coroutine is simply run to completion, so every helper still works, blocking.

``run_sync`` is the one place nest-asyncio is used: a *synchronous* helper called from a cell
(the kernel's loop is running, but blocked in this cell) that must drive a coroutine to the end
while the loop's other tasks (a dashboard) keep running. It is applied on the first such call,
never on import, and never for the server (which has its own thread and loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_TASKS: set[asyncio.Task[Any]] = set()  # strong refs: a bare create_task may be garbage-collected


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread (the kernel's, in Jupyter), or None in a plain script."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def spawn(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T] | None:
    """Run ``coro`` as a task on the running loop and return it; with no running loop, run it
    to completion here (blocking) and return None."""
    loop = running_loop()
    if loop is None:
        asyncio.run(coro)
        return None
    task = loop.create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Drive ``coro`` to completion from synchronous code and return its result.

    In a plain script: ``asyncio.run``. Inside a running loop (a notebook cell): nest-asyncio
    re-enters the kernel's loop, so its other tasks keep running while the cell waits.
    """
    loop = running_loop()
    if loop is None:
        return asyncio.run(coro)
    import nest_asyncio

    nest_asyncio.apply(loop)
    return loop.run_until_complete(coro)
