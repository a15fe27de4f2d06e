"""The engine on the bundled SmolLM2-135M-Instruct: correctness against transformers itself."""

from __future__ import annotations

import pytest
import torch

import chatstream_lab as csl
from chatstream_lab.config import SamplingParams
from chatstream_lab.engine import Engine
from chatstream_lab.prompts import encode_messages, resolve_template
from chatstream_lab.types import Delta, Finished, FinishReason

pytestmark = pytest.mark.real_model

PROMPTS = [
    "What is the capital of France?",
    "日本の首都はどこですか？日本語で答えてください。",
    "Write a haiku about the sea.",
]


def _ids(model, messages) -> list[int]:
    """The prompt ids of ``messages`` with the model's own chat template."""
    return list(encode_messages(resolve_template(None, model.tokenizer), model.tokenizer, messages).ids)


def _hf_greedy(lm, ids: list[int], max_new_tokens: int) -> str:
    out = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            max_new_tokens=max_new_tokens, do_sample=False)
    return lm.tokenizer.decode(out[0][len(ids):], skip_special_tokens=True)


def test_public_api_answers_paris(real_model) -> None:
    events = list(csl.stream(real_model, "What is the capital of France?", temperature=0))
    final = events[-1]
    assert isinstance(final, Finished) and final.finish_reason is FinishReason.STOP
    assert "Paris" in final.text
    assert final.text == "".join(e.text for e in events if isinstance(e, Delta))
    assert final.usage.completion_tokens > 3 and final.usage.tokens_per_s > 0


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_stream_equals_transformers_generate(real_model, prompt: str) -> None:
    ids = _ids(real_model, prompt)
    assert ids == real_model.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=False)
    expected = _hf_greedy(real_model, ids, 32)
    got = csl.stream(real_model, prompt, temperature=0, max_new_tokens=32).text()
    assert got == expected


def test_batched_greedy_equals_single_request(real_model) -> None:
    questions = ["What is the capital of France?", "日本の首都はどこですか？", "Hi", "List three colors.",
                 "Explain gravity in one sentence.", "What is 2+2?", "Name a fruit that is red.",
                 "Tell me a short story about a brave cat who sails across the ocean."]
    jobs = [(_ids(real_model, q), 4 + 3 * i) for i, q in enumerate(questions)]
    singles = [csl.engine.generate.InlineStream(real_model, ids, SamplingParams(temperature=0, max_new_tokens=m))
               .text() for ids, m in jobs]
    with Engine(real_model, num_of_concurrent_executions=8, max_queue_size=0, prefill_chunk=16) as engine:
        streams = [engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=m)) for ids, m in jobs]
        batched = [s.text(timeout=120) for s in streams]
    assert batched == singles


def test_shared_prompt_prefix_is_prefilled_once_and_changes_no_reply(real_model) -> None:
    questions = ["What is the capital of France?", "Hi", "List three colors.", "What is 2+2?",
                 "Explain gravity in one sentence.", "Name a fruit that is red."]
    ids = [_ids(real_model, q) for q in questions]
    params = SamplingParams(temperature=0, max_new_tokens=12)

    def run(prefix_cache_mb: float):
        with Engine(real_model, num_of_concurrent_executions=6, max_queue_size=0,
                    prefix_cache_mb=prefix_cache_mb) as engine:
            texts = [s.text(timeout=120) for s in [engine.submit(i, params) for i in ids]]
            again = engine.submit(ids[0], params).text(timeout=60)  # one prompt alone: the chunked path
            return texts, again, engine._decoder.backend.prefixes

    cached, again, prefixes = run(64)
    plain, again_plain, disabled = run(0)
    assert disabled is None and prefixes is not None
    assert cached == plain and again == again_plain == cached[0]
    system_prompt = 20  # the default system prompt and the user marker are ~24 tokens
    assert prefixes.hits == len(ids) + 1 and prefixes.tokens_reused >= (len(ids) + 1) * system_prompt


def test_seeded_sampling_is_reproducible_whatever_the_batch(real_model) -> None:
    ids = _ids(real_model, "Tell me something about the moon.")
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_new_tokens=16)
    alone = csl.engine.generate.InlineStream(real_model, ids, params).text()
    with Engine(real_model, num_of_concurrent_executions=3, max_queue_size=0) as engine:
        others = [engine.submit(_ids(real_model, q), SamplingParams(temperature=1.0, max_new_tokens=12))
                  for q in ("Hello there", "Count to five")]
        mine = engine.submit(ids, params)
        assert mine.text(timeout=60) == alone
        for s in others:
            s.result(60)


def test_bfloat16_path_runs(real_model) -> None:
    bf16 = csl.load_model(dtype="bfloat16", progress=False)  # its own copy: never touch the shared fp32 model
    assert next(bf16.model.parameters()).dtype == torch.bfloat16 and bf16.dtype == "bfloat16"
    text = csl.stream(bf16, "What is the capital of France?", temperature=0, max_new_tokens=12).text()
    assert "Paris" in text
