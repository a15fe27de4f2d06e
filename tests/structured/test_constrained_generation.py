"""Constrained replies of the bundled model on each in-process engine (torch, OpenVINO).

Every reply to the 32-schema corpus parses and validates; a reply cut by ``max_tokens`` ends with
``length``; tool calls are valid calls whose arguments match the tool's schema; free rows in a
mixed batch get the same greedy replies as without the constrained rows. All requests of a test
run together (one batch), so the corpus costs about as much as its longest reply.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.constraint import Constraint
from chatstream_lab.prompts.output_format import output_format, read_reply
from chatstream_lab.prompts.tool_stream import split_tool_calls
from chatstream_lab.service import Service
from chatstream_lab.types import FinishReason

from .schemas import MAX_TOKENS, SCHEMAS

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(600)]

GREEDY = SamplingParams(temperature=0, max_new_tokens=MAX_TOKENS)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 30},
                                                "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "Local time in a time zone",
                                         "parameters": {"type": "object", "properties": {
                                             "tz": {"type": "string", "pattern": "^[A-Z]{3}$"}},
                                             "required": ["tz"]}}}


@pytest.fixture(scope="module", params=["torch", "openvino"])
def service(request):
    model = request.getfixturevalue("real_model" if request.param == "torch" else "openvino_model")
    svc = Service.build(model, None, GREEDY, limits=Limits(len(SCHEMAS), 64))
    yield svc
    svc.close()


def _submit(service, prompt, params, tools=None):
    return service.submit_encoded(service.encode(prompt, tools=tools), params)


def test_every_corpus_reply_parses_and_validates(service):
    streams = [(name, schema, _submit(service, prompt, GREEDY.replace(constraint=Constraint.json_schema(schema))))
               for name, schema, prompt in SCHEMAS]
    failures = []
    for name, schema, stream in streams:
        fin = stream.result(300)
        try:
            assert fin.finish_reason is FinishReason.STOP, f"{fin.finish_reason}: {fin.text!r}"
            jsonschema.validate(json.loads(fin.text), schema)
        except (AssertionError, ValueError, jsonschema.ValidationError) as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)


def test_a_reply_cut_by_max_tokens_ends_with_length_not_as_done(service):
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    fin = _submit(service, "Write a long story about a dragon.",
                  GREEDY.replace(max_new_tokens=12, constraint=Constraint.json_schema(schema))).result(120)
    assert fin.finish_reason is FinishReason.LENGTH
    with pytest.raises(ValueError):
        json.loads(fin.text)


@pytest.mark.parametrize("choice", ["auto", "required", {"type": "function", "function": {"name": "get_time"}}])
def test_tool_calls_are_valid_calls(service, choice):
    fmt = output_format(None, [WEATHER, TIME], choice)
    fin = _submit(service, "What is the weather in Paris right now?", GREEDY.replace(constraint=fmt.constraint),
                  fmt.tools).result(120)
    if choice == "auto":  # the model may answer in text (to max_tokens); any call it wrote is valid
        _, calls, complete = split_tool_calls(fin.text)
        for call in calls if complete else calls[:-1]:
            jsonschema.validate(call.args, (WEATHER if call.name == "get_weather" else TIME)["function"]["parameters"])
        return
    reply = read_reply(fin, fmt)
    assert reply.tool_calls, fin.text
    if isinstance(choice, dict):
        assert [c.name for c in reply.tool_calls] == ["get_time"]
    for call in reply.tool_calls:
        schema = (WEATHER if call.name == "get_weather" else TIME)["function"]["parameters"]
        jsonschema.validate(call.args, schema)


@pytest.fixture(scope="module", params=["torch", "openvino-fp32"])
def batch_invariant_service(request):
    """Engines whose greedy replies do not depend on what else is in the batch. OpenVINO's int8
    weights (the precision calibration picks on this CPU) are not one of them: there a free row's
    greedy reply can change when other free rows of other lengths share its batch (measured: six
    free rows cut to the constrained rows' lengths flip "Name three colors." as often as the
    constrained rows do), so the constraint's own effect is only visible on fp32."""
    model = request.getfixturevalue("real_model" if request.param == "torch" else "openvino_fp32_model")
    svc = Service.build(model, None, GREEDY, limits=Limits(len(SCHEMAS), 64))
    yield svc
    svc.close()


def test_mixed_batch_free_rows_keep_their_greedy_replies(batch_invariant_service):
    service = batch_invariant_service
    prompts = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?"]
    alone = [_submit(service, p, GREEDY).result(120).text for p in prompts]
    constrained = [_submit(service, prompt, GREEDY.replace(constraint=Constraint.json_schema(schema)))
                   for _, schema, prompt in SCHEMAS[:6]]
    mixed = [_submit(service, p, GREEDY) for p in prompts]
    assert [s.result(120).text for s in mixed] == alone
    assert all(s.result(120).finish_reason is FinishReason.STOP for s in constrained)
