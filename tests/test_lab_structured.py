"""Lab with structured replies: extract a pydantic instance, generate with tools and run a tool
loop, never present a cut reply as done (the scripted model writes the replies; the real model's
constrained replies are in tests/structured)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from chatstream_lab import Lab
from chatstream_lab.errors import GenerationError, InvalidParameter
from chatstream_lab.models import scripted_model
from chatstream_lab.prompts.output_format import StructuredReply
from chatstream_lab.prompts.tools import call_text

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class City(BaseModel):
    name: str
    country: str


def _reply(prompt: str) -> str:
    last_user = prompt.rsplit("<|im_start|>user\n", 1)[-1]
    if "<tool_response>" in last_user:
        return "It is sunny in Paris."
    if "<tools>" in prompt:
        return call_text("get_weather", {"city": "Paris"})
    return '{"name": "Paris", "country": "France"}'


@pytest.fixture
def lab():
    lab = Lab(scripted_model(_reply), temperature=0, max_new_tokens=200)
    yield lab
    lab.close()


def test_extract_returns_a_validated_instance(lab):
    assert lab.extract(City, "What is the capital of France?") == City(name="Paris", country="France")
    assert lab.generate("capital?", response_format=City.model_json_schema()) == {"name": "Paris", "country": "France"}


def test_a_tool_loop_in_two_turns(lab):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    reply = lab.generate(messages, tools=[WEATHER])
    assert isinstance(reply, StructuredReply)
    (call,) = reply.tool_calls
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    messages += [reply.as_message(), call.result({"sky": "sunny"})]
    final = lab.generate(messages, tools=[WEATHER])
    assert final.tool_calls == () and final.text == "It is sunny in Paris."


def test_a_cut_reply_raises_instead_of_passing_for_done(lab):
    with pytest.raises(GenerationError, match="max_new_tokens"):
        lab.extract(City, "capital?", max_new_tokens=5)


def test_a_bad_schema_is_refused_before_anything_runs(lab):
    with pytest.raises(InvalidParameter) as e:
        lab.generate("x", response_format={"type": "objectx"})
    assert e.value.name == "response_format"
    assert lab.stats().completed == 0
