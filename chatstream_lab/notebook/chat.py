"""``ChatWidget``: a multi-turn chat (Send, Stop, Regenerate, Clear) on a submit callable.

The conversation is a list of messages kept here; each turn is submitted through ``submit`` (for
``Lab.chat``: the Lab's service with its current configuration, same gate as HTTP clients) and
pumped into the transcript like a preview. The assistant
turn is appended once, when the request finished (a stopped reply keeps its partial text, marked
as cancelled); a turn is never updated per token.

One turn at a time: while a reply streams (from its submission until its turn is in
``messages``), Send is disabled and a message sent anyway is refused with a notice that stays
until the next action, its text left in the box. The transcript scrolls inside a capped height,
following the end of a streaming reply.

With logprobs (``Lab.chat`` asks a local model for the top 5), the last reply can be coloured by
probability (hover: the alternatives; click a token to pick it in "branch at") and branched:
``branch(i, token_id)`` (or a button of the branch panel) replaces the last reply by one that keeps
its first ``i`` tokens, forces the alternative at ``i`` and generates the rest; ``restore()`` (the
*original reply* button) puts the replaced reply back.
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
from ._pump import DEFAULT_INTERVAL_S, StreamState, finish_parts, pump
from .labels import stat_items_html
from .preview import status_text
from .reply_view import ReplyView
from .tokens import TokenPanel, forced, tokens_html

TRANSCRIPT_MAX_HEIGHT = "28em"
_NOTICE = ("<div style='background:#fff4d6;border-left:3px solid #e0a800;padding:2px 8px;margin:2px 0'>"
           "<small>{}</small></div>")

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
        self._replaced: list[tuple[dict[str, str], str, tuple[TokenLogprob, ...]]] = []  # replies branches replaced
        self._in_turn = False  # from submission until the reply is in ``messages`` (or dropped)
        self.transcript = ReplyView(max_height=TRANSCRIPT_MAX_HEIGHT, clickable=continuation is not None)
        self.notice = widgets.HTML(layout=widgets.Layout(display="none"))
        self.finishes: dict[int, Finished] = {}  # assistant message index -> its final event (to_records)
        self.input = widgets.Textarea(placeholder="Message (Shift+Enter for a new line)",
                                      layout=widgets.Layout(width="100%", height="4em"))
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.regenerate_button = widgets.Button(description="Regenerate", icon="refresh")
        self.clear_button = widgets.Button(description="Clear", icon="trash")
        self.status = widgets.HTML(layout=widgets.Layout(flex="1 1 auto", min_width="0", margin="0 0 0 8px"))
        self.status.add_class("csl-clip")
        self.send_button.on_click(lambda _b: self._send_input())
        self.stop_button.on_click(lambda _b: self.stop())
        self.regenerate_button.on_click(lambda _b: self.regenerate())
        self.clear_button.on_click(lambda _b: self.clear())
        self.tokens_panel = TokenPanel(lambda: self._render_transcript(),
                                       self.branch if continuation is not None else None, self.restore)
        buttons = widgets.HBox([self.send_button, self.stop_button, self.regenerate_button, self.clear_button,
                                self.tokens_panel.colour, self.status], layout=widgets.Layout(align_items="center"))
        self.transcript.observe(lambda change: self.tokens_panel.select(change["new"]), names="selected")
        self.tokens_panel.picker.observe(self._on_pick, names="value")
        super().__init__([self.transcript, self.input, buttons, self.notice, self.tokens_panel])
        self.stream: Any = None
        self.task: asyncio.Task[Finished | None] | None = None
        self.last: Finished | None = None
        self._render_transcript()

    # -- actions -------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A turn is in progress: its reply streams, or has ended but is not in ``messages`` yet."""
        return self._in_turn

    def send(self, text: str) -> asyncio.Task[Finished | None] | None:
        """Add a user turn and stream the reply. Refused (None, with a notice) while a reply is in
        progress or when ``text`` is empty."""
        return self.task if self._take(text) else None

    def _take(self, text: str) -> bool:
        if self.busy:
            self._refuse("a reply is still streaming: your message was not sent. Stop the reply, "
                         "or wait for it to end, then Send again.")
            return False
        if not isinstance(text, str) or not text.strip():
            self._refuse("type a message first")
            return False
        self.messages.append({"role": "user", "content": text})
        if not self._reply():
            self.messages.pop()  # refused by the service (queue full...): no lone user turn is kept
            return False
        return True

    def regenerate(self) -> asyncio.Task[Finished | None] | None:
        """Drop the last reply and generate it again."""
        if self.busy:
            self._refuse("a reply is still streaming: Stop it first")
            return None
        if not any(m["role"] == "user" for m in self.messages):
            self._refuse("nothing to regenerate yet")
            return None
        kept, notes = list(self.messages), dict(self.notes)
        while self.messages and self.messages[-1]["role"] == "assistant":
            self.notes.pop(len(self.messages) - 1, None)
            self.messages.pop()
        if not self._reply():
            self.messages, self.notes = kept, notes  # refused: the reply stays
            return None
        return self.task

    def branch(self, i: int, token_id: int) -> asyncio.Task[Finished | None] | None:
        """Replace the last reply: keep its first ``i`` tokens, force ``token_id`` (one of token
        ``i``'s alternatives) and generate the rest."""
        if self.continuation is None or self.busy or not self.messages or \
                self.messages[-1]["role"] != "assistant" or not 0 <= i < len(self.last_tokens):
            self._refuse("nothing to branch: wait for a finished reply with probabilities")
            return None
        at = self.last_tokens[i]
        alt = next((a for a in at.top if a.token_id == token_id), None)
        if alt is None:
            self._refuse(f"token {token_id} is not one of the alternatives at {i}")
            return None
        head = (*self.last_tokens[:i], forced(alt, at))
        try:
            stream = self.continuation(list(self.messages[:-1]), [t.token_id for t in head])
        except ChatStreamLabError as exc:
            self._refuse(str(exc))
            return None
        replaced = self.messages.pop()
        self._replaced.append((replaced, self.notes.pop(len(self.messages), ""), self.last_tokens))
        self._prefix = head
        self._prefix_text = b"".join(t.raw for t in head).decode("utf-8", errors="replace")
        return self._start(stream)

    def restore(self) -> bool:
        """Put back the reply the last branch replaced (the branch is dropped). False if there is
        none, or a reply is in progress."""
        if self.busy or not self._replaced or not self.messages:
            self._refuse("nothing to restore: no branch replaced the last reply")
            return False
        message, note, tokens = self._replaced.pop()
        if self.messages[-1]["role"] == "assistant":  # (a branch stopped before its first token added none)
            self.notes.pop(len(self.messages) - 1, None)
            self.messages.pop()
        self.messages.append(message)
        if note:
            self.notes[len(self.messages) - 1] = note
        self.last_tokens = tokens
        self.tokens_panel.update(tokens, done=True)
        self.tokens_panel.show_restore(bool(self._replaced))
        self._render_transcript()
        self._say("original reply restored")
        return True

    def clear(self) -> None:
        """Forget the conversation (keeps the system prompt); stops a streaming reply."""
        self.stop()
        self.stream = None  # a reply still finishing is not added
        self._end_turn()
        self.messages = [m for m in self.messages if m["role"] == "system"]
        self.notes.clear()
        self._replaced.clear()
        self.last = None
        self.last_tokens = ()
        self.tokens_panel.update((), done=False)
        self.tokens_panel.show_restore(False)
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
        """The Send button: the box is emptied only when the message was taken."""
        if self._take(self.input.value):
            self.input.value = ""

    def _say(self, text: str) -> None:
        self.status.value = f"<small>{escape(text)}</small>"

    def _refuse(self, why: str) -> None:
        """A notice that stays (the status line is rewritten while a reply streams)."""
        self.notice.value = _NOTICE.format(escape(why))
        self.notice.layout.display = None

    def _clear_notice(self) -> None:
        self.notice.value = ""
        self.notice.layout.display = "none"

    def _on_pick(self, change: dict[str, Any]) -> None:
        if isinstance(change["new"], int):
            self.transcript.selected = change["new"]

    def _reply(self) -> bool:
        """Submit the conversation; False (with a notice) when the service refuses it."""
        try:
            stream = self.submit(list(self.messages))
        except ChatStreamLabError as exc:
            self._refuse(f"not sent: {exc}")
            return False
        self._prefix, self._prefix_text = (), ""
        self._replaced.clear()
        self.tokens_panel.show_restore(False)
        self._start(stream)
        return True

    def _start(self, stream: Any) -> asyncio.Task[Finished | None] | None:
        self._clear_notice()
        self.stream = stream
        self._in_turn = True
        self.send_button.disabled = self.regenerate_button.disabled = True
        self.send_button.tooltip = "a reply is streaming: Stop it, or wait for it to end"
        self.last_tokens = ()
        self.tokens_panel.update((), done=False)
        self.stop_button.disabled = False
        self.task = spawn(self._run(self.stream))
        return self.task

    def _end_turn(self) -> None:
        self._in_turn = False
        self.send_button.disabled = self.regenerate_button.disabled = False
        self.send_button.tooltip = None
        self.stop_button.disabled = True

    async def _run(self, stream: Any) -> Finished | None:
        try:
            fin = await pump(stream, lambda state: self._render_partial(stream, state), self.interval)
        except BaseException:
            if stream is self.stream:
                self._end_turn()
            raise
        if stream is self.stream:  # not cleared meanwhile
            note = "cancelled" if fin.finish_reason is FinishReason.CANCELLED else (
                "error" if fin.finish_reason is FinishReason.ERROR else "")
            text = self._prefix_text + fin.text
            if text or not note:
                self.messages.append({"role": "assistant", "content": text})
                self.finishes[len(self.messages) - 1] = fin
                if note:
                    self.notes[len(self.messages) - 1] = note
            self.tokens_panel.update(self.last_tokens, done=True)
            self.tokens_panel.show_restore(bool(self._replaced))
            self._render_transcript()
            self.status.value = stat_items_html(finish_parts(fin))
            self._end_turn()  # only now: until its reply is in ``messages`` a turn is in progress
        self.last = fin
        return fin

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per assistant reply, in the grid's row shape (``notebook/records.py``): the user
        message before it as ``input``, the reply as ``output``, with its tokens and timings."""
        records: list[dict[str, Any]] = []
        for i, m in enumerate(self.messages):
            if m["role"] != "assistant":
                continue
            prompt = next((p["content"] for p in reversed(self.messages[:i]) if p["role"] == "user"), "")
            fin = self.finishes.get(i)
            u = fin.usage if fin is not None and fin.text and m["content"].endswith(fin.text) else None
            records.append({"model": None, "variant": "chat", "input": prompt, "seed": None,
                            "output": m["content"], "completion_tokens": u.completion_tokens if u else None,
                            "ttft_s": u.ttft_s if u else None, "latency_s": u.total_s if u else None,
                            "turn": len(records), "finish_reason": fin.finish_reason.value if u and fin else None,
                            "note": self.notes.get(i)})
        return records

    def to_pandas(self) -> Any:
        """:meth:`to_records` as a DataFrame (pandas: the ``notebook`` extra)."""
        from .records import records_frame

        return records_frame(self.to_records())

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
