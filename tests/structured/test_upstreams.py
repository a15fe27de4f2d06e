"""Constraints in the upstreams' own fields: GBNF for llama-server, structured_outputs for vLLM
(real upstreams run them in tests/structured/test_remote_structured.py)."""

from __future__ import annotations

import re

import pytest

from chatstream_lab.constraint import Constraint
from chatstream_lab.prompts.output_format import output_format
from chatstream_lab.structured.gbnf import ebnf_to_gbnf, to_gbnf
from chatstream_lab.structured.upstreams import upstream_fields

from .schemas import SCHEMAS

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _rule_names(grammar: str) -> list[str]:
    return [line.split(" ::= ")[0] for line in grammar.splitlines() if " ::= " in line]


@pytest.mark.parametrize("name, schema", [(n, s) for n, s, _ in SCHEMAS])
def test_every_corpus_schema_writes_as_gbnf(name, schema):
    g = to_gbnf(Constraint.json_schema(schema)).grammar
    assert g.startswith("root ::= g0-root\n")
    assert all(re.fullmatch(r"[A-Za-z0-9-]+", n) for n in _rule_names(g)), name
    assert "(=" not in g and "-1}" not in g and "\\0" not in g.replace("\\x00", "")
    assert len(set(_rule_names(g))) == len(_rule_names(g))


def test_ebnf_conversion_details():
    rules, root = ebnf_to_gbnf('root ::= (("a" b_c{0, -1} [^\\0-\\x1f]) (=("x")))\nb_c ::= ("b"{2, 3})', "p-")
    assert root == "p-root"
    assert rules == 'p-root ::= (("a" p-b-c{0,} [^\\x00-\\x1f]) )\np-b-c ::= ("b"{2,3})'


@pytest.mark.parametrize("choice, lazy", [("auto", True), ("required", False),
                                          ({"type": "function", "function": {"name": "get_weather"}}, False)])
def test_tool_calls_become_a_grammar_lazy_for_auto(choice, lazy):
    fields = upstream_fields(output_format(None, [WEATHER], choice).constraint)
    assert '"<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": "' in fields["grammar"]
    assert fields.get("grammar_lazy", False) is lazy
    if lazy:
        assert fields["grammar_triggers"] == [{"type": 1, "value": "<tool_call>"}]
    assert "structural_tag" in fields["structured_outputs"]


def test_json_schema_fields():
    c = Constraint.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}}, name="thing")
    fields = upstream_fields(c)
    assert fields["json_schema"] == c.schema  # llama-server: natively
    assert fields["structured_outputs"]["grammar"].startswith("root ::= g0_root")  # vLLM: our compact grammar
    assert upstream_fields(Constraint.regex("(yes|no)"))["structured_outputs"] == {"regex": "(yes|no)"}


def test_plain_ebnf_has_no_builtins_and_keeps_the_compact_grammar():
    from chatstream_lab.structured import portable_grammar_text

    for _, schema, _ in SCHEMAS:
        text = portable_grammar_text(Constraint.json_schema(schema))
        assert "Regex(" not in text and "(=" not in text and "-1}" not in text
    assert '": "' in portable_grammar_text(Constraint.json_schema(SCHEMAS[0][1]))  # compact separators
