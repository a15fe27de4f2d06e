"""Logprobs over HTTP: OpenAI's shapes (the `openai` SDK parses them), our SSE deltas, echo scoring.

Scripted model for the shapes and validation (fast); the bundled model for the numbers, which
must equal the model's own forward on the same ids within 1e-3.
"""

from __future__ import annotations

import httpx
import pytest
import torch

from chatstream_lab.engine.core.detokenize import DetokenizerFactory
from chatstream_lab.models import scripted_model
from chatstream_lab.prompts import encode_messages, resolve_template
from chatstream_lab.server import ChatStream, create_app

from .conftest import serving, sse_events

pytestmark = pytest.mark.timeout(120)
TOL = 1e-3
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def url():
    cs = ChatStream(model=scripted_model("Hello world", token_delay=0.001), template="chatml",
                    temperature=0.0, max_new_tokens=32)
    with serving(create_app(cs, close_on_shutdown=True)) as u:
        yield u


def _chat(url: str, **body) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


# -- shapes and validation (scripted) ---------------------------------------------------------------
def test_chat_logprobs_shape_and_off_by_default(url):
    off = _chat(url).json()["choices"][0]
    assert off["logprobs"] is None and off["message"]["content"] == "Hello world"
    on = _chat(url, logprobs=True, top_logprobs=3).json()["choices"][0]["logprobs"]
    content = on["content"]
    assert "".join(c["token"] for c in content) == "Hello world"
    for c in content:
        assert set(c) == {"token", "logprob", "bytes", "top_logprobs"}
        assert bytes(c["bytes"]).decode() == c["token"]
        assert len(c["top_logprobs"]) == 3 and c["top_logprobs"][0]["token"] == c["token"]
        assert set(c["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    bare = _chat(url, logprobs=True).json()["choices"][0]["logprobs"]["content"]
    assert bare and all(c["top_logprobs"] == [] for c in bare)


@pytest.mark.parametrize("body, param", [({"top_logprobs": 2}, "top_logprobs"),
                                         ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
                                         ({"logprobs": True, "top_logprobs": -1}, "top_logprobs")])
def test_chat_bad_logprobs_are_4xx_and_the_server_keeps_serving(url, body, param):
    r = _chat(url, **body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert _chat(url).status_code == 200


def test_completions_text_ids_echo_and_stream(url):
    r = httpx.post(url + "/v1/completions", json={"prompt": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                                                  "max_tokens": 5, "logprobs": 2, "temperature": 0}, timeout=30)
    choice = r.json()["choices"][0]
    assert r.json()["object"] == "text_completion" and choice["text"] == "Hello"
    lp = choice["logprobs"]
    assert lp["tokens"] == list("Hello") and lp["text_offset"] == [0, 1, 2, 3, 4]
    assert all(len(d) == 2 and max(d.values()) == v for d, v in zip(lp["top_logprobs"], lp["token_logprobs"]))
    ids = list(b"<|im_start|>")  # token ids are taken as they are
    echo = httpx.post(url + "/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True,
                                                     "logprobs": 1}, timeout=30).json()["choices"][0]
    assert echo["text"] == "<|im_start|>" and echo["logprobs"]["token_logprobs"][0] is None
    assert echo["logprobs"]["top_logprobs"][0] is None and len(echo["logprobs"]["tokens"]) == len(ids)
    assert echo["logprobs"]["text_offset"] == list(range(len(ids)))
    assert httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 0},
                      timeout=30).status_code == 400
    assert httpx.post(url + "/v1/completions", json={"prompt": [], "max_tokens": 2},
                      timeout=30).status_code == 400


def test_sse_deltas_carry_logprobs_when_asked(url):
    with httpx.Client(base_url=url, timeout=30) as client:
        plain = client.post("/chat_stream", json={"user_input": "hi"}, headers={"Accept": "text/event-stream"})
        assert all("logprobs" not in data for ev, data in sse_events(plain.text) if ev == "delta")
        assert client.post("/set_generation_params", json={"logprobs": 2}).status_code == 200
        r = client.post("/chat_stream", json={"user_input": "again"}, headers={"Accept": "text/event-stream"})
        deltas = [data for ev, data in sse_events(r.text) if ev == "delta"]
        lps = [lp for d in deltas for lp in d["logprobs"]]
        assert "".join(lp["token"] for lp in lps) == "Hello world"
        assert all(len(lp["top_logprobs"]) == 2 and "token_id" in lp for lp in lps)
        bad = client.post("/set_generation_params", json={"logprobs": 99})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "logprobs"


def test_openai_sdk_parses_chat_and_completions_logprobs(url):
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="x")
    full = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                          logprobs=True, top_logprobs=2)
    content = full.choices[0].logprobs.content
    assert "".join(t.token for t in content) == "Hello world" and len(content[0].top_logprobs) == 2
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 logprobs=True, top_logprobs=2, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    comp = client.completions.create(model="m", prompt=[1, 2, 3], max_tokens=3, logprobs=1, echo=True)
    assert comp.choices[0].logprobs.token_logprobs[0] is None and len(comp.choices[0].logprobs.tokens) == 6


# -- the numbers (bundled model) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_url(real_model):
    cs = ChatStream(model=real_model, temperature=0.0, max_new_tokens=12)
    with serving(create_app(cs, close_on_shutdown=True)) as u:
        yield u


def _by_bytes(lm) -> dict[bytes, int]:
    pieces = DetokenizerFactory(lm.tokenizer).pieces()
    out: dict[bytes, int] = {}
    for i in range(len(lm.tokenizer)):
        out.setdefault(pieces(i)[1], i)
    return out


def _reference(lm, ids: list[int], start: int) -> torch.Tensor:
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[start - 1:-1]


@pytest.mark.real_model
def test_openai_sdk_top5_logprobs_match_a_direct_forward(real_url, real_model):
    from openai import OpenAI

    client = OpenAI(base_url=real_url + "/v1", api_key="x")
    messages = [{"role": "user", "content": QUESTION}]
    full = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=12,
                                          logprobs=True, top_logprobs=5)
    content = full.choices[0].logprobs.content
    assert "Paris" in full.choices[0].message.content
    ids_of = _by_bytes(real_model)
    prompt = list(encode_messages(resolve_template(None, real_model.tokenizer), real_model.tokenizer,
                                  messages).ids)
    reply = [ids_of[bytes(t.bytes)] for t in content]
    ref = _reference(real_model, prompt + reply, len(prompt))
    for j, t in enumerate(content):
        assert abs(t.logprob - float(ref[j, reply[j]])) < TOL
        assert len(t.top_logprobs) == 5 and t.top_logprobs[0].token == t.token  # greedy: the top-1
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        for a in t.top_logprobs:
            assert abs(a.logprob - float(ref[j, ids_of[bytes(a.bytes)]])) < TOL
    chunks = list(client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=12,
                                                 logprobs=True, top_logprobs=5, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(abs(a.logprob - b.logprob) < TOL for a, b in zip(streamed, content))


@pytest.mark.real_model
def test_completions_echo_scores_the_prompt_like_a_direct_forward(real_url, real_model):
    from openai import OpenAI

    client = OpenAI(base_url=real_url + "/v1", api_key="x")
    text = "The capital of France is Paris."
    comp = client.completions.create(model="m", prompt=text, max_tokens=0, echo=True, logprobs=3)
    lp = comp.choices[0].logprobs
    ids = list(real_model.tokenizer.encode(text))
    assert comp.choices[0].text == text and len(lp.tokens) == len(ids) and "".join(lp.tokens) == text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref = _reference(real_model, ids, 1)
    for j in range(1, len(ids)):
        assert abs(lp.token_logprobs[j] - float(ref[j - 1, ids[j]])) < TOL
        assert len(lp.top_logprobs[j]) <= 3
    assert lp.text_offset == [len("".join(lp.tokens[:j])) for j in range(len(ids))]
    more = client.completions.create(model="m", prompt=text, max_tokens=4, echo=True, logprobs=1, temperature=0)
    assert more.choices[0].text.startswith(text) and len(more.choices[0].logprobs.tokens) == len(ids) + 4
