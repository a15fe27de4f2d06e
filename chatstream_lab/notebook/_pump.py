"""Stream events into a widget, coalesced: at most one render per ``interval`` (default 80 ms).

A reader task consumes ``async for ev in stream`` on the kernel's loop; the pump renders the text
so far every ``interval`` if it changed, and once more at the end. So a 500-token reply costs ~12
widget updates per second of generation, never one comm message per token (invariant 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..types import Delta, Finished, Queued, TokenLogprob

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.08  # ~12 updates per second


@dataclass(frozen=True)
class StreamState:
    """What a view shows: the text so far, the queue position while waiting, the final event."""

    text: str = ""
    position: int | None = None
    finished: Finished | None = None
    started: bool = False  # a Delta (or the Finished) arrived, so the request left the queue
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token, when the request asked for them


Render = Callable[[StreamState], None]


async def pump(stream: Any, render: Render, interval: float = DEFAULT_INTERVAL_S) -> Finished:
    """Read ``stream`` to its end, calling ``render`` at most every ``interval`` s and at the end.

    Cancelling the pump cancels the request. ``render`` exceptions are logged, never raised, so a
    broken view cannot leave a request running.
    """
    parts: list[str] = []
    logprobs: list[TokenLogprob] = []
    state: dict[str, Any] = {"position": None, "finished": None, "started": False}

    async def read() -> None:
        async for ev in stream:
            if isinstance(ev, Delta):
                parts.append(ev.text)
                logprobs.extend(ev.logprobs)
                state["started"], state["position"] = True, None
            elif isinstance(ev, Queued):
                state["position"] = ev.position
            elif isinstance(ev, Finished):
                state["finished"], state["position"], state["started"] = ev, None, True

    def current() -> StreamState:
        fin = state["finished"]
        text = fin.text if fin is not None else "".join(parts)
        return StreamState(text, state["position"], fin, state["started"], tuple(logprobs))

    def safe_render(s: StreamState) -> None:
        try:
            render(s)
        except Exception:
            log.exception("a stream view failed to render")

    reader = asyncio.ensure_future(read())
    last: StreamState | None = None
    try:
        while not reader.done():
            await asyncio.wait({reader}, timeout=interval)
            now = current()
            if now != last and now.finished is None:
                safe_render(now)
                last = now
        reader.result()
    except BaseException:
        stream.cancel()
        reader.cancel()
        raise
    final = current()
    assert final.finished is not None
    safe_render(final)
    return final.finished


def finish_parts(fin: Finished) -> list[str]:
    """``["stop", "8 tokens", "TTFT 0.21 s", "25.3 tok/s", "0.53 s total"]``: the items of a stats line."""
    u = fin.usage
    ttft = f"{u.ttft_s:.2f} s" if u.ttft_s is not None else "–"
    tokens = f"{u.completion_tokens} token{'' if u.completion_tokens == 1 else 's'}"
    parts = [fin.finish_reason.value, tokens, f"TTFT {ttft}",
             f"{u.tokens_per_s:.1f} tok/s", f"{u.total_s:.2f} s total"]
    if fin.error:
        parts.append(f"error: {fin.error}")
    return parts


def finish_line(fin: Finished) -> str:
    """``stop · 8 tokens · TTFT 0.21 s · 25.3 tok/s · 0.53 s total`` (plain text)."""
    return " · ".join(finish_parts(fin))
