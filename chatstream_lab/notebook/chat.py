"""``ChatWidget``: a multi-turn chat (Send, Stop, Regenerate, Clear) on a submit callable.

The conversation is a list of messages kept here; each turn is submitted through ``submit`` (for
``Lab.chat``: the Lab's service with its current configuration, same gate as HTTP clients) and
pumped into the transcript like a preview. The assistant
turn is appended once, when the request finished (a stopped reply keeps its partial text, marked
as cancelled); a turn is never updated per token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from html import escape
from typing import Any

import ipywidgets as widgets

from ..engine.stream import RequestStream
from ..errors import ChatStreamLabError
from ..types import Finished, FinishReason
from ._loop import spawn
from ._pump import DEFAULT_INTERVAL_S, StreamState, finish_line, pump
from .preview import status_text

_BUBBLE = {"user": "background:#eef3fb;margin-left:15%", "assistant": "background:#f6f6f6;margin-right:15%",
           "system": "background:#fff8e6;font-style:italic"}


def _bubble(role: str, text: str, note: str = "") -> str:
    style = _BUBBLE.get(role, "")
    extra = f" <small style='color:#888'>({escape(note)})</small>" if note else ""
    return (f"<div style='{style};white-space:pre-wrap;padding:4px 8px;margin:3px 0;border-radius:6px'>"
            f"<small style='color:#678'>{escape(role)}</small>{extra}<br>{escape(text)}</div>")


class ChatWidget(widgets.VBox):
    """A multi-turn chat. ``submit(messages)`` sends the conversation (``Lab.chat`` passes its current
    configuration's submit). ``messages`` is the conversation so far; ``send(text)``,
    ``regenerate()``, ``clear()`` and ``stop()`` do what the buttons do; ``await chat.wait()``."""

    def __init__(self, submit: Callable[[list[dict[str, str]]], RequestStream], *,
                 system_prompt: str | None = None, interval: float = DEFAULT_INTERVAL_S) -> None:
        self.submit = submit
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
        super().__init__([self.transcript, self.input, buttons])
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

    def clear(self) -> None:
        """Forget the conversation (keeps the system prompt); stops a streaming reply."""
        self.stop()
        self.stream = None  # a reply still finishing is not added
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.notes.clear()
        self.last = None
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
            self.stream = self.submit(list(self.messages))
        except ChatStreamLabError as exc:
            self._say(str(exc))
            return None
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
            if fin.text or not note:
                self.messages.append({"role": "assistant", "content": fin.text})
                if note:
                    self.notes[len(self.messages) - 1] = note
            self._render_transcript()
            self._say(finish_line(fin))
        self.last = fin
        return fin

    def __repr__(self) -> str:
        state = "streaming" if self.busy else "idle"
        return f"<ChatWidget {state}, {len(self.messages)} messages>"

    def _render_partial(self, stream: Any, state: StreamState) -> None:
        if state.finished is None and stream is self.stream:
            self._render_transcript(state.text + "▍")
            self._say(status_text(state))

    def _render_transcript(self, partial: str | None = None) -> None:
        parts = [_bubble(m["role"], m["content"], self.notes.get(i, "")) for i, m in enumerate(self.messages)]
        if partial is not None:
            parts.append(_bubble("assistant", partial))
        self.transcript.value = "".join(parts) or "<small style='color:#888'>(empty conversation)</small>"
