"""``/v1/completions`` with a batch of prompts (vLLM's four prompt shapes), over a real uvicorn.

The scripted model quotes its prompt ("You said: <prompt>. ..."), so each choice shows which
prompt it answers; the bundled model checks that a batch answers what single requests answer.
"""

from __future__ import annotations

import threading

import httpx
import pytest

from chatstream_lab.models import scripted_model
from chatstream_lab.server import ChatStream, create_app

from .conftest import serving, stats, wait_for

pytestmark = pytest.mark.timeout(120)


def _reply(prompt: str) -> str:
    return f"You said: {prompt[-40:]}. This is a scripted reply."


@pytest.fixture(scope="module")
def url():
    cs = ChatStream(model=scripted_model(token_delay=0.001), template="chatml", temperature=0.0,
                    max_new_tokens=64, num_of_concurrent_executions=2, max_queue_size=4)
    with serving(create_app(cs, close_on_shutdown=True)) as u:
        yield u


def _complete(url: str, **body) -> httpx.Response:
    body.setdefault("max_tokens", 64)
    return httpx.post(url + "/v1/completions", json=body, timeout=60)


@pytest.mark.parametrize("prompt, texts", [
    ("one", ["one"]),
    (["one", "two", "three"], ["one", "two", "three"]),
    (list(b"ids"), ["ids"]),
    ([list(b"first"), list(b"second")], ["first", "second"]),
])
def test_each_prompt_shape_gets_one_choice_per_prompt_in_order(url, prompt, texts):
    r = _complete(url, prompt=prompt)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == list(range(len(texts)))
    assert [c["text"] for c in body["choices"]] == [_reply(t) for t in texts]
    assert all(c["finish_reason"] == "stop" for c in body["choices"])
    usage = body["usage"]
    assert usage["prompt_tokens"] == sum(len(t.encode()) for t in texts)
    assert usage["completion_tokens"] >= sum(len(_reply(t).encode()) for t in texts)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_batch_with_echo_and_logprobs_holds_each_prompts_arrays(url):
    prompts = [list(b"ab"), list(b"xyz")]
    scored = _complete(url, prompt=prompts, max_tokens=0, echo=True, logprobs=1).json()
    assert [c["text"] for c in scored["choices"]] == ["ab", "xyz"]
    assert [len(c["logprobs"]["tokens"]) for c in scored["choices"]] == [2, 3]
    assert scored["usage"] == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}
    both = _complete(url, prompt=prompts, max_tokens=3, echo=True, logprobs=1).json()
    for choice, p in zip(both["choices"], ["ab", "xyz"]):
        lp = choice["logprobs"]
        assert choice["text"] == p + _reply(p)[:3] and lp["token_logprobs"][0] is None
        assert lp["tokens"] == list(p) + list(_reply(p)[:3])
        assert lp["text_offset"] == list(range(len(p) + 3))


@pytest.mark.parametrize("body, param, says", [
    ({"prompt": []}, "prompt", "the prompt is empty"),
    ({"prompt": ["a", ""]}, "prompt", "prompt[1] is empty"),
    ({"prompt": [[1, 2], []]}, "prompt", "prompt[1] is empty"),
    ({"prompt": ["a", "b"], "stream": True}, "stream", "stream takes one prompt"),
    ({"prompt": [[1, 2], [3, 99999]]}, "prompt",
     "prompt[1]: prompt token id 99999 at position 1 is outside the model's vocabulary (ids 0..258)"),
    ({"prompt": [[1, 2], [3, 99999]], "max_tokens": 0, "echo": True, "logprobs": 1}, "prompt",
     "prompt[1]: prompt token id 99999 at position 1"),  # scoring only: the engine's check too
    ({"prompt": [5, 99999], "max_tokens": 0, "echo": True}, "prompt",
     "prompt token id 99999 at position 1"),  # echo without logprobs: nothing reaches the engine
    ({"prompt": [5, -1]}, "prompt", "prompt token id -1 at position 1 is outside the model's vocabulary"),
    ({"prompt": ["p"] * 7}, "prompt", "a batch of 7 prompts needs 7 places at once; this server has 6 "
                                      "(num_of_concurrent_executions=2 + max_queue_size=4)"),
])
def test_bad_batches_are_400_naming_the_field_and_the_server_keeps_serving(url, body, param, says):
    r = _complete(url, **body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert says in r.json()["error"]["message"]
    assert _complete(url, prompt="ok").status_code == 200
    assert wait_for(lambda: stats(url)["running"] == 0 and stats(url)["queued"] == 0)


def test_a_batch_the_gate_refuses_is_429_and_leaves_nothing_behind():
    """Two slow requests hold the slots and two more wait: a batch of three fits the server's six
    places but not the two left, so it is refused whole; its prompts already in are withdrawn."""
    cs = ChatStream(model=scripted_model("slow " * 40, token_delay=0.02), template="chatml",
                    temperature=0.0, max_new_tokens=200, num_of_concurrent_executions=2, max_queue_size=4)
    with serving(create_app(cs, close_on_shutdown=True)) as url:
        holders = [threading.Thread(target=_complete, args=(url,), kwargs={"prompt": f"hold {i}"})
                   for i in range(4)]
        for t in holders:
            t.start()
        assert wait_for(lambda: stats(url)["running"] + stats(url)["queued"] == 4, timeout=10)
        r = _complete(url, prompt=["a", "b", "c"])
        assert r.status_code == 429 and r.json()["error"]["type"] == "queue_full"
        assert "max_queue_size=4" in r.json()["error"]["message"] and r.headers["Retry-After"]
        assert stats(url)["running"] + stats(url)["queued"] <= 4
        for t in holders:
            t.join(timeout=60)
        assert wait_for(lambda: stats(url)["running"] == 0 and stats(url)["queued"] == 0)
        assert stats(url)["completed"] == 4


@pytest.mark.real_model
@pytest.mark.timeout(300)
def test_a_batch_answers_what_single_requests_answer(real_model):
    cs = ChatStream(model=real_model, temperature=0.0, max_new_tokens=12, num_of_concurrent_executions=4)
    prompts = ["Question: What is the capital of France?\nAnswer:", "Question: What do bees make?\nAnswer:",
               "The capital of Italy is"]
    with serving(create_app(cs, close_on_shutdown=True)) as url:
        singles = [_complete(url, prompt=p, max_tokens=12, temperature=0, logprobs=2).json() for p in prompts]
        batch = _complete(url, prompt=prompts, max_tokens=12, temperature=0, logprobs=2).json()
        ids = [list(real_model.tokenizer.encode(p)) for p in prompts]
        by_ids = _complete(url, prompt=ids, max_tokens=12, temperature=0, logprobs=2).json()
    for single, from_text, from_ids in zip(singles, batch["choices"], by_ids["choices"]):
        one = single["choices"][0]
        assert from_text["text"] == from_ids["text"] == one["text"]
        assert from_text["logprobs"]["tokens"] == one["logprobs"]["tokens"]
        for a, b in zip(from_text["logprobs"]["token_logprobs"], one["logprobs"]["token_logprobs"]):
            assert abs(a - b) < 1e-3
    assert sum(bool(c["text"]) for c in batch["choices"]) >= 2
    assert batch["usage"]["completion_tokens"] == sum(s["usage"]["completion_tokens"] for s in singles)
    assert batch["usage"]["prompt_tokens"] == sum(len(i) for i in ids)


@pytest.mark.real_model
@pytest.mark.timeout(300)
def test_openvino_refuses_the_harness_scoring_request_by_name_and_serves_its_generation_batches(openvino_model):
    """OpenVINO reports no logprobs: the harness's loglikelihood request (batched, echo, logprobs)
    is a 400 naming ``logprobs`` and the fix, before anything runs; a batch without logprobs (a
    generation task) is served, one choice per prompt."""
    cs = ChatStream(model=openvino_model, temperature=0.0, max_new_tokens=8, num_of_concurrent_executions=4)
    ids = [list(openvino_model.tokenizer.encode(p)) for p in ("The capital of Italy is", "Bees make")]
    with serving(create_app(cs, close_on_shutdown=True)) as url:
        for body in ({"max_tokens": 1, "echo": True}, {"max_tokens": 0, "echo": True}, {"max_tokens": 4}):
            r = _complete(url, prompt=ids, logprobs=1, temperature=0, **body)
            assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", r.text
            assert "backend='torch'" in r.json()["error"]["message"]
        assert stats(url)["running"] == 0 and stats(url)["queued"] == 0
        r = _complete(url, prompt=ids, max_tokens=8, temperature=0, stop=["\n"])
        assert r.status_code == 200 and [c["index"] for c in r.json()["choices"]] == [0, 1]
        assert all(c["text"] for c in r.json()["choices"]) and r.json()["usage"]["prompt_tokens"] == sum(map(len, ids))
