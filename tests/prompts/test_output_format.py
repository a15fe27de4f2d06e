"""One request's output format (response_format + tools together) and reading a finished reply."""

from __future__ import annotations

import pytest

from chatstream_lab.constraint import Constraint, ConstraintKind
from chatstream_lab.errors import GenerationError, InvalidParameter
from chatstream_lab.prompts.output_format import as_constraint, output_format, read_reply, validated
from chatstream_lab.prompts.tools import call_text
from chatstream_lab.types import Finished, FinishReason, RequestId, Usage

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CITY = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def _fin(text: str, reason: FinishReason = FinishReason.STOP) -> Finished:
    return Finished(RequestId("r"), reason, text, Usage(completion_tokens=5))


def test_notebook_forms_of_response_format():
    from pydantic import BaseModel

    class City(BaseModel):
        name: str

    assert as_constraint(City).schema["required"] == ["name"]
    assert as_constraint(CITY).schema == CITY
    assert as_constraint({"type": "json_object"}).kind is ConstraintKind.JSON_OBJECT
    assert as_constraint(None) is None and as_constraint(Constraint.regex("a")) == Constraint.regex("a")


def test_tools_and_a_response_format_together_allow_either():
    fmt = output_format(CITY, [WEATHER], "auto")
    assert fmt.constraint.kind is ConstraintKind.STRUCTURAL_TAG
    assert fmt.constraint.tag["format"]["type"] == "or"
    assert fmt.calls_tools and fmt.json_reply
    required = output_format(CITY, [WEATHER], "required")
    assert required.constraint.tag["format"]["type"] == "triggered_tags"  # a call is the reply


def test_read_reply_splits_calls_and_parses_json():
    fmt = output_format(CITY, [WEATHER])
    calls = read_reply(_fin(call_text("get_weather", {"city": "Paris"})), fmt)
    assert calls.tool_calls[0].args == {"city": "Paris"} and calls.parsed is None
    answer = read_reply(_fin('{"name": "Paris"}'), fmt)
    assert answer.parsed == {"name": "Paris"} and answer.tool_calls == ()

    from pydantic import BaseModel

    class City(BaseModel):
        name: str

    assert validated(answer, City) == City(name="Paris")
    with pytest.raises(InvalidParameter):
        validated(answer, dict)


@pytest.mark.parametrize("reason", [FinishReason.LENGTH, FinishReason.ERROR, FinishReason.CANCELLED])
def test_a_reply_that_did_not_end_normally_is_never_presented_as_done(reason):
    with pytest.raises(GenerationError, match="max_new_tokens"):
        read_reply(_fin('{"name": "Par', reason), output_format(CITY))
