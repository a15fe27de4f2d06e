"""Constrained decoding in the batching engine, on the scripted model (its byte vocabulary gets a
real xgrammar grammar): masks on the raw logits, the first token included; raw logprobs with the
share the grammar allowed; dead rows fail alone; free rows untouched by their constrained peers."""

from __future__ import annotations

import pytest

from chatstream_lab.config import SamplingParams
from chatstream_lab.constraint import Constraint
from chatstream_lab.engine import Engine
from chatstream_lab.errors import InvalidParameter
from chatstream_lab.structured import RowMatcher
from chatstream_lab.types import Delta, FinishReason

GREEDY = SamplingParams(temperature=0, max_new_tokens=64)
YES_NO = Constraint.regex("(yes|no)")


def _ids(model, text: str = "hi") -> list[int]:
    return model.tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture
def engine(scripted):
    engines: list[Engine] = []

    def make(reply, **kw) -> Engine:
        e = Engine(scripted(reply), num_of_concurrent_executions=4, **kw).start()
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.close()


def test_the_grammar_overrides_the_model_from_the_first_token(engine):
    e = engine("hello there")
    fin = e.submit(_ids(e.model), GREEDY.replace(constraint=YES_NO)).result(10)
    assert fin.finish_reason is FinishReason.STOP and fin.text in ("yes", "no")  # not "hello there"
    assert e.submit(_ids(e.model), GREEDY).result(10).text == "hello there"


def test_a_conforming_reply_passes_unchanged_and_logprobs_stay_raw(engine):
    e = engine('{"a": 12}')
    schema = Constraint.json_schema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    events = list(e.submit(_ids(e.model), GREEDY.replace(constraint=schema, logprobs=2)))
    tokens = [t for ev in events if isinstance(ev, Delta) for t in ev.logprobs]
    *reply, end = tokens  # the stop token that ended the reply comes last
    assert "".join(t.text for t in reply) == '{"a": 12}' and end.ends_reply
    assert all(t.logprob > -0.01 for t in tokens)  # the script's own raw probability, ~1
    assert all(t.allowed is not None and t.allowed > 0.99 for t in tokens)  # the grammar agreed
    forced = list(e.submit(_ids(e.model), GREEDY.replace(constraint=YES_NO, logprobs=2)))
    first = next(t for ev in forced if isinstance(ev, Delta) for t in ev.logprobs)
    assert first.logprob < -10 and first.allowed < 1e-6  # raw: the model wanted something else


class _Dead(RowMatcher):
    """A grammar state that allows no token (as a grammar whose every path is closed would)."""

    def fill(self, bitmask, row):
        bitmask[row].zero_()


def test_a_row_whose_grammar_allows_nothing_fails_alone(engine, monkeypatch):
    from chatstream_lab.structured.grammar import TokenizerGrammars

    dead_constraint = Constraint.regex("(no|nope)")
    original = TokenizerGrammars.matcher

    def matcher(self, constraint):
        m = original(self, constraint)
        if constraint == dead_constraint:
            m.__class__ = _Dead
        return m

    monkeypatch.setattr(TokenizerGrammars, "matcher", matcher)
    e = engine("yes")
    dead = e.submit(_ids(e.model), GREEDY.replace(constraint=dead_constraint))
    alive = e.submit(_ids(e.model), GREEDY.replace(constraint=YES_NO))
    free = e.submit(_ids(e.model), GREEDY)
    assert dead.result(10).finish_reason is FinishReason.ERROR
    assert "allows no token" in (dead.result(10).error or "")
    assert alive.result(10).text == "yes" and free.result(10).text == "yes"


def test_free_rows_keep_their_replies_next_to_constrained_ones(engine):
    e = engine(lambda prompt: "free reply text" if "free" in prompt else "x")
    alone = e.submit(_ids(e.model, "free"), GREEDY).result(10).text
    constrained = [e.submit(_ids(e.model, "c"), GREEDY.replace(constraint=YES_NO)) for _ in range(2)]
    mixed = e.submit(_ids(e.model, "free"), GREEDY)
    assert mixed.result(10).text == alone == "free reply text"
    assert all(s.result(10).text in ("yes", "no") for s in constrained)


def test_a_bad_schema_is_refused_at_submit(engine):
    e = engine("x")
    with pytest.raises(InvalidParameter) as exc:
        e.submit(_ids(e.model), GREEDY.replace(constraint=Constraint.json_schema({"type": "nope"})))
    assert exc.value.name == "response_format"
    assert e.gate.snapshot().waiting == 0 and e.gate.snapshot().running == 0


def test_max_new_tokens_cuts_a_constrained_reply_with_length(engine):
    e = engine('{"story": "once upon a time there was a dragon"}')
    schema = Constraint.json_schema({"type": "object", "properties": {"story": {"type": "string"}}})
    fin = e.submit(_ids(e.model), GREEDY.replace(max_new_tokens=8, constraint=schema)).result(10)
    assert fin.finish_reason is FinishReason.LENGTH and fin.text == '{"story"'
