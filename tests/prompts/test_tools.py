"""Tools for any chat template: parsing OpenAI's fields, the prompt and history we render for
templates that ignore ``tools``, the model's own rendering when it has one, and the grammar."""

from __future__ import annotations

import json

import pytest

from chatstream_lab.constraint import ConstraintKind
from chatstream_lab.errors import InvalidParameter
from chatstream_lab.prompts import JinjaTemplate, inspect_prompt, presets
from chatstream_lab.prompts.encode import encode_messages
from chatstream_lab.prompts.tool_stream import split_tool_calls
from chatstream_lab.prompts.tools import (
    Tool,
    ToolChoiceMode,
    call_text,
    parse_tool_choice,
    parse_tools,
    prepare,
    template_renders_tools,
    tool_spec,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

# A Hermes-style template that renders tools itself (the shape of Qwen2.5's, cut down).
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}[call {{ c.function.name }} {{ c.function.arguments | tojson }}]"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_parse_tools_reads_openai_shapes_and_names_the_bad_entry():
    tools = parse_tools([WEATHER])
    assert tools[0].name == "get_weather" and tools[0].schema["required"] == ["city"]
    assert tools[0].to_openai() == WEATHER
    with pytest.raises(InvalidParameter) as e:
        parse_tools([WEATHER, {"type": "function", "function": {"name": "a b"}}])
    assert e.value.name == "tools[1].function.name"
    with pytest.raises(InvalidParameter, match="used twice"):
        parse_tools([WEATHER, WEATHER])


def test_tool_choice_forms():
    tools = parse_tools([WEATHER])
    assert parse_tool_choice(None, tools).mode is ToolChoiceMode.AUTO
    assert parse_tool_choice(None, ()).mode is ToolChoiceMode.NONE
    assert parse_tool_choice("required", tools).mode is ToolChoiceMode.REQUIRED
    named = parse_tool_choice({"type": "function", "function": {"name": "get_weather"}}, tools)
    assert (named.mode, named.name) == (ToolChoiceMode.NAMED, "get_weather")
    assert parse_tool_choice("get_weather", tools) == named  # notebook shorthand
    with pytest.raises(InvalidParameter):
        parse_tool_choice("required", ())


def test_a_pydantic_class_is_a_tools_parameter_schema():
    from pydantic import BaseModel

    class Args(BaseModel):
        city: str
        days: int = 1

    tool = Tool.function("forecast", Args, "Forecast")
    assert tool.schema["properties"]["days"]["type"] == "integer"


def test_template_without_tools_gets_our_prompt_and_history(real_model):
    tok = real_model.tokenizer
    template = JinjaTemplate.from_tokenizer(tok)
    assert not template_renders_tools(template)  # SmolLM2's template ignores tools
    spec = tool_spec([WEATHER])
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    _, msgs = prepare(template, history, spec)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[0]["content"].startswith("Be brief.\n\nYou may call one or more functions")
    assert json.dumps(WEATHER) in msgs[0]["content"]
    assert msgs[2]["content"] == call_text("get_weather", {"city": "Paris"}) + "\n" + call_text(
        "get_weather", {"city": "Rome"})
    assert msgs[3]["content"] == "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
    view = inspect_prompt(template, tok, history, tools=[WEATHER])  # what the model gets, inspectable
    assert "<tools>" in view.text and "<tool_response>\nsunny" in view.text
    assert list(encode_messages(template, tok, history, spec).ids) == list(view.token_ids)
    text, calls, complete = split_tool_calls(msgs[2]["content"])  # our rendering parses back
    assert complete and [c.args for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]


def test_a_template_that_renders_tools_is_used_as_is():
    template = JinjaTemplate(TOOLS_TEMPLATE, name="tools-aware")
    assert template_renders_tools(template)
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    tmpl, msgs = prepare(template, history, tool_spec([WEATHER]))
    text = tmpl.render(msgs)
    assert text.startswith("<|im_start|>system\nTOOLS:get_weather;")
    assert '[call get_weather {"city": "P"}]' in text  # arguments handed over as data
    assert "<|im_start|>tool\nsunny" in text and "<tools>" not in text


def test_declarative_presets_get_tool_turns_as_plain_roles():
    tmpl, msgs = prepare(presets.get("chatml"), [{"role": "user", "content": "x"},
                                                 {"role": "tool", "content": "42"}], None)
    assert [m["role"] for m in msgs] == ["user", "user"]
    assert "<tool_response>\n42\n</tool_response>" in tmpl.render(msgs)


@pytest.mark.parametrize("choice, parallel, kind", [
    ("auto", True, "triggered_tags"), ("required", False, "triggered_tags"),
    ({"type": "function", "function": {"name": "get_weather"}}, True, "tag")])
def test_the_call_grammar_follows_tool_choice(choice, parallel, kind):
    c = tool_spec([WEATHER], choice, parallel).constraint()
    assert c is not None and c.kind is ConstraintKind.STRUCTURAL_TAG
    fmt = c.tag["format"]
    assert fmt["type"] == kind
    tag = fmt if kind == "tag" else fmt["tags"][0]
    assert tag["begin"].endswith('{"name": "get_weather", "arguments": ')  # the name opens the tag
    if kind == "triggered_tags":
        assert fmt["at_least_one"] is (choice == "required")
        assert fmt["stop_after_first"] is (not parallel)
    assert tool_spec([WEATHER], "none").constraint() is None
