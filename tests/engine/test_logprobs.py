"""Token log-probabilities and scoring: checked against the model's own forward on the same ids."""

from __future__ import annotations

import threading

import pytest
import torch

import chatstream_lab as csl
from chatstream_lab.admission import AdmissionGate
from chatstream_lab.config import Limits, SamplingParams, ServeConfig
from chatstream_lab.engine import Engine
from chatstream_lab.engine.batching import decoder as decoder_module
from chatstream_lab.engine.remote import RemoteEngine
from chatstream_lab.errors import InvalidParameter
from chatstream_lab.models import remote_model
from chatstream_lab.prompts import encode_messages, encode_reply, resolve_template
from chatstream_lab.service import Service
from chatstream_lab.types import Delta, Finished, TokenLogprob

TOL = 1e-3


def _ids(model, messages) -> list[int]:
    return list(encode_messages(resolve_template(None, model.tokenizer), model.tokenizer, messages).ids)


def _logprobs(events) -> list[TokenLogprob]:
    return [lp for e in events if isinstance(e, Delta) for lp in e.logprobs]


def _reference(lm, ids: list[int], start: int) -> torch.Tensor:
    """log_softmax of the model's own full forward: row j is the distribution of ids[start + j]."""
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[start - 1:-1]


def _check_against_reference(lm, prompt: list[int], lps: list[TokenLogprob], k: int) -> None:
    ref = _reference(lm, prompt + [t.token_id for t in lps], len(prompt))
    for j, t in enumerate(lps):
        assert abs(t.logprob - float(ref[j, t.token_id])) < TOL, (j, t)
        assert len(t.top) == k
        values = [a.logprob for a in t.top]
        assert values == sorted(values, reverse=True)
        assert t.logprob <= t.top[0].logprob + TOL
        want_ids = torch.topk(ref[j], k).indices.tolist()
        assert [a.token_id for a in t.top][:2] == want_ids[:2]  # ties below the top may swap
        for a in t.top:
            assert abs(a.logprob - float(ref[j, a.token_id])) < TOL
            if a.token_id == t.token_id:
                assert abs(a.logprob - t.logprob) < 1e-6


# -- parameters and the scripted model (fast) ------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 21, True, 2.0, "3"])
def test_logprobs_out_of_range_is_invalid_and_named(bad) -> None:
    with pytest.raises(InvalidParameter) as err:
        SamplingParams(logprobs=bad)
    assert err.value.name == "logprobs"


def test_logprobs_do_not_change_the_config_id() -> None:
    a = ServeConfig("m", None, SamplingParams(temperature=0))
    assert a.config_id == a.replace(logprobs=5).config_id
    assert a.config_id != a.replace(temperature=0.5).config_id


def test_off_costs_no_log_softmax(scripted, monkeypatch) -> None:
    calls = []
    real = torch.log_softmax
    monkeypatch.setattr(decoder_module.torch, "log_softmax", lambda *a, **k: calls.append(1) or real(*a, **k))
    events = list(csl.stream(scripted("Hello there"), "hi", temperature=0))
    assert calls == [] and all(e.logprobs == () for e in events if isinstance(e, Delta))
    events = list(csl.stream(scripted("Hello there"), "hi", temperature=0, logprobs=0))
    assert calls and all(len(e.logprobs) == len(e.token_ids) for e in events if isinstance(e, Delta))


def test_scripted_logprobs_are_consistent(scripted) -> None:
    events = list(csl.stream(scripted("Hé!"), "hi", temperature=0, logprobs=3))
    lps = _logprobs(events)
    assert [t.token_id for t in lps] == list("Hé!".encode())  # the byte tokenizer: é is two tokens
    assert b"".join(t.raw for t in lps).decode() == "Hé!" == events[-1].text
    for t in lps:
        assert t.top[0].token_id == t.token_id and abs(t.logprob) < 1e-6
        assert [a.logprob for a in t.top] == sorted((a.logprob for a in t.top), reverse=True)
        assert t.top[1].logprob < -15


def test_batched_rows_with_and_without_logprobs(scripted) -> None:
    lm = scripted("one two three", token_delay=0.002)
    with Engine(lm, num_of_concurrent_executions=3) as engine:
        ids = _ids(lm, "hi")
        streams = [engine.submit(ids, SamplingParams(temperature=0, logprobs=k)) for k in (None, 2, 5)]
        results = [list(s) for s in streams]
    for k, events in zip((None, 2, 5), results):
        assert events[-1].text == "one two three"
        deltas = [e for e in events if isinstance(e, Delta) and e.token_ids]
        if k is None:
            assert all(d.logprobs == () for d in deltas)
        else:
            assert all(len(d.logprobs) == 1 and len(d.logprobs[0].top) == k for d in deltas)


def test_scripted_score_favours_the_script(scripted) -> None:
    lm = scripted("Paris.")
    good = csl.score(lm, "capital?", "Paris.", top=2)
    bad = csl.score(lm, "capital?", "Rome!")
    assert good.text == "Paris." and len(good.tokens) == 6 and good.prompt_tokens > 0
    assert good.mean_logprob > -1e-3 > -10 > bad.mean_logprob
    assert all(len(t.top) == 2 for t in good.tokens)
    with pytest.raises(InvalidParameter) as err:
        csl.score(lm, "capital?", "")
    assert err.value.name == "reply"


def test_engine_scores_on_its_own_thread(scripted) -> None:
    lm = scripted("Paris.")
    service = Service.build(lm, params=SamplingParams(temperature=0))
    seen: list[str] = []
    try:
        engine = service.generator.start()
        engine.wait_ready(30)  # the step backend is built on the engine's thread
        backend = engine._decoder.backend
        original = backend.score
        backend.score = lambda ids, start: seen.append(threading.current_thread().name) or original(ids, start)
        got = service.score("capital?", "Paris.", top=1)
        assert seen == ["chatstream-engine"]
        assert got == csl.score(lm, "capital?", "Paris.", top=1)
        with pytest.raises(InvalidParameter):
            engine.score([1, 2], 1, top=21)
    finally:
        service.close()


def test_remote_model_refuses_logprobs_and_scoring() -> None:
    engine = RemoteEngine(remote_model("http://127.0.0.1:9"), gate=AdmissionGate(Limits(1, 1)))
    try:
        with pytest.raises(InvalidParameter) as err:
            engine.submit([1, 2, 3], SamplingParams(logprobs=1))
        assert err.value.name == "logprobs"
        with pytest.raises(InvalidParameter):
            engine.score([1, 2, 3], 1)
        with pytest.raises(InvalidParameter):
            csl.score(remote_model("http://127.0.0.1:9"), "hi", "there")
    finally:
        engine.close()


# -- the real model ---------------------------------------------------------------------------------
@pytest.mark.real_model
def test_greedy_logprobs_match_the_forward_and_pick_the_top(real_model) -> None:
    prompt = _ids(real_model, "What is the capital of France?")
    events = list(csl.stream(real_model, "What is the capital of France?", temperature=0,
                             max_new_tokens=12, logprobs=5))
    lps = _logprobs(events)
    # one per emitted token; the end-of-turn token that stopped it is not reported (as OpenAI)
    assert len(lps) == sum(len(e.token_ids) for e in events if isinstance(e, Delta)) >= 6
    _check_against_reference(real_model, prompt, lps, 5)
    assert all(t.top[0].token_id == t.token_id for t in lps)  # greedy picks the top-1
    assert "Paris" in "".join(t.text for t in lps)


@pytest.mark.real_model
def test_sampled_and_batched_logprobs_match_the_forward(real_model) -> None:
    """Three rows of different lengths decode together (padding, mask, oneDNN linears); one asks
    for nothing. Sampled tokens still get the raw (pre-temperature) logprob."""
    prompts = ["Name a red fruit.", "What is 2+2? Answer in one long sentence please.", "Hi"]
    ks = (3, None, 5)
    with Engine(real_model, num_of_concurrent_executions=3) as engine:
        streams = [engine.submit(_ids(real_model, p), SamplingParams(temperature=0.9, top_p=0.95, seed=i,
                                                                    max_new_tokens=10, logprobs=k))
                   for i, (p, k) in enumerate(zip(prompts, ks))]
        results = [list(s) for s in streams]
    for p, k, events in zip(prompts, ks, results):
        assert isinstance(events[-1], Finished)
        lps = _logprobs(events)
        if k is None:
            assert lps == []
        else:
            assert lps and len(lps) == sum(len(e.token_ids) for e in events if isinstance(e, Delta))
            _check_against_reference(real_model, _ids(real_model, p), lps, k)


@pytest.mark.real_model
def test_score_equals_the_forward_and_the_greedy_stream(real_model) -> None:
    question = "What is the capital of France?"
    events = list(csl.stream(real_model, question, temperature=0, max_new_tokens=8, logprobs=2))
    streamed = _logprobs(events)
    reply = events[-1].text
    got = csl.score(real_model, question, reply, top=2)
    prompt = _ids(real_model, question)
    reply_ids = list(encode_reply(real_model.tokenizer, reply))
    assert [t.token_id for t in got.tokens] == reply_ids == [t.token_id for t in streamed]
    ref = _reference(real_model, prompt + reply_ids, len(prompt))
    for j, t in enumerate(got.tokens):
        assert abs(t.logprob - float(ref[j, t.token_id])) < TOL
        assert abs(t.logprob - streamed[j].logprob) < TOL
        assert [a.token_id for a in t.top] == [a.token_id for a in streamed[j].top]
    assert abs(got.logprob - sum(t.logprob for t in got.tokens)) < 1e-9
    assert got.mean_logprob > csl.score(real_model, question, "Bananas are purple.").mean_logprob
