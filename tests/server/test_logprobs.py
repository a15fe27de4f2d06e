"""Logprobs over HTTP: OpenAI's shapes (the `openai` SDK parses them), our SSE deltas, echo scoring.

Scripted model for the shapes and validation (fast); the bundled model for the numbers, which
must equal the model's own forward on the same ids within 1e-3.
"""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from chatstream_lab.engine.core.detokenize import DetokenizerFactory
from chatstream_lab.models import scripted_model
from chatstream_lab.prompts import encode_messages, resolve_template
from chatstream_lab.server import ChatStream, create_app
from chatstream_lab.server.framing import parse_seed_records

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
    content = on["content"]  # every generated token, the EOS that ended the reply last
    assert "".join(c["token"] for c in content[:-1]) == "Hello world" and content[-1]["token"] == "<|im_end|>"
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
        events = sse_events(r.text)
        deltas = [data for ev, data in events if ev == "delta"]
        lps = [lp for d in deltas for lp in d["logprobs"]]
        assert "".join(lp["token"] for lp in lps) == "Hello world<|im_end|>"
        assert all(len(lp["top_logprobs"]) == 2 and "token_id" in lp for lp in lps)
        # the stop token comes in a last delta with no text: the reply's text is unchanged
        assert deltas[-1]["text"] == "" and [lp["token_id"] for lp in deltas[-1]["logprobs"]] == [258]
        assert "".join(d["text"] for d in deltas) == "Hello world" == events[-1][1]["text"]
        seed = client.post("/chat_stream", json={"user_input": "seed framing"})  # text/plain records
        assert parse_seed_records(seed.text)[-2:] == ["Hello world", "Hello world"]
        bad = client.post("/set_generation_params", json={"logprobs": 99})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "logprobs"


def test_openai_sdk_parses_chat_and_completions_logprobs(url):
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="x")
    full = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                          logprobs=True, top_logprobs=2)
    content = full.choices[0].logprobs.content
    assert "".join(t.token for t in content) == "Hello world<|im_end|>" and len(content[0].top_logprobs) == 2
    assert full.choices[0].message.content == "Hello world" and full.usage.completion_tokens == len(content)
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
    pieces = DetokenizerFactory(real_model.tokenizer).pieces()
    for j in range(1, len(ids)):
        assert abs(lp.token_logprobs[j] - float(ref[j - 1, ids[j]])) < TOL
        top = lp.top_logprobs[j]  # the 3 likeliest, plus the prompt's own token if not among them
        likeliest = {pieces(int(i))[0] for i in ref[j - 1].topk(3).indices}
        assert set(top) == likeliest | {lp.tokens[j]} and top[lp.tokens[j]] == lp.token_logprobs[j]
    assert lp.text_offset == [len("".join(lp.tokens[:j])) for j in range(len(ids))]
    more = client.completions.create(model="m", prompt=text, max_tokens=4, echo=True, logprobs=1, temperature=0)
    assert more.choices[0].text.startswith(text) and len(more.choices[0].logprobs.tokens) == len(ids) + 4


@pytest.mark.real_model
def test_chat_and_completions_report_the_same_tokens_each_with_its_apis_alternatives(real_url, real_model):
    """One sampled request through both APIs: same tokens and numbers; chat's ``top_logprobs`` holds
    exactly N, the completions dict N plus the chosen token when sampling picked one outside them."""
    tok = real_model.tokenizer
    messages = [{"role": "user", "content": QUESTION}]
    ids = list(encode_messages(resolve_template(None, tok), tok, messages).ids)
    common = {"temperature": 1.5, "seed": 7, "max_tokens": 12}
    chat = httpx.post(real_url + "/v1/chat/completions", timeout=120,
                      json={"messages": messages, "logprobs": True, "top_logprobs": 1, **common}).json()
    comp = httpx.post(real_url + "/v1/completions", timeout=120, json={"prompt": ids, "logprobs": 1, **common}).json()
    content, lp = chat["choices"][0]["logprobs"]["content"], comp["choices"][0]["logprobs"]
    assert [c["token"] for c in content] == lp["tokens"] and content
    for c, value, top in zip(content, lp["token_logprobs"], lp["top_logprobs"]):
        assert abs(c["logprob"] - value) < TOL and len(c["top_logprobs"]) == 1
        assert set(top) == {c["top_logprobs"][0]["token"], c["token"]} and top[c["token"]] == value
    assert any(len(top) == 2 for top in lp["top_logprobs"])  # some token was not the likeliest


def _harness_scoring_request(url: str, ids: list[int]) -> dict:
    """lm-evaluation-harness's loglikelihood request (local-completions), verbatim."""
    return httpx.post(url + "/v1/completions", timeout=120, json={
        "prompt": [ids], "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0, "seed": 1234}).json()


@pytest.mark.real_model
def test_the_stop_token_is_in_the_arrays_as_completion_tokens_counts_it(real_url, real_model):
    """Issue 20: after "...Answer: Earth" the model stops (EOS). The arrays must hold that token,
    or the harness's ``sum(token_logprobs[ctxlen:-1])`` drops " Earth" and scores it 0.0 (certain)."""
    import chatstream_lab as csl
    from chatstream_lab.prompts import DeclarativeTemplate

    tok = real_model.tokenizer
    context, choice = "Question: Which planet do we live on?\nAnswer:", " Earth"
    ids, ctxlen = list(tok.encode(context + choice)), len(tok.encode(context))
    body = _harness_scoring_request(real_url, ids)
    out, lp = body["choices"][0], body["choices"][0]["logprobs"]
    assert out["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == 1
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids) + 1
    assert lp["tokens"][-1] == tok.eos_token == "<|im_end|>" and lp["token_logprobs"][-1] < 0
    raw = DeclarativeTemplate(name="raw", system="{content}", user="{content}", assistant="{content}",
                              generation_prefix="")
    expected = csl.score(real_model, context, choice, template=raw).logprob
    assert abs(sum(lp["token_logprobs"][ctxlen:-1]) - expected) < TOL  # the harness's arithmetic: -2.064

    plain = httpx.post(real_url + "/v1/completions", timeout=120, json={
        "prompt": ids, "max_tokens": 4, "logprobs": 0, "temperature": 0}).json()
    assert plain["choices"][0]["logprobs"]["tokens"] == ["<|im_end|>"] and plain["usage"]["completion_tokens"] == 1
    streamed = httpx.post(real_url + "/v1/completions", timeout=120, json={
        "prompt": ids, "max_tokens": 4, "logprobs": 0, "temperature": 0, "stream": True}).text
    frames = [json.loads(f[6:]) for f in streamed.split("\n\n") if f.startswith("data: {")]
    assert [t for f in frames if f["choices"] and f["choices"][0]["logprobs"]
            for t in f["choices"][0]["logprobs"]["tokens"]] == ["<|im_end|>"]


@pytest.mark.real_model
@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_reply_that_ends_with_eos_reports_it_last(real_url, stream):
    from openai import OpenAI

    client = OpenAI(base_url=real_url + "/v1", api_key="x")
    messages = [{"role": "user", "content": QUESTION}]
    if stream:
        chunks = list(client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=12,
                                                     logprobs=True, stream=True,
                                                     stream_options={"include_usage": True}))
        content = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        usage, finish = chunks[-1].usage, [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        full = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=12,
                                              logprobs=True)
        content, usage, finish = full.choices[0].logprobs.content, full.usage, full.choices[0].finish_reason
    assert finish == "stop" and usage.completion_tokens < 12  # "The capital of France is Paris." + EOS
    assert len(content) == usage.completion_tokens and content[-1].token == "<|im_end|>"
    assert "".join(t.token for t in content[:-1]) == "The capital of France is Paris."
