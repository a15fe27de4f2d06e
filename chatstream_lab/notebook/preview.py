"""``StreamPreview``: one reply streaming into a widget, with a Stop button and a stats line.

Returned at once by ``Lab.preview``; the reply is pumped by a task on the kernel's loop
(:func:`~chatstream_lab.notebook._pump.pump`), ~12 updates per second. Stop cancels the request in
the engine (a queued one never runs; a running one leaves the batch at the next step), and the
widget ends with ``cancelled`` and the text generated so far.

In a notebook, ``await preview.wait()`` in a later cell (or the same one) waits for the end while
the loop keeps running. In a plain script (no running loop) ``Lab.preview`` generates to the end
before it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from html import escape
from typing import Any

import ipywidgets as widgets

from ..config import ServeConfig
from ..engine.stream import RequestStream
from ..types import Finished
from ._loop import spawn
from ._pump import DEFAULT_INTERVAL_S, StreamState, finish_line, pump

Submit = Callable[[Any, ServeConfig], RequestStream]
"""Encode messages with a configuration and submit them (``Service.submit``); raises QueueFull."""

_REPLY_STYLE = ("white-space:pre-wrap;font-family:var(--jp-content-font-family,sans-serif);"
                "border-left:3px solid #9ab;padding:4px 8px;margin:2px 0;min-height:1.5em")


def reply_html(text: str, *, cursor: bool = False) -> str:
    return f"<div style='{_REPLY_STYLE}'>{escape(text)}{'▍' if cursor else ''}</div>"


def status_text(state: StreamState) -> str:
    if state.finished is not None:
        return finish_line(state.finished)
    if state.position is not None:
        return f"queued (position {state.position})"
    return "generating…" if state.started else "waiting for a slot…"


class StreamPreview(widgets.VBox):
    """A streaming reply. Attributes: ``text``, ``finished`` (the final event), ``stream``, ``updates``
    (how many times the reply was re-rendered), and the parts ``header``, ``reply``, ``status``,
    ``stop_button`` (ipywidgets)."""

    def __init__(self, title: str = "", *, interval: float = DEFAULT_INTERVAL_S, **kwargs: Any) -> None:
        self.header = widgets.HTML(title)
        self.reply = widgets.HTML(reply_html(""))
        self.status = widgets.HTML("<small>waiting…</small>")
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="warning",
                                          layout=widgets.Layout(width="6em"))
        self.stop_button.on_click(lambda _button: self.stop())
        super().__init__([self.header, self.reply, widgets.HBox([self.stop_button, self.status])], **kwargs)
        self.interval = interval
        self.text = ""
        self.finished: Finished | None = None
        self.stream: Any = None
        self.task: asyncio.Task[Finished] | None = None
        self.updates = 0

    @classmethod
    def start(cls, submit: Submit, message: Any, config: ServeConfig, **kwargs: Any) -> StreamPreview:
        """Submit ``message`` with ``config`` (through ``submit``) and stream it into a new preview."""
        shown = message if isinstance(message, str) else (list(message)[-1].get("content", "") if message
                                                          else "")
        title = (f"<small><b>{escape(config.template_name)}</b> · config <code>{config.config_id}</code>"
                 f" · {escape(shown[:120])}</small>")
        view = cls(title, **kwargs)
        view.attach(submit(message, config))
        return view

    def attach(self, stream: Any) -> StreamPreview:
        """Pump ``stream`` (a RequestStream) into this widget: a task on the running loop, or,
        with no loop running, to the end right here."""
        self.stream = stream
        self.task = spawn(self._run())
        return self

    async def _run(self) -> Finished:
        try:
            return await pump(self.stream, self.render, self.interval)
        finally:
            self.stop_button.disabled = True

    def render(self, state: StreamState) -> None:
        """Show ``state`` (called by the pump on the kernel's loop)."""
        self.text = state.text
        if state.finished is not None:
            self.finished = state.finished
        self.reply.value = reply_html(state.text, cursor=state.finished is None)
        self.status.value = f"<small>{escape(status_text(state))}</small>"
        self.updates += 1

    @property
    def summary(self) -> str:
        """The status line as plain text (finish reason, tokens, TTFT, tokens/s once finished)."""
        return finish_line(self.finished) if self.finished is not None else "streaming"

    def stop(self) -> None:
        """Cancel the generation (the engine frees its slot)."""
        if self.stream is not None:
            self.stream.cancel()

    async def wait(self) -> Finished:
        """Wait (without blocking the loop) for the final event."""
        if self.task is not None:
            return await asyncio.shield(self.task)
        assert self.finished is not None
        return self.finished

    def result(self, timeout: float | None = None) -> Finished:
        """Block until the request finished and return its final event (the widget catches up
        when the cell ends)."""
        return self.stream.result(timeout)

    def __repr__(self) -> str:
        state = self.finished.finish_reason.value if self.finished else "streaming"
        return f"<StreamPreview {state}: {self.text[:60]!r}>"
