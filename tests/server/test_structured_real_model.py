"""The openai SDK's ``parse(response_format=Model)`` and ``tools=[...]`` against our server on the
bundled model, torch and OpenVINO engines (real uvicorn, real model, constrained decoding)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel, Field

from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.server import create_app
from chatstream_lab.service import Service

from .conftest import serving

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(300)]

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 30},
                                                "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                "required": ["city", "unit"]}}}


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)


@pytest.fixture(scope="module", params=["torch", "openvino"])
def client(request) -> Iterator[OpenAI]:
    model = request.getfixturevalue("real_model" if request.param == "torch" else "openvino_model")
    service = Service.build(model, None, SamplingParams(temperature=0, max_new_tokens=64),
                            limits=Limits(4, 8))
    with serving(create_app(service, close_on_shutdown=True)) as url:
        yield OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def test_parse_returns_a_validated_model(client):
    r = client.chat.completions.parse(model="m", messages=[{"role": "user", "content": "Tell me about Paris."}],
                                      response_format=City)
    assert r.choices[0].finish_reason == "stop" and isinstance(r.choices[0].message.parsed, City)


def test_streamed_tool_calls_accumulate_by_index_to_valid_arguments(client):
    calls: dict[int, dict[str, str]] = {}
    finish, fragments = None, 0
    for chunk in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=[WEATHER],
            tool_choice="required", stream=True):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for tc in chunk.choices[0].delta.tool_calls or ():
            slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += tc.id or ""
            slot["name"] += tc.function.name or ""
            if tc.function.arguments:
                fragments += 1
                slot["arguments"] += tc.function.arguments
    assert finish == "tool_calls" and calls and fragments > len(calls)  # arguments streamed in pieces
    for call in calls.values():
        assert call["name"] == "get_weather" and call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), WEATHER["function"]["parameters"])
