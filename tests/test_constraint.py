"""The Constraint value: OpenAI's response_format, schemas from dicts / JSON / pydantic, params."""

from __future__ import annotations

import pickle

import pytest

from chatstream_lab.config import SamplingParams, ServeConfig
from chatstream_lab.constraint import Constraint, ConstraintKind, response_format_constraint
from chatstream_lab.errors import InvalidParameter

SCHEMA = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}


def test_response_format_shapes():
    assert response_format_constraint(None) is None
    assert response_format_constraint({"type": "text"}) is None
    assert response_format_constraint({"type": "json_object"}).kind is ConstraintKind.JSON_OBJECT
    c = response_format_constraint({"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA,
                                                                          "strict": True}})
    assert (c.kind, c.name, c.schema) == (ConstraintKind.JSON_SCHEMA, "r", SCHEMA)
    assert list(c.schema["properties"]) == ["b", "a"]  # declared order kept: it is the reply's order


@pytest.mark.parametrize("value, field", [
    ("json", "response_format"), ({"type": "yaml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA, "strict": "yes"}}, "response_format.json_schema.strict"),
    ({"type": "json_schema", "json_schema": {"schema": [1]}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": SCHEMA}}, "response_format.json_schema.name"),
])
def test_bad_response_formats_name_the_field(value, field):
    with pytest.raises(InvalidParameter) as e:
        response_format_constraint(value)
    assert e.value.name == field


def test_pydantic_class_and_json_text():
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        population: int

    c = Constraint.json_schema(City)
    assert c.name == "City" and c.schema["required"] == ["name", "population"]
    assert Constraint.json_schema('{"type": "integer"}').schema == {"type": "integer"}


def test_constraint_is_a_sampling_param_in_config_id_and_round_trips():
    c = Constraint.json_schema(SCHEMA)
    params = SamplingParams(constraint=c)
    assert SamplingParams(**params.as_dict()) == params  # a params dict read back (seed sessions)
    assert pickle.loads(pickle.dumps(params)) == params
    assert ServeConfig("m", None, params).config_id != ServeConfig("m", None, SamplingParams()).config_id
    with pytest.raises(InvalidParameter) as e:
        SamplingParams(constraint="json")
    assert e.value.name == "constraint"
    assert Constraint.regex("a+").as_dict() == {"kind": "regex", "regex": "a+"}
    with pytest.raises(InvalidParameter):
        Constraint.regex("(")
