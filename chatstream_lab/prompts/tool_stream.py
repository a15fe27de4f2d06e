"""Reading tool calls out of a reply as it streams (the inverse of :mod:`.tools`' format).

:class:`ToolCallParser` takes the reply's text deltas and yields typed parts: plain text, the
start of a call (index, id, name: known as soon as the tag's head is out), fragments of its
arguments as they are generated, and its end. Text that could still become ``<tool_call>`` (or the
tag's end) is held back until it is decided, so no part is ever taken back.

A call written in the constrained format streams its arguments. One written otherwise (an
upstream that could not be constrained: other key order or spacing) is read whole when its
``</tool_call>`` arrives; one that does not parse stays text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

from .tools import ARGS_HEAD, CALL_CLOSE, CALL_HEAD, CALL_OPEN, CALL_TAIL, ToolCall

_MAX_NAME = 64


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class CallArguments:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class CallEnd:
    index: int


ToolStreamPart = Union[TextPart, CallStart, CallArguments, CallEnd]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _held(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


@dataclass
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    complete: bool = False


class ToolCallParser:
    """Incremental parser: ``feed(text)`` -> parts, ``finish()`` -> the parts still held."""

    def __init__(self, new_id: Callable[[], str] = new_call_id) -> None:
        self._new_id = new_id
        self._state = "text"  # text | head | args | raw
        self._buf = ""
        self._calls: list[_Call] = []
        self._content: list[str] = []

    # -- results ------------------------------------------------------------------------------
    @property
    def calls(self) -> list[ToolCall]:
        """Every call seen so far (an unfinished one with the arguments generated so far)."""
        return [ToolCall(c.id, c.name, "".join(c.arguments)) for c in self._calls]

    @property
    def complete(self) -> bool:
        """True unless a call was cut off (by ``max_tokens``) before its end."""
        return all(c.complete for c in self._calls) and self._state in ("text",)

    @property
    def text(self) -> str:
        """The reply's text outside calls."""
        return "".join(self._content)

    # -- feeding ------------------------------------------------------------------------------
    def feed(self, text: str) -> list[ToolStreamPart]:
        self._buf += text
        out: list[ToolStreamPart] = []
        while True:
            before = (self._state, len(self._buf))
            out.extend(self._steps[self._state](self))
            if (self._state, len(self._buf)) == before:
                return out

    def finish(self) -> list[ToolStreamPart]:
        """The end of the reply: held text goes out as text; a cut-off call keeps what it has."""
        out: list[ToolStreamPart] = []
        if self._state == "text" and self._buf:
            out.append(self._emit_text(self._buf))
        elif self._state == "args" and self._buf:
            out.append(self._emit_args(self._buf))
        elif self._state in ("head", "raw"):
            out.append(self._emit_text(CALL_OPEN + self._buf))
        self._buf = ""
        return out

    # -- states -------------------------------------------------------------------------------
    def _emit_text(self, text: str) -> TextPart:
        self._content.append(text)
        return TextPart(text)

    def _emit_args(self, text: str) -> CallArguments:
        self._calls[-1].arguments.append(text)
        return CallArguments(len(self._calls) - 1, text)

    def _in_text(self) -> list[ToolStreamPart]:
        at = self._buf.find(CALL_OPEN)
        if at >= 0:
            before, self._buf = self._buf[:at], self._buf[at + len(CALL_OPEN):]
            self._state = "head"
            return [self._emit_text(before)] if before else []
        keep = _held(self._buf, CALL_OPEN)
        ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep:]
        return [self._emit_text(ready)] if ready else []

    def _in_head(self) -> list[ToolStreamPart]:
        buf = self._buf
        if len(buf) < len(CALL_HEAD):
            if not CALL_HEAD.startswith(buf):
                self._state = "raw"
            return []
        if not buf.startswith(CALL_HEAD):
            self._state = "raw"
            return []
        end = buf.find(ARGS_HEAD, len(CALL_HEAD))
        if end < 0:
            if len(buf) - len(CALL_HEAD) > _MAX_NAME + len(ARGS_HEAD) or '"' in buf[len(CALL_HEAD):-len(ARGS_HEAD)]:
                self._state = "raw"
            return []
        name = buf[len(CALL_HEAD):end]
        self._buf = buf[end + len(ARGS_HEAD):]
        self._calls.append(_Call(self._new_id(), name))
        self._state = "args"
        return [CallStart(len(self._calls) - 1, self._calls[-1].id, name)]

    def _in_args(self) -> list[ToolStreamPart]:
        at = self._buf.find(CALL_TAIL)
        if at >= 0:
            args, self._buf = self._buf[:at], self._buf[at + len(CALL_TAIL):]
            out: list[ToolStreamPart] = [self._emit_args(args)] if args else []
            self._calls[-1].complete = True
            self._state = "text"
            return [*out, CallEnd(len(self._calls) - 1)]
        keep = _held(self._buf, CALL_TAIL)
        ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep:]
        return [self._emit_args(ready)] if ready else []

    def _in_raw(self) -> list[ToolStreamPart]:
        at = self._buf.find(CALL_CLOSE)
        if at < 0:
            return []
        body, self._buf = self._buf[:at], self._buf[at + len(CALL_CLOSE):]
        self._state = "text"
        try:
            data = json.loads(body)
            name, args = data["name"], data.get("arguments", data.get("parameters", {}))
            if not isinstance(name, str):
                raise TypeError(name)
        except (ValueError, KeyError, TypeError):
            return [self._emit_text(CALL_OPEN + body + CALL_CLOSE)]
        self._calls.append(_Call(self._new_id(), name, complete=True))
        index = len(self._calls) - 1
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        return [CallStart(index, self._calls[-1].id, name), self._emit_args(text), CallEnd(index)]


    _steps: dict[str, Callable[[ToolCallParser], list[ToolStreamPart]]] = {
        "text": _in_text, "head": _in_head, "args": _in_args, "raw": _in_raw}


def split_tool_calls(text: str, new_id: Callable[[], str] = new_call_id) -> tuple[str, list[ToolCall], bool]:
    """A whole reply -> (its text outside calls, the calls, whether every call is complete)."""
    parser = ToolCallParser(new_id)
    parser.feed(text)
    parser.finish()
    return parser.text, parser.calls, parser.complete
