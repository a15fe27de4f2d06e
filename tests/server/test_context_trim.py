"""A conversation that outgrows the context window keeps answering (issue 10, row 16): its oldest
turns are trimmed (the system prompt stays), and ``/get_prompt`` shows the trimmed history and how
many turns were dropped. Real uvicorn servers on loopback."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from chatstream_lab.models import scripted_model
from chatstream_lab.prompts import ChatPrompt
from chatstream_lab.server import ChatStream, create_app

from .conftest import serving, sse_events

pytestmark = pytest.mark.timeout(180)


class Briefly(ChatPrompt):
    def __init__(self) -> None:
        super().__init__(template="chatml")
        self.set_system("Answer briefly.")


def _talk(url: str, turns: list[str]) -> tuple[list[dict], dict]:
    dones = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for text in turns:
            r = client.post("/chat_stream", json={"user_input": text}, headers={"accept": "text/event-stream"})
            assert r.status_code == 200, (text[:20], r.status_code, r.text[:300])
            kind, data = sse_events(r.text)[-1]
            assert kind == "done", (kind, data)
            dones.append(data)
        return dones, client.get("/get_prompt").json()


def test_a_long_conversation_is_trimmed_from_the_oldest_turns():
    window = 700
    cs = ChatStream(model=scripted_model(context_window=window), chat_prompt_clazz=Briefly,
                    max_new_tokens=64)
    turns = [f"turn {i}: " + "lorem ipsum " * 12 for i in range(10)]  # ~250 tokens a turn (bytes)
    with serving(create_app(cs, close_on_shutdown=True)) as url:
        dones, prompt = _talk(url, turns)
    assert all(d["text"].startswith("You said: turn ") for d in dones)
    users = [m["content"] for m in prompt["messages"] if m["role"] == "user"]
    assert users[-1] == turns[-1] and users[0] != turns[0] and len(users) < len(turns)
    assert prompt["dropped_turns"] == len(turns) - len(users)  # says how many went
    assert prompt["messages"][0] == {"role": "system", "content": "Answer briefly."}  # kept
    assert turns[0] not in prompt["prompt"] and "Answer briefly." in prompt["prompt"]
    # the stored conversation fits the window with room for a reply
    assert len(cs.model.tokenizer.encode(prompt["prompt"])) <= window - 64


def test_clear_resets_the_dropped_count():
    cs = ChatStream(model=scripted_model(context_window=300), template="chatml", max_new_tokens=32)
    with serving(create_app(cs, close_on_shutdown=True)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for i in range(4):
            assert client.post("/chat_stream", json={"user_input": f"{i} " + "x" * 80}).status_code == 200
        assert client.get("/get_prompt").json()["dropped_turns"] > 0
        client.post("/clear_context")
        assert client.get("/get_prompt").json()["dropped_turns"] == 0
        # a single message too long for the window is still refused, with the session unchanged
        r = client.post("/chat_stream", json={"user_input": "y" * 400})
        assert r.status_code == 400 and r.json()["error"]["message"]
        assert client.get("/get_prompt").json()["messages"] == []


@pytest.mark.real_model
def test_real_model_keeps_answering_past_its_window(real_model):
    window = 320  # the bundled model's window, shrunk so a few turns outgrow it
    small = dataclasses.replace(real_model, context_window=window)
    cs = ChatStream(model=small, chat_prompt_clazz=Briefly, temperature=0.0, max_new_tokens=16)
    fact = "Here is a fact about the sea, the sky and the mountains far away. " * 3
    turns = [f"{fact} Question {i}: what is {i} plus {i}?" for i in range(6)]
    with serving(create_app(cs, close_on_shutdown=True)) as url:
        dones, prompt = _talk(url, turns)
    assert all(d["text"].strip() and d["finish_reason"] in ("stop", "length") for d in dones)
    assert prompt["dropped_turns"] > 0
    assert [m["content"] for m in prompt["messages"] if m["role"] == "user"][-1] == turns[-1]
    assert len(real_model.tokenizer.encode(prompt["prompt"])) <= window
