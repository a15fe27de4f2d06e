"""``StreamPreview``: one reply streaming into a widget, with a Stop button and a stats line.

Returned at once by ``Lab.preview``; the reply is pumped by a task on the kernel's loop
(:func:`~chatstream_lab.notebook._pump.pump`), ~12 updates per second. Stop cancels the request in
the engine (a queued one never runs; a running one leaves the batch at the next step), and the
widget ends with ``cancelled`` and the text generated so far.

Layout: the title, then one row with Stop, the status (the stats line once finished) and the
*probabilities* checkbox, then the reply in a box capped at ``max_height`` that scrolls (following
the end while it streams). Stop sits above the growing text, so it never moves while the reply
grows.

With logprobs (``Lab.preview`` asks for the top 5 on a local model), *probabilities* colours each
token by its probability with its alternatives on hover, and once the reply is done a branch panel
lists a position's alternatives ("branch at"; clicking a token picks it): clicking one streams a
branch (prompt + the reply's tokens before it + the alternative as the continuation's prefix) into a
new column beside the original, which stays as it was. A branch column can itself be branched, and
closed.

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
from ..prompts.pieces import visible
from ..types import Finished, TokenLogprob
from ._loop import spawn
from ._pump import DEFAULT_INTERVAL_S, StreamState, finish_parts, pump
from .labels import stat_items_html, template_label
from .reply_view import REPLY_MAX_HEIGHT, ReplyView
from .tokens import TokenPanel, forced, tokens_html

Submit = Callable[[Any, ServeConfig], RequestStream]
"""Encode messages with a configuration and submit them (``Service.submit``); raises QueueFull."""

Continue = Callable[[Any, ServeConfig, Sequence[int]], RequestStream]
"""Submit ``messages`` with the reply forced to start with the given token ids (a branch)."""

_REPLY_STYLE = ("white-space:pre-wrap;font-family:var(--jp-content-font-family,sans-serif);"
                "border-left:3px solid #9ab;padding:4px 8px;margin:2px 0;min-height:1.5em")
_EMPTY = "<span class='csl-empty' style='color:#888;font-style:italic'>(empty)</span>"
COLUMN_MIN_WIDTH = "16em"


def reply_html(text: str, *, cursor: bool = False, tokens: Sequence[TokenLogprob] | None = None,
               finished: bool = False) -> str:
    """The reply box: plain text, or (``tokens``) one coloured span per token with its alternatives;
    ``(empty)`` for a finished reply without text."""
    body = tokens_html(tokens) if tokens else escape(text)
    if finished and not body:
        body = _EMPTY
    return f"<div class='csl-reply' style='{_REPLY_STYLE}'>{body}{'▍' if cursor else ''}</div>"


def status_text(state: StreamState) -> str:
    if state.finished is not None:
        return " · ".join(finish_parts(state.finished))
    if state.position is not None:
        return f"queued (position {state.position})"
    return "generating…" if state.started else "waiting for a slot…"


def status_html(state: StreamState) -> str:
    """The status as HTML: the stats line (wrapping without dangling separators) once finished."""
    if state.finished is not None:
        return stat_items_html(finish_parts(state.finished))
    return f"<small>{escape(status_text(state))}</small>"


def preview_title(config: ServeConfig, shown: str) -> str:
    """``model's own template (Jinja, from X's tokenizer) · config abc · message``; the template's
    full identifier on hover."""
    return (f"<small>{template_label(config).html()} · config <code>{config.config_id}</code>"
            f" · {escape(shown[:120])}</small>")


class StreamPreview(widgets.VBox):
    """A streaming reply. Attributes: ``text``, ``finished`` (the final event), ``stream``, ``updates``
    (how many times the reply was re-rendered), ``branches`` (the branch columns, oldest first), and
    the parts ``header``, ``reply``, ``status``, ``stop_button``, ``tokens_panel`` (ipywidgets)."""

    def __init__(self, title: str = "", *, interval: float = DEFAULT_INTERVAL_S,
                 continuation: Callable[[Sequence[int]], RequestStream] | None = None,
                 max_height: str = REPLY_MAX_HEIGHT, **kwargs: Any) -> None:
        self.header = widgets.HTML(title, layout=widgets.Layout(min_width="0"))
        self.header.add_class("csl-clip")  # its one-line labels end in an ellipsis in a narrow column
        self.reply = ReplyView(value=reply_html(""), max_height=max_height)
        self.status = widgets.HTML("<small>waiting…</small>", layout=widgets.Layout(flex="1 1 auto", min_width="0"))
        self.status.add_class("csl-clip")
        # a fixed minimum and no shrinking: in narrow compare columns the label stays "Stop"
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="warning",
                                          layout=widgets.Layout(width="auto", min_width="5.5em", flex="0 0 auto"))
        self.stop_button.on_click(lambda _button: self.stop())
        self.close_button = widgets.Button(icon="times", tooltip="close this branch",
                                           layout=widgets.Layout(width="2.4em", flex="0 0 auto", display="none"))
        self.close_button.on_click(lambda _button: self.close_branch())
        self._continuation = continuation
        self.tokens_panel = TokenPanel(self._rerender, self.branch if continuation is not None else None)
        self.reply.clickable = continuation is not None
        self.reply.observe(lambda change: self.tokens_panel.select(change["new"]), names="selected")
        self.tokens_panel.picker.observe(self._on_pick, names="value")
        self.controls = widgets.HBox([self.stop_button, self.status, self.tokens_panel.colour, self.close_button],
                                     layout=widgets.Layout(align_items="center", min_height="2.2em"))
        self.column_label = widgets.HTML("<small><b>original</b></small>", layout=widgets.Layout(display="none"))
        self.main = widgets.VBox([self.column_label, self.controls, self.reply, self.tokens_panel],
                                 layout=widgets.Layout(flex="1 1 0", min_width="0"))
        self.columns = widgets.HBox([self.main], layout=widgets.Layout(flex_flow="row wrap",
                                                                       align_items="flex-start"))
        super().__init__([self.header, self.columns], **kwargs)
        self.interval = interval
        self.text = ""
        self.tokens: tuple[TokenLogprob, ...] = ()  # the reply's tokens with logprobs (when asked)
        self.branches: list[StreamPreview] = []  # branch columns beside this reply, oldest first
        self.finished: Finished | None = None
        self.stream: Any = None
        self.task: asyncio.Task[Finished] | None = None
        self.updates = 0
        self._root: StreamPreview = self  # where branch columns go (the original reply's preview)
        self._branch_count = 0
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
        cont = None if continuation is None else (lambda prefix: continuation(message, config, prefix))
        view = cls(preview_title(config, shown), continuation=cont, **kwargs)
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
        done = state.finished is not None
        if state.finished is not None:
            self.finished = replace(state.finished, text=self.text) if self._prefix_text else state.finished
        coloured = self.tokens if self.tokens_panel.colour.value else None
        self.reply.value = reply_html(self.text, cursor=not done, tokens=coloured, finished=done)
        self.status.value = status_html(state)
        if done or (self.tokens and self.tokens_panel.colour.layout.display == "none"):
            self.tokens_panel.update(self.tokens, done=done)  # (its picker selects the reply's token)
        self.updates += 1

    def _rerender(self) -> None:
        if self._last is not None:
            self.render(self._last)

    def _on_pick(self, change: dict[str, Any]) -> None:
        if isinstance(change["new"], int):
            self.reply.selected = change["new"]

    # -- branches ----------------------------------------------------------------------------------
    def branch(self, i: int, token_id: int) -> StreamPreview:
        """Stream a branch into a new column beside the original reply: the tokens before ``i`` kept,
        ``token_id`` (one of token ``i``'s alternatives) there, the rest generated anew. Returns the
        branch's preview (``await branch.wait()``); this reply stays as it is."""
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
        stream = self._continuation([t.token_id for t in head])
        root = self._root
        root._branch_count += 1
        title = (f"<small><b>branch {root._branch_count}</b> · token {i}: "
                 f"{escape(repr(visible(at.text)))} → {escape(repr(visible(alt.text)))}</small>")
        view = StreamPreview(title, interval=self.interval, continuation=self._continuation,
                             max_height=self.reply.max_height,
                             layout=widgets.Layout(flex="1 1 0", min_width=COLUMN_MIN_WIDTH, margin="0 0 0 8px"))
        view._root = root
        view._prefix = head
        view._prefix_text = b"".join(t.raw for t in head).decode("utf-8", errors="replace")
        view.close_button.layout.display = None
        view.tokens_panel.colour.value = self.tokens_panel.colour.value
        root.branches.append(view)
        root._show_columns()
        return view.attach(stream)

    def close_branch(self) -> None:
        """Remove this branch column (stopping it if it still streams); the original stays."""
        root = self._root
        if root is self:
            return
        self.stop()
        if self in root.branches:
            root.branches.remove(self)
        root._show_columns()

    def _show_columns(self) -> None:
        self.columns.children = (self.main, *self.branches)
        self.main.layout.min_width = COLUMN_MIN_WIDTH if self.branches else "0"
        self.column_label.layout.display = None if self.branches else "none"

    @property
    def summary(self) -> str:
        """The status line as plain text (finish reason, tokens, TTFT, tokens/s once finished)."""
        return " · ".join(finish_parts(self.finished)) if self.finished is not None else "streaming"

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
