"""Our front-end in front of REAL vLLM (its CPU build, in its own virtualenv), started by the suite.

vLLM serves the converted HF copy of the bundled model (fp32 weights dequantized from the GGUF, the
same weights as our torch engine), so its greedy answer is the torch engine's: "Paris".
One vLLM start costs 1-4 minutes here (three processes import vLLM; the first start compiles), so
this module starts it once.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from _engines import VllmServer

from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.models import remote_model
from chatstream_lab.models.loader import converted_dir
from chatstream_lab.server import create_app
from chatstream_lab.service import Service

from .conftest import seed_reply, serving

pytestmark = [pytest.mark.real_model, pytest.mark.real_engine, pytest.mark.timeout(600)]

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def vllm(real_model) -> Iterator[VllmServer]:  # real_model: the converted copy exists
    with VllmServer(converted_dir()) as srv:
        yield srv


def test_greedy_through_our_front_end_equals_vllms_own_and_says_paris(real_model, vllm) -> None:
    lm = remote_model(vllm.url, tokenizer=real_model)
    service = Service.build(lm, None, SamplingParams(temperature=0, max_new_tokens=32), limits=Limits(4, 4))
    ids = list(service.encode(QUESTION).ids)
    direct = httpx.post(f"{vllm.url}/v1/completions", timeout=120,
                        json={"model": "smollm2", "prompt": ids, "max_tokens": 32, "temperature": 0}).json()
    direct_text = direct["choices"][0]["text"]
    with serving(create_app(service, close_on_shutdown=True)) as url:
        body = httpx.post(url + "/chat_stream", json={"user_input": QUESTION}, timeout=120).text
        ours = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 32}).json()
    assert seed_reply(body) == direct_text == ours["choices"][0]["message"]["content"]
    assert "Paris" in direct_text
    assert real_model.tokenizer.decode(ids).startswith("<|im_start|>system")  # our template was sent


def test_the_harness_scoring_request_gets_the_arrays_vllm_returns(real_model, vllm) -> None:
    """lm-evaluation-harness's loglikelihood request, as a batch (``--batch_size 2``), to vLLM and
    to our endpoint on the same fp32 weights: the same choices, usage, tokens (prompt + the one
    generated, EOS included: " Earth" is where the model stops) and numbers, and the same
    completions ``top_logprobs`` rule (the top N, plus the token itself when not among them)."""
    tok = real_model.tokenizer
    context = "Question: Which planet do we live on?\nAnswer:"
    prompts = [list(tok.encode(context + choice)) for choice in (" Earth", " Mars")]
    body = {"prompt": prompts, "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0, "seed": 1234}
    theirs = httpx.post(f"{vllm.url}/v1/completions", json={**body, "model": "smollm2"}, timeout=120).json()
    service = Service.build(real_model, None, SamplingParams(temperature=0), limits=Limits(4, 4))
    with serving(create_app(service, close_on_shutdown=True)) as url:
        ours = httpx.post(url + "/v1/completions", json=body, timeout=120).json()
    assert [c["index"] for c in ours["choices"]] == [c["index"] for c in theirs["choices"]] == [0, 1]
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # vLLM adds *_details: None
    assert {k: ours["usage"][k] for k in counts} == {k: theirs["usage"][k] for k in counts}
    assert ours["usage"]["completion_tokens"] == 2  # one generated token per prompt, EOS included
    for a, b in zip(ours["choices"], theirs["choices"]):
        mine, vllms = a["logprobs"], b["logprobs"]
        assert a["finish_reason"] == b["finish_reason"] and mine["tokens"] == vllms["tokens"]
        assert len(mine["token_logprobs"]) == len(prompts[a["index"]]) + 1
        assert mine["token_logprobs"][0] is None and vllms["token_logprobs"][0] is None
        for x, y in zip(mine["token_logprobs"][1:], vllms["token_logprobs"][1:]):
            assert abs(x - y) < 5e-3
        for x, y in zip(mine["top_logprobs"][1:], vllms["top_logprobs"][1:]):
            assert set(x) == set(y)
    assert ours["choices"][0]["logprobs"]["tokens"][-1] == "<|im_end|>"
