"""``/v1/chat/completions`` with ``tools``, ``tool_choice`` and ``response_format``: OpenAI's exact
shapes, through the ``openai`` SDK on a real uvicorn server (the scripted model writes the calls;
the real model's constrained replies are in tests/structured)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from chatstream_lab.models import scripted_model
from chatstream_lab.prompts.tools import call_text
from chatstream_lab.server import ChatStream, create_app

from .conftest import serving

pytestmark = pytest.mark.timeout(60)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"enum": ["CET", "UTC"]}},
                                       "required": ["tz"]}}}
TWO_CALLS = ("Let me check. " + call_text("get_weather", {"city": "Paris"})
             + call_text("get_time", {"tz": "CET"}))


def _reply(prompt: str) -> str:
    """Calls when the prompt offers tools, a tool result's echo after one, JSON otherwise."""
    if "<tool_response>" in prompt.rsplit("<|im_start|>user", 1)[-1]:
        return "It is sunny in Paris."
    if "<tools>" in prompt:
        return TWO_CALLS
    return '{"city": "Paris", "temp": 21}'


@pytest.fixture(scope="module")
def url():
    cs = ChatStream(model=scripted_model(_reply, token_delay=0.0005), template="chatml", max_new_tokens=200)
    with serving(create_app(cs, close_on_shutdown=True)) as u:
        yield u


@pytest.fixture
def client(url):
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def test_non_streamed_tool_calls_have_ids_and_finish_reason_tool_calls(client):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "weather?"}],
                                       tools=[WEATHER, TIME])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check. "
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"tz": "CET"}]
    assert all(c.type == "function" and c.id.startswith("call_") for c in calls)
    assert len({c.id for c in calls}) == 2


def test_streamed_tool_calls_accumulate_by_index(client):
    chunks = list(client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather?"}], tools=[WEATHER, TIME], stream=True))
    content, calls, names_seen, fragments = "", {}, [], 0
    for chunk in chunks:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        content += delta.content or ""
        for tc in delta.tool_calls or ():
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                assert slot["id"] is None, "the id comes once"
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                names_seen.append(tc.function.name)
                slot["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                fragments += 1
                slot["arguments"] += tc.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert content == "Let me check. "
    assert names_seen == ["get_weather", "get_time"]
    assert fragments > 2, "arguments stream in fragments, not one chunk at the end"
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [{"city": "Paris"}, {"tz": "CET"}]
    assert all(calls[i]["id"].startswith("call_") for i in (0, 1))


def test_tool_results_in_the_history_reach_the_prompt(client, url):
    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
    ]
    r = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER])
    assert r.choices[0].message.content == "It is sunny in Paris."
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls


def test_tool_choice_none_and_no_tools_give_plain_text(client):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                       tools=[WEATHER], tool_choice="none")
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "[a-"}}}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "bad", "parameters": {"type": "nope"}}}]},
     "tools[1].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"n": 2}, "n"),
])
def test_bad_structured_fields_are_400_naming_the_field_and_nothing_is_queued(url, body, param):
    before = httpx.get(url + "/stats").json()
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    after = httpx.get(url + "/stats").json()
    assert after["completed"] == before["completed"] and after["queued"] == 0


def test_tool_calls_on_a_non_assistant_message_are_refused(url):
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "x", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}]}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_the_sdk_parse_helper_returns_a_validated_model(client):
    from pydantic import BaseModel

    class Weather(BaseModel):
        city: str
        temp: int

    r = client.chat.completions.parse(model="m", messages=[{"role": "user", "content": "weather?"}],
                                      response_format=Weather)
    assert r.choices[0].message.parsed == Weather(city="Paris", temp=21)
    assert r.choices[0].finish_reason == "stop"
