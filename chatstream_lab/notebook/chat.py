"""``ChatWidget``: a multi-turn chat (Send, Stop, Regenerate, Clear) on a submit callable.

The conversation is a list of messages kept here; each turn is submitted through ``submit`` (for
``Lab.chat``: the Lab's service with its current configuration, same gate as HTTP clients) and
pumped into the transcript like a preview. The assistant
turn is appended once, when the request finished (a stopped reply keeps its partial text, marked
as cancelled); a turn is never updated per token.

With logprobs (``Lab.chat`` asks a local model for the top 5), the last reply can be coloured by
probability (hover: the alternatives) and branched: ``branch(i, token_id)`` (or a button of the
branch panel) replaces the last reply by one that keeps its first ``i`` tokens, forces the
alternative at ``i`` and generates the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

import ipywidgets as widgets

from ..engine.core.stream import RequestStream
from ..errors import ChatStreamLabError
from ..types import Finished, FinishReason, TokenLogprob
from ._loop import spawn
from ._pump import DEFAULT_INTERVAL_S, StreamState, finish_line, pump
from .preview import status_text
from .tokens import TokenPanel, forced, tokens_html

_BUBBLE = {"user": "background:#eef3fb;margin-left:15%", "assistant": "background:#f6f6f6;margin-right:15%",
           "system": "background:#fff8e6;font-style:italic"}


def _bubble(role: str, text: str, note: str = "", tokens: Sequence[TokenLogprob] | None = None,
            cursor: bool = False) -> str:
    style = _BUBBLE.get(role, "")
    extra = f" <small style='color:#888'>({escape(note)})</small>" if note else ""
    body = tokens_html(tokens) if tokens else escape(text)
    return (f"<div style='{style};white-space:pre-wrap;padding:4px 8px;margin:3px 0;border-radius:6px'>"
            f"<small style='color:#678'>{escape(role)}</small>{extra}<br>{body}{'▍' if cursor else ''}</div>")


class ChatWidget(widgets.VBox):
    """A multi-turn chat. ``submit(messages)`` sends the conversation (``Lab.chat`` passes its current
    configuration's submit). ``messages`` is the conversation so far; ``send(text)``,
    ``regenerate()``, ``clear()`` and ``stop()`` do what the buttons do; ``await chat.wait()``."""

    def __init__(self, submit: Callable[[list[dict[str, str]]], RequestStream], *,
                 system_prompt: str | None = None, interval: float = DEFAULT_INTERVAL_S,
                 continuation: Callable[[list[dict[str, str]], Sequence[int]], RequestStream] | None = None
                 ) -> None:
        self.submit = submit
        self.continuation = continuation
        self.last_tokens: tuple[TokenLogprob, ...] = ()  # the last reply's tokens (when logprobs came)
        self._prefix: tuple[TokenLogprob, ...] = ()
        self._prefix_text = ""
        self.interval = interval
        self.messages: list[dict[str, str]] = []
        if system_prompt:
            self.messages.append({"role": "system", "content": system_prompt})
        self.notes: dict[int, str] = {}  # message index -> note (e.g. "cancelled")
        self.transcript = widgets.HTML()
        self.input = widgets.Textarea(placeholder="Message (Shift+Enter for a new line)",
                                      layout=widgets.Layout(width="100%", height="4em"))
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.regenerate_button = widgets.Button(description="Regenerate", icon="refresh")
        self.clear_button = widgets.Button(description="Clear", icon="trash")
        self.status = widgets.HTML()
        self.send_button.on_click(lambda _b: self._send_input())
        self.stop_button.on_click(lambda _b: self.stop())
        self.regenerate_button.on_click(lambda _b: self.regenerate())
        self.clear_button.on_click(lambda _b: self.clear())
        buttons = widgets.HBox([self.send_button, self.stop_button, self.regenerate_button,
                                self.clear_button, self.status])
        self.tokens_panel = TokenPanel(lambda: self._render_transcript(),
                                       self.branch if continuation is not None else None)
        super().__init__([self.transcript, self.input, buttons, self.tokens_panel])
        self.stream: Any = None
        self.task: asyncio.Task[Finished | None] | None = None
        self.last: Finished | None = None
        self._render_transcript()

    # -- actions -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.stream is not None and not self.stream.done

    def send(self, text: str) -> asyncio.Task[Finished | None] | None:
        """Add a user turn and stream the reply."""
        if self.busy:
            self._say("a reply is still streaming: Stop it first")
            return None
        if not isinstance(text, str) or not text.strip():
            self._say("type a message first")
            return None
        self.messages.append({"role": "user", "content": text})
        return self._reply()

    def regenerate(self) -> asyncio.Task[Finished | None] | None:
        """Drop the last reply and generate it again."""
        if self.busy:
            self._say("a reply is still streaming: Stop it first")
            return None
        if not any(m["role"] == "user" for m in self.messages):
            self._say("nothing to regenerate yet")
            return None
        while self.messages and self.messages[-1]["role"] == "assistant":
            self.notes.pop(len(self.messages) - 1, None)
            self.messages.pop()
        return self._reply()

    def branch(self, i: int, token_id: int) -> asyncio.Task[Finished | None] | None:
        """Replace the last reply: keep its first ``i`` tokens, force ``token_id`` (one of token
        ``i``'s alternatives) and generate the rest."""
        if self.continuation is None or self.busy or not self.messages or \
                self.messages[-1]["role"] != "assistant" or not 0 <= i < len(self.last_tokens):
            self._say("nothing to branch: wait for a finished reply with probabilities")
            return None
        at = self.last_tokens[i]
        alt = next((a for a in at.top if a.token_id == token_id), None)
        if alt is None:
            self._say(f"token {token_id} is not one of the alternatives at {i}")
            return None
        head = (*self.last_tokens[:i], forced(alt, at))
        self.notes.pop(len(self.messages) - 1, None)
        self.messages.pop()
        try:
            stream = self.continuation(list(self.messages), [t.token_id for t in head])
        except ChatStreamLabError as exc:
            self._say(str(exc))
            return None
        self._prefix = head
        self._prefix_text = b"".join(t.raw for t in head).decode("utf-8", errors="replace")
        return self._start(stream)

    def clear(self) -> None:
        """Forget the conversation (keeps the system prompt); stops a streaming reply."""
        self.stop()
        self.stream = None  # a reply still finishing is not added
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.notes.clear()
        self.last = None
        self.last_tokens = ()
        self.tokens_panel.update((), done=False)
        self._render_transcript()
        self._say("")

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.cancel()

    async def wait(self) -> Finished | None:
        """Wait for the reply being streamed (returns its final event)."""
        if self.task is not None:
            return await asyncio.shield(self.task)
        return self.last

    # -- internals -------------------------------------------------------------------------------
    def _send_input(self) -> None:
        text, self.input.value = self.input.value, ""
        self.send(text)

    def _say(self, text: str) -> None:
        self.status.value = f"<small>{escape(text)}</small>"

    def _reply(self) -> asyncio.Task[Finished | None] | None:
        try:
            stream = self.submit(list(self.messages))
        except ChatStreamLabError as exc:
            self._say(str(exc))
            return None
        self._prefix, self._prefix_text = (), ""
        return self._start(stream)

    def _start(self, stream: Any) -> asyncio.Task[Finished | None] | None:
        self.stream = stream
        self.last_tokens = ()
        self.tokens_panel.update((), done=False)
        self.stop_button.disabled = False
        self.task = spawn(self._run(self.stream))
        return self.task

    async def _run(self, stream: Any) -> Finished | None:
        try:
            fin = await pump(stream, lambda state: self._render_partial(stream, state), self.interval)
        finally:
            self.stop_button.disabled = True
        if stream is self.stream:  # not cleared meanwhile
            note = "cancelled" if fin.finish_reason is FinishReason.CANCELLED else (
                "error" if fin.finish_reason is FinishReason.ERROR else "")
            text = self._prefix_text + fin.text
            if text or not note:
                self.messages.append({"role": "assistant", "content": text})
                if note:
                    self.notes[len(self.messages) - 1] = note
            self.tokens_panel.update(self.last_tokens, done=True)
            self._render_transcript()
            self._say(finish_line(fin))
        self.last = fin
        return fin

    def __repr__(self) -> str:
        state = "streaming" if self.busy else "idle"
        return f"<ChatWidget {state}, {len(self.messages)} messages>"

    def _render_partial(self, stream: Any, state: StreamState) -> None:
        if stream is not self.stream:
            return
        self.last_tokens = self._prefix + state.logprobs
        if state.finished is None:
            if self.last_tokens and self.tokens_panel.layout.display == "none":
                self.tokens_panel.update(self.last_tokens, done=False)
            self._render_transcript(self._prefix_text + state.text)
            self._say(status_text(state))

    def _render_transcript(self, partial: str | None = None) -> None:
        colour = self.tokens_panel.colour.value and bool(self.last_tokens)
        last = len(self.messages) - 1
        parts = [_bubble(m["role"], m["content"], self.notes.get(i, ""),
                         self.last_tokens if colour and partial is None and i == last and m["role"] == "assistant"
                         else None)
                 for i, m in enumerate(self.messages)]
        if partial is not None:
            parts.append(_bubble("assistant", partial, tokens=self.last_tokens if colour else None, cursor=True))
        self.transcript.value = "".join(parts) or "<small style='color:#888'>(empty conversation)</small>"
