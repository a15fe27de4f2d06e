"""The grammar layer on the bundled model's real tokenizer: compile, cache, per-row matchers and
the batch mask (constrained and free rows together)."""

from __future__ import annotations

import time

import pytest
import torch

from chatstream_lab.constraint import Constraint
from chatstream_lab.errors import InvalidParameter
from chatstream_lab.structured import TokenMasks, check_constraint, grammar_text, grammars_for
from chatstream_lab.structured.matcher import unpack

from .schemas import SCHEMAS

PERSON = Constraint.json_schema({"type": "object", "properties": {"name": {"type": "string"},
                                                                  "age": {"type": "integer"}},
                                 "required": ["name", "age"]})


@pytest.fixture(scope="module")
def grammars(real_model):
    return grammars_for(real_model.tokenizer, 49152, real_model.stop_token_ids)


def _feed(matcher, tokenizer, text: str) -> bool:
    return all(matcher.accept(t) for t in tokenizer.encode(text, add_special_tokens=False))


def test_every_corpus_schema_compiles(grammars):
    assert len(SCHEMAS) >= 30
    for name, schema, _ in SCHEMAS:
        check_constraint(Constraint.json_schema(schema))
        assert grammars.compiled(Constraint.json_schema(schema)) is not None, name


def test_compiled_once_per_schema_and_tokenizer(real_model, grammars):
    assert grammars_for(real_model.tokenizer, 49152, real_model.stop_token_ids) is grammars
    first = grammars.compiled(PERSON)
    t = time.perf_counter()
    assert grammars.compiled(Constraint.json_schema(PERSON.schema)) is first  # an equal constraint: cached
    assert time.perf_counter() - t < 0.005


def test_a_matcher_follows_a_reply_and_ends_it(real_model, grammars):
    tok = real_model.tokenizer
    m = grammars.matcher(PERSON)
    assert {tok.decode([i]) for i in m.allowed()} == {"{", '{"'}  # property order: name first, compact
    assert _feed(m, tok, '{"name": "Ann", "age": 31}')
    assert m.allowed() == list(real_model.stop_token_ids[:1]) or set(m.allowed()) <= set(real_model.stop_token_ids)
    assert not m.terminated
    assert m.accept(real_model.stop_token_ids[0]) and m.terminated
    bad = grammars.matcher(PERSON)
    assert not _feed(bad, tok, '{"age": 31')


@pytest.mark.parametrize("constraint, field", [
    (Constraint.json_schema({"type": "objectx"}), "response_format"),
    (Constraint.json_schema({"type": "integer", "minimum": 3, "maximum": 1}), "response_format"),
    (Constraint.json_schema({"$ref": "#/nowhere"}), "response_format"),
])
def test_a_schema_that_cannot_compile_names_its_field(constraint, field):
    with pytest.raises(InvalidParameter) as e:
        check_constraint(constraint)
    assert e.value.name == field and "cannot be compiled" in str(e.value) and ".cc:" not in str(e.value)


def test_regex_and_json_object(real_model, grammars):
    tok = real_model.tokenizer
    m = grammars.matcher(Constraint.regex("(yes|no)"))
    assert _feed(m, tok, "yes") and not _feed(grammars.matcher(Constraint.regex("(yes|no)")), tok, "maybe")
    assert _feed(grammars.matcher(Constraint.json_object()), tok, '{"any": [1, 2]}')
    assert "root" in grammar_text(PERSON)


def test_masks_touch_only_constrained_rows_and_report_dead_ones(grammars, real_model):
    masks = TokenMasks(49152)
    logits = torch.randn(3, 49152)
    free = logits[0].clone()
    live = grammars.matcher(PERSON)
    dead = grammars.matcher(PERSON)
    assert dead.accept(real_model.tokenizer.encode("{")[0])
    for t in real_model.tokenizer.encode('"name": "A", "age": 1}'):
        assert dead.accept(t)
    assert dead.accept(real_model.stop_token_ids[0]) and dead.terminated  # a finished grammar allows nothing
    assert masks.apply(logits, [None, live, dead]) == (2,)
    assert torch.equal(logits[0], free)
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed == sorted(live.allowed())


def test_unpack_matches_xgrammar(grammars):
    import xgrammar as xgr

    m = grammars.matcher(PERSON)
    bitmask = xgr.allocate_token_bitmask(1, 49152)
    m.fill(bitmask, 0)
    logits = torch.zeros(1, 49152)
    xgr.apply_token_bitmask_inplace(logits, bitmask)
    assert torch.equal(unpack(bitmask, 49152)[0], torch.isfinite(logits[0]))


def test_allowed_share_is_the_raw_probability_of_the_allowed_tokens(grammars):
    masks = TokenMasks(49152)
    logits = torch.randn(2, 49152)
    raw = torch.log_softmax(logits, dim=-1)
    m = grammars.matcher(PERSON)
    allowed = m.allowed()
    out = masks.constrain(logits, [m, None], [raw[0], raw[1]])
    assert out.dead == frozenset() and out.allowed[1] is None
    assert out.allowed[0] == pytest.approx(float(raw[0, allowed].exp().sum()), rel=1e-4)
