"""Structured output and tool calls through ``serve --upstream`` in front of the REAL llama-server
and vLLM CPU the suite starts: the openai SDK's ``parse(response_format=Model)``, tools (streamed
calls accumulate by index to arguments that validate), and the schema corpus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from _engines import LlamaServer, VllmServer
from openai import OpenAI
from pydantic import BaseModel, Field
from structured.schemas import MAX_TOKENS, SCHEMAS

from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.constraint import Constraint
from chatstream_lab.models import remote_model
from chatstream_lab.models.loader import converted_dir
from chatstream_lab.server import create_app
from chatstream_lab.service import Service
from chatstream_lab.types import FinishReason

from .conftest import serving

pytestmark = [pytest.mark.real_model, pytest.mark.real_engine, pytest.mark.timeout(900)]

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 30},
                                                "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                "required": ["city", "unit"]}}}


class City(BaseModel):
    name: str = Field(max_length=30)
    country: str = Field(max_length=30)


@pytest.fixture(scope="module", params=["llama-server", "vllm"])
def upstream(request, real_model) -> Iterator[Any]:
    server = (LlamaServer(parallel=4, ctx_per_slot=1024) if request.param == "llama-server"
              else VllmServer(converted_dir(), startup_timeout=900))
    with server as srv:
        yield srv


@pytest.fixture(scope="module")
def front(real_model, upstream) -> Iterator[tuple[str, Service]]:
    lm = remote_model([upstream.url], tokenizer=real_model)
    service = Service.build(lm, None, SamplingParams(temperature=0, max_new_tokens=MAX_TOKENS), limits=Limits(8, 64))
    with serving(create_app(service, close_on_shutdown=True)) as url:
        yield url, service


def test_sdk_parse_returns_the_pydantic_model(front):
    url, _ = front
    client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    r = client.chat.completions.parse(model="m", messages=[{"role": "user", "content": "Tell me about Paris."}],
                                      response_format=City)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(r.choices[0].message.parsed, City)


def test_streamed_tool_calls_accumulate_to_valid_arguments(front):
    url, _ = front
    client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[WEATHER], tool_choice="required", stream=True):
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for tc in chunk.choices[0].delta.tool_calls or ():
            slot = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            slot["name"] += tc.function.name or ""
            slot["arguments"] += tc.function.arguments or ""
    assert finish == "tool_calls" and calls
    for call in calls.values():
        assert call["name"] == "get_weather"
        jsonschema.validate(json.loads(call["arguments"]), WEATHER["function"]["parameters"])
    named = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Weather in Rome?"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = named.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_every_corpus_reply_parses_and_validates(front):
    _, service = front
    streams = [(name, schema, service.submit_encoded(service.encode(prompt), SamplingParams(
        temperature=0, max_new_tokens=MAX_TOKENS, constraint=Constraint.json_schema(schema))))
        for name, schema, prompt in SCHEMAS]
    failures = []
    for name, schema, stream in streams:
        fin = stream.result(600)
        try:
            assert fin.finish_reason is FinishReason.STOP, f"{fin.finish_reason}: {fin.text!r} {fin.error}"
            jsonschema.validate(json.loads(fin.text), schema)
        except (AssertionError, ValueError, jsonschema.ValidationError) as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
