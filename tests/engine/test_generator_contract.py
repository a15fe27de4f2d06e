"""The request-level contract, on the bundled model, for every real backend (torch and OpenVINO).

Each test runs once per backend (the ``real_backend_model`` fixture) through
``build_generator``, the same path the Service takes, so whatever produces the tokens the
front-end sees the same events, limits and text handling.
"""

from __future__ import annotations

import time

import pytest

from chatstream_lab.admission import AdmissionGate
from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.engine.factory import build_generator
from chatstream_lab.errors import QueueFull
from chatstream_lab.prompts import encode_messages, resolve_template
from chatstream_lab.types import Delta, Finished, FinishReason, Queued

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(240)]

GREEDY = SamplingParams(temperature=0, max_new_tokens=24)
PARIS = "What is the capital of France?"


def _ids(model, text: str) -> list[int]:
    return list(encode_messages(resolve_template(None, model.tokenizer), model.tokenizer, text).ids)


@pytest.fixture
def make_generator():
    made = []

    def make(model, limit: int = 2, queue: int = 4):
        gen = build_generator(model, AdmissionGate(Limits(limit, queue)))
        made.append(gen)
        return gen.start()

    yield make
    for gen in made:
        gen.close()


def test_one_finished_after_deltas_that_add_up(real_backend_model, make_generator) -> None:
    gen = make_generator(real_backend_model)
    events = list(gen.submit(_ids(real_backend_model, PARIS), GREEDY))
    assert isinstance(events[0], Queued)
    finals = [e for e in events if isinstance(e, Finished)]
    assert len(finals) == 1 and events[-1] is finals[0]
    final = finals[0]
    assert final.finish_reason is FinishReason.STOP
    assert final.text == "".join(e.text for e in events if isinstance(e, Delta))
    assert final.text == "The capital of France is Paris."
    assert final.usage.prompt_tokens == len(_ids(real_backend_model, PARIS))
    assert final.usage.completion_tokens >= 7 and final.usage.ttft_s is not None


def test_max_new_tokens_gives_length(real_backend_model, make_generator) -> None:
    gen = make_generator(real_backend_model)
    final = gen.submit(_ids(real_backend_model, PARIS), GREEDY.replace(max_new_tokens=3)).result(60)
    assert final.finish_reason is FinishReason.LENGTH and final.usage.completion_tokens == 3


def test_stop_string_split_across_tokens_never_leaks(real_backend_model, make_generator) -> None:
    gen = make_generator(real_backend_model)
    stream = gen.submit(_ids(real_backend_model, PARIS), GREEDY, stop_strings=("of Fr",),
                        output_replacements=(("capital", "CAPITAL"),))
    events = list(stream)
    final = events[-1]
    assert isinstance(final, Finished) and final.finish_reason is FinishReason.STOP
    assert final.text == "The CAPITAL "  # " of" and " France" are two tokens; neither leaked
    assert "".join(e.text for e in events if isinstance(e, Delta)) == final.text


def test_deltas_are_whole_utf8(real_backend_model, make_generator) -> None:
    gen = make_generator(real_backend_model)
    events = list(gen.submit(_ids(real_backend_model, "日本の首都はどこですか？日本語で答えてください。"),
                             GREEDY.replace(max_new_tokens=32)))
    deltas = [e.text for e in events if isinstance(e, Delta)]
    assert all("\ufffd" not in d for d in deltas)
    assert any(ord(ch) > 0x3000 for d in deltas for ch in d)  # it did answer in Japanese
    assert "".join(deltas) == events[-1].text


def test_queue_full_is_synchronous_and_cancel_frees_everything(real_backend_model, make_generator) -> None:
    gen = make_generator(real_backend_model, limit=1, queue=1)
    long = SamplingParams(temperature=0, max_new_tokens=400)
    ids = _ids(real_backend_model, "Write a long story about the sea.")
    running = gen.submit(ids, long)
    queued = gen.submit(ids, long)
    with pytest.raises(QueueFull):
        gen.submit(ids, long)
    first = next(iter(queued))
    assert isinstance(first, Queued) and first.position in (1, 2)  # 2 if read before the first admit
    queued.cancel()
    cancelled = queued.result(10)
    assert cancelled.finish_reason is FinishReason.CANCELLED and cancelled.usage.completion_tokens == 0
    for ev in running:  # wait until it streams, then cancel it mid-reply
        if isinstance(ev, Delta):
            break
    t0 = time.perf_counter()
    running.cancel()
    fin = running.result(10)
    assert fin.finish_reason is FinishReason.CANCELLED and 0 < fin.usage.completion_tokens < 400
    assert time.perf_counter() - t0 < 2.0  # within a step or two, not at the end of the reply
    assert gen.gate.snapshot().running == 0 and gen.gate.snapshot().waiting == 0
    assert gen.submit(ids, GREEDY.replace(max_new_tokens=2)).result(30).finish_reason is FinishReason.LENGTH


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(real_backend_model, make_generator) -> None:
    gen = make_generator(real_backend_model)
    ids = _ids(real_backend_model, "Tell me a story about a cat.")
    sampled = SamplingParams(temperature=1.0, top_p=0.95, seed=1234, max_new_tokens=24)
    first = gen.submit(ids, sampled).result(60).text
    assert gen.submit(ids, sampled).result(60).text == first
    others = {gen.submit(ids, sampled.replace(seed=s)).result(60).text for s in (1, 2, 3)}
    assert len(others | {first}) > 1  # the seed does change the reply
    greedy = gen.submit(ids, GREEDY).result(60).text
    top1 = gen.submit(ids, SamplingParams(temperature=0.8, top_k=1, seed=5, max_new_tokens=24)).result(60).text
    assert top1 == greedy


def test_concurrent_greedy_requests_each_get_their_reply(real_backend_model, make_generator) -> None:
    questions = [PARIS, "What is 2+2?", "Name a fruit that is red.", "List three colors."]
    gen = make_generator(real_backend_model, limit=4, queue=0)
    streams = [gen.submit(_ids(real_backend_model, q), GREEDY) for q in questions]
    finals = [s.result(120) for s in streams]
    assert all(f.finish_reason in (FinishReason.STOP, FinishReason.LENGTH) for f in finals)
    assert finals[0].text == "The capital of France is Paris."
    assert len({f.text for f in finals}) == len(questions)
    assert gen.gate.snapshot().running == 0
