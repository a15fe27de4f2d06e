"""The incremental tool-call parser: same result whatever the chunking, nothing taken back."""

from __future__ import annotations

import itertools

import pytest

from chatstream_lab.prompts.tool_stream import (
    CallArguments,
    CallEnd,
    CallStart,
    TextPart,
    ToolCallParser,
    split_tool_calls,
)
from chatstream_lab.prompts.tools import call_text

REPLY = ("Sure. " + call_text("get_weather", {"city": "Paris <3>"}) + call_text("get_time", {"tz": "CET"})
         + " Anything else?")


def _ids():
    counter = itertools.count()
    return lambda: f"id{next(counter)}"


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13, len(REPLY)])
def test_any_chunking_gives_the_same_parts(step):
    parser = ToolCallParser(_ids())
    parts = []
    for i in range(0, len(REPLY), step):
        parts += parser.feed(REPLY[i:i + step])
    parts += parser.finish()
    assert "".join(p.text for p in parts if isinstance(p, TextPart)) == "Sure.  Anything else?"
    starts = [p for p in parts if isinstance(p, CallStart)]
    assert [(s.index, s.id, s.name) for s in starts] == [(0, "id0", "get_weather"), (1, "id1", "get_time")]
    args = {i: "".join(p.text for p in parts if isinstance(p, CallArguments) and p.index == i) for i in (0, 1)}
    assert args == {0: '{"city": "Paris <3>"}', 1: '{"tz": "CET"}'}
    assert [p.index for p in parts if isinstance(p, CallEnd)] == [0, 1]
    assert parser.complete
    if step == 1:  # character by character: arguments arrive in many fragments, the name once
        assert sum(isinstance(p, CallArguments) for p in parts) > 10


def test_the_name_is_out_before_any_argument():
    parser = ToolCallParser(_ids())
    head = call_text("get_weather", {"city": "Paris"})
    cut = head.index("arguments") + len('arguments": ')
    parts = parser.feed("x" + head[:cut])
    assert parts[-1] == CallStart(0, "id0", "get_weather")


def test_a_call_cut_by_max_tokens_is_incomplete():
    text, calls, complete = split_tool_calls(call_text("f", {"a": 1})[:-8])
    assert not complete and calls[0].name == "f" and calls[0].arguments.startswith('{"a": 1')


def test_an_unconstrained_call_in_another_shape_is_read_whole():
    text, calls, complete = split_tool_calls('ok <tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>')
    assert text == "ok " and calls[0].name == "f" and calls[0].args == {"a": 1} and complete


def test_text_that_only_looks_like_a_tag_stays_text():
    text, calls, _ = split_tool_calls("a <tool_call> not json </tool_call> b <tool")
    assert calls == [] and text == "a <tool_call> not json </tool_call> b <tool"
