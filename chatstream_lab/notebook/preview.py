"""``StreamPreview``: one reply streaming into a widget, with a Stop button and a stats line.

Returned at once by ``Lab.preview``; the reply is pumped by a task on the kernel's loop
(:func:`~chatstream_lab.notebook._pump.pump`), ~12 updates per second. Stop cancels the request in
the engine (a queued one never runs; a running one leaves the batch at the next step), and the
widget ends with ``cancelled`` and the text generated so far.

With logprobs (``Lab.preview`` asks for the top 5 on a local model), a *probabilities* toggle
colours each token by its probability with the alternatives on hover, and once the reply is done
a branch panel lists a position's alternatives: clicking one regenerates from there with that
token forced (prompt + the reply's tokens before it + the alternative as the continuation's
prefix), in the same widget.

In a notebook, ``await preview.wait()`` in a later cell (or the same one) waits for the end while
the loop keeps running. In a plain script (no running loop) ``Lab.preview`` generates to the end
before it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from html import escape
from typing import Any

import ipywidgets as widgets

from ..config import ServeConfig
from ..engine.core.stream import RequestStream
from ..errors import ChatStreamLabError
from ..types import Finished, TokenLogprob
from ._loop import spawn
from ._pump import DEFAULT_INTERVAL_S, StreamState, finish_line, pump
from .tokens import TokenPanel, forced, tokens_html

Submit = Callable[[Any, ServeConfig], RequestStream]
"""Encode messages with a configuration and submit them (``Service.submit``); raises QueueFull."""

Continue = Callable[[Any, ServeConfig, Sequence[int]], RequestStream]
"""Submit ``messages`` with the reply forced to start with the given token ids (a branch)."""

_REPLY_STYLE = ("white-space:pre-wrap;font-family:var(--jp-content-font-family,sans-serif);"
                "border-left:3px solid #9ab;padding:4px 8px;margin:2px 0;min-height:1.5em")


def reply_html(text: str, *, cursor: bool = False, tokens: Sequence[TokenLogprob] | None = None) -> str:
    """The reply box: plain text, or (``tokens``) one coloured span per token with its alternatives."""
    body = tokens_html(tokens) if tokens else escape(text)
    return f"<div class='csl-reply' style='{_REPLY_STYLE}'>{body}{'▍' if cursor else ''}</div>"


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

    def __init__(self, title: str = "", *, interval: float = DEFAULT_INTERVAL_S,
                 continuation: Callable[[Sequence[int]], RequestStream] | None = None, **kwargs: Any) -> None:
        self.header = widgets.HTML(title)
        self.reply = widgets.HTML(reply_html(""))
        self.status = widgets.HTML("<small>waiting…</small>", layout=widgets.Layout(flex="1 1 auto", min_width="0"))
        # a fixed minimum and no shrinking: in narrow compare columns the label stays "Stop"
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="warning",
                                          layout=widgets.Layout(width="auto", min_width="5.5em", flex="0 0 auto"))
        self.stop_button.on_click(lambda _button: self.stop())
        self._continuation = continuation
        self.tokens_panel = TokenPanel(self._rerender, self.branch if continuation is not None else None)
        super().__init__([self.header, self.reply,
                          widgets.HBox([self.stop_button, self.status], layout=widgets.Layout(align_items="center")),
                          self.tokens_panel], **kwargs)
        self.interval = interval
        self.text = ""
        self.tokens: tuple[TokenLogprob, ...] = ()  # the reply's tokens with logprobs (when asked)
        self.branches: list[str] = []  # the replies a branch replaced, oldest first
        self.finished: Finished | None = None
        self.stream: Any = None
        self.task: asyncio.Task[Finished] | None = None
        self.updates = 0
        self._prefix_text = ""
        self._prefix: tuple[TokenLogprob, ...] = ()
        self._last: StreamState | None = None

    @classmethod
    def start(cls, submit: Submit, message: Any, config: ServeConfig, *, continuation: Continue | None = None,
              **kwargs: Any) -> StreamPreview:
        """Submit ``message`` with ``config`` (through ``submit``) and stream it into a new preview;
        ``continuation`` (``Lab.submit_continuation``) enables branching."""
        shown = message if isinstance(message, str) else (list(message)[-1].get("content", "") if message
                                                          else "")
        title = (f"<small><b>{escape(config.template_name)}</b> · config <code>{config.config_id}</code>"
                 f" · {escape(shown[:120])}</small>")
        cont = None if continuation is None else (lambda prefix: continuation(message, config, prefix))
        view = cls(title, continuation=cont, **kwargs)
        view.attach(submit(message, config))
        return view

    def attach(self, stream: Any) -> StreamPreview:
        """Pump ``stream`` (a RequestStream) into this widget: a task on the running loop, or,
        with no loop running, to the end right here."""
        self.stream = stream
        self.task = spawn(self._run())
        return self

    async def _run(self) -> Finished:
        self.stop_button.disabled = False
        self.stop_button.layout.display = None
        try:
            fin = await pump(self.stream, self.render, self.interval)
            return self.finished or fin  # a branch's final text includes its kept prefix
        finally:
            # a finished preview shows no Stop (its status line says how it ended)
            self.stop_button.disabled = True
            self.stop_button.layout.display = "none"

    def render(self, state: StreamState) -> None:
        """Show ``state`` (called by the pump on the kernel's loop)."""
        self._last = state
        self.text = self._prefix_text + state.text
        self.tokens = self._prefix + state.logprobs
        if state.finished is not None:
            self.finished = replace(state.finished, text=self.text) if self._prefix_text else state.finished
        coloured = self.tokens if self.tokens_panel.colour.value else None
        self.reply.value = reply_html(self.text, cursor=state.finished is None, tokens=coloured)
        self.status.value = f"<small>{escape(status_text(state))}</small>"
        if state.finished is not None or (self.tokens and self.tokens_panel.layout.display == "none"):
            self.tokens_panel.update(self.tokens, done=state.finished is not None)
        self.updates += 1

    def _rerender(self) -> None:
        if self._last is not None:
            self.render(self._last)

    def branch(self, i: int, token_id: int) -> StreamPreview:
        """Regenerate from token ``i`` with ``token_id`` there (one of its alternatives, or any id):
        the tokens before ``i`` are kept, the rest is generated anew into this widget."""
        if self._continuation is None:
            raise ChatStreamLabError("this preview cannot branch (it was made without a continuation)")
        if self.stream is not None and not self.stream.done:
            raise ChatStreamLabError("the reply is still streaming: Stop it first")
        if not 0 <= i < len(self.tokens):
            raise ChatStreamLabError(f"no token {i}: the reply has {len(self.tokens)} tokens with logprobs")
        at = self.tokens[i]
        alt = next((a for a in at.top if a.token_id == token_id), None)
        if alt is None:
            raise ChatStreamLabError(f"token {token_id} is not one of token {i}'s alternatives "
                                     f"{[a.token_id for a in at.top]}")
        head = (*self.tokens[:i], forced(alt, at))
        ids = [t.token_id for t in self.tokens[:i]] + [token_id]
        stream = self._continuation(ids)
        self.branches.append(self.text)
        self._prefix = head
        self._prefix_text = b"".join(t.raw for t in head).decode("utf-8", errors="replace")
        self.finished = None
        self.header.value += f"<br><small>branch {len(self.branches)}: token {i} forced</small>"
        return self.attach(stream)

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
