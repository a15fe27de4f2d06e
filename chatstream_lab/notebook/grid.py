"""The live view of a long batch of rows (an experiment grid): a progress bar, a status line, a
Stop button and a table that fills in as rows finish.

It knows nothing of grids: it polls ``poll()`` for a :class:`LiveFrame` (counts, status text, the
table's HTML) from a task on the kernel's loop, a few times a second, and redraws only when the
frame changed. The work itself runs elsewhere (the grid's own thread), so the kernel stays free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import ipywidgets as widgets

from ..types import TokenLogprob
from ._loop import spawn
from .preview import reply_html
from .tokens import TokenPanel

DEFAULT_POLL_S = 0.25


@dataclass(frozen=True)
class LiveFrame:
    """What the view shows at one instant; ``version`` changes whenever anything else does."""

    done: int
    total: int
    status: str
    table_html: str
    finished: bool
    version: int


class LiveGridView(widgets.VBox):
    """Progress bar, status, Stop and the table; ``updates`` counts redraws of the table."""

    def __init__(self, poll: Callable[[], LiveFrame], stop: Callable[[], None], *,
                 interval: float = DEFAULT_POLL_S) -> None:
        self._poll = poll
        self._stop = stop
        self.interval = interval
        self.progress = widgets.IntProgress(min=0, max=1, value=0, bar_style="info",
                                            layout=widgets.Layout(width="20em"))
        self.status = widgets.HTML()
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="warning",
                                          layout=widgets.Layout(width="auto", min_width="5.5em"))
        self.stop_button.on_click(lambda _b: self.stop())
        self.table = widgets.HTML()
        self.updates = 0
        self._version = -1
        super().__init__([widgets.HBox([self.progress, self.stop_button, self.status],
                                       layout=widgets.Layout(align_items="center")), self.table])
        self.task: asyncio.Task[None] | None = None

    def start(self) -> LiveGridView:
        """Draw now, then follow on the running loop until the work finishes."""
        self.refresh()
        if not self.stop_button.disabled:
            self.task = spawn(self._follow())
        return self

    def stop(self) -> None:
        self._stop()
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping"

    def refresh(self) -> LiveFrame:
        frame = self._poll()
        if frame.version != self._version:
            self._version = frame.version
            self.progress.max = max(1, frame.total)
            self.progress.value = frame.done
            self.status.value = f"<small>{frame.status}</small>"
            self.table.value = frame.table_html
            self.updates += 1
        if frame.finished:
            self.progress.bar_style = "success" if frame.done == frame.total else "warning"
            self.stop_button.disabled = True
            self.stop_button.description = "Stop"
        return frame

    async def _follow(self) -> None:
        # polled, not awaited on an event: the rows change on the grid's own thread
        while True:
            if self.refresh().finished:
                return
            await asyncio.sleep(self.interval)


def row_view(title_html: str, text: str, tokens: Sequence[TokenLogprob], details: str = "") -> Any:
    """One output with its token colours (the preview's reply box and probabilities toggle)."""
    header = widgets.HTML(title_html)
    reply = widgets.HTML(reply_html(text))

    def redraw() -> None:
        reply.value = reply_html(text, tokens=tokens if panel.colour.value else None)

    panel = TokenPanel(redraw, None)
    panel.update(tokens, done=True)
    if tokens:
        panel.colour.value = True
    box = widgets.VBox([header, reply, panel, widgets.HTML(f"<small>{details}</small>")])
    box.reply = reply
    box.tokens_panel = panel
    return box


def status_line(done: int, total: int, parts: Sequence[str]) -> str:
    return escape(f"{done}/{total} rows" + "".join(f" · {p}" for p in parts if p))


__all__ = ["LiveFrame", "LiveGridView", "row_view", "status_line"]
