"""The issue's "done when", against the bundled SmolLM2 on a real uvicorn server (one per module)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from chatstream_lab.server import ChatStream, create_app

from .conftest import seed_reply, serving, sse_events

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(180)]

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module", params=["torch", "openvino"])
def url(request):
    """A real server on each backend: every test below runs against both."""
    model = request.getfixturevalue("real_model" if request.param == "torch" else "openvino_model")
    cs = ChatStream(model=model, temperature=0.0, max_new_tokens=24,
                    num_of_concurrent_executions=2, max_queue_size=4)
    with serving(create_app(cs, close_on_shutdown=True)) as u:
        yield u


def test_openai_sdk_streams_a_sensible_reply(url):
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="x")
    model = client.models.list().data[0].id
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=24,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    full = client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}],
                                          temperature=0, max_tokens=24, seed=1)
    assert "Paris" in full.choices[0].message.content and full.usage.prompt_tokens > 0


def test_seed_and_sse_clients_multiturn_per_cookie(url):
    with httpx.Client(base_url=url, timeout=60) as seed_client, \
            httpx.Client(base_url=url, timeout=60, headers={"Accept": "text/event-stream"}) as sse_client:
        with ThreadPoolExecutor(2) as pool:  # two users at once: batched by the engine
            seed_future = pool.submit(seed_client.post, "/chat_stream",
                                      json={"user_input": QUESTION, "regenerate": False})
            sse_future = pool.submit(sse_client.post, "/chat_stream", json={"user_input": QUESTION})
            first = seed_reply(seed_future.result().text)
            events = sse_events(sse_future.result().text)
        assert "Paris" in first
        sse_text = "".join(d["text"] for k, d in events if k == "delta")
        assert events[-1][0] == "done" and sse_text == events[-1][1]["text"] == first  # greedy: same reply
        r = seed_client.post("/chat_stream", json={"user_input": "And of Germany?"})
        assert seed_reply(r.text)
        seed_hist = seed_client.get("/get_prompt").json()["messages"]
        assert [m["content"] for m in seed_hist if m["role"] == "user"] == [QUESTION, "And of Germany?"]
        sse_hist = sse_client.get("/get_prompt").json()["messages"]
        assert [m["content"] for m in sse_hist if m["role"] == "user"] == [QUESTION]
        assert "Germany" not in sse_client.get("/get_prompt").json()["prompt"]


def test_seed_style_hf_model_and_tokenizer(real_model):
    from chatstream_lab.prompts import encode_chat_prompt

    cs = ChatStream(model=real_model.model, tokenizer=real_model.tokenizer)
    assert cs.model.tokenizer is real_model.tokenizer and cs.model.stop_token_ids
    sid = cs.sessions.create()
    turn = cs.sessions.begin_turn(sid, QUESTION)
    encoded = encode_chat_prompt(turn.prompt, cs.template, cs.model.tokenizer)
    ids = list(encoded.ids)
    expected = real_model.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=True)
    if hasattr(expected, "keys"):
        expected = expected["input_ids"]
    assert ids == list(expected)
    cs.sessions.finish_turn(turn, None)


def test_the_backend_is_reported_where_users_look(url, request):
    backend = request.node.callspec.params["url"]
    with httpx.Client(base_url=url, timeout=30) as client:
        models = client.get("/v1/models").json()["data"]
        assert models[0]["backend"] == backend
        assert client.get("/health").json()["engine"]["backend"] == backend
        stats = client.get("/stats").json()
        assert backend in str(stats)
        assert stats["precision"]["precision"] == models[0]["precision"]
        if backend == "torch":
            assert (models[0]["precision"], models[0]["precision_source"]) == ("float32", "dtype")
        else:  # the calibrated precision, with what calibration measured
            assert models[0]["precision_source"] in ("cached calibration", "calibrated")
            assert stats["precision"]["candidates"] and stats["precision"]["signature"]["cores"] >= 1
