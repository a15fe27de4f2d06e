"""Per-session KV reuse seen from a real client: a cookie session's second turn prefills only its
new suffix (the ``kv_cache`` counters of ``/stats``), ``/clear_context`` drops what was kept, and
an OpenAI request with ``user`` reuses that user's previous request."""

from __future__ import annotations

import httpx
import pytest

from chatstream_lab.server import ChatStream, create_app

from .conftest import serving, sse_events, stats

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def url(real_model):
    cs = ChatStream(model=real_model, temperature=0.0, max_new_tokens=16, num_of_concurrent_executions=2,
                    max_queue_size=4, session_kv_budget_mb=128)
    with serving(create_app(cs, close_on_shutdown=True)) as u:
        yield u


def _turn(client: httpx.Client, text: str, *, regenerate: bool = False) -> dict:
    events = sse_events(client.post("/chat_stream", json={"user_input": text, "regenerate": regenerate}).text)
    assert events[-1][0] == "done", events[-1]
    return events[-1][1]


def test_a_cookie_sessions_second_turn_prefills_only_the_suffix(url) -> None:
    with httpx.Client(base_url=url, timeout=60, headers={"Accept": "text/event-stream"}) as client:
        _turn(client, "Name three colours of the rainbow.")
        before = stats(url)["kv_cache"]
        assert before["entries"] >= 1 and before["budget_bytes"] == 128 << 20
        second = _turn(client, "And which one is between green and violet?")
        after = stats(url)["kv_cache"]
        prompt = second["usage"]["prompt_tokens"]
        reused = after["reused_tokens"] - before["reused_tokens"]
        prefilled = after["prefilled_tokens"] - before["prefilled_tokens"]
        assert reused + prefilled == prompt  # every prompt position either reused or run, once
        assert reused > prompt / 2 and prefilled < 30  # only the new user turn (and the reply's end) ran
        regen = _turn(client, "", regenerate=True)
        again = stats(url)["kv_cache"]
        assert again["reused_tokens"] - after["reused_tokens"] == prompt - 1  # regenerate: all but one
        assert regen["text"] == second["text"]  # greedy: the same reply from the reused KV
        entries = again["entries"]
        assert client.post("/clear_context").json()["success"] is True
        assert stats(url)["kv_cache"]["entries"] == entries - 1


def test_openai_requests_with_user_reuse_that_users_last_request(url) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="x")
    msgs = [{"role": "user", "content": "Give me a word that rhymes with cat."}]
    first = client.chat.completions.create(model="default", messages=msgs, temperature=0, max_tokens=16,
                                           user="alice")
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And one that rhymes with dog?"}]
    before = stats(url)["kv_cache"]
    second = client.chat.completions.create(model="default", messages=msgs, temperature=0, max_tokens=16,
                                            user="alice")
    after = stats(url)["kv_cache"]
    assert after["hits"] == before["hits"] + 1
    assert after["reused_tokens"] - before["reused_tokens"] > second.usage.prompt_tokens / 2
    anonymous = client.chat.completions.create(model="default", messages=msgs, temperature=0, max_tokens=16)
    assert stats(url)["kv_cache"]["hits"] == after["hits"]  # no user: nothing kept, nothing reused
    assert anonymous.choices[0].message.content == second.choices[0].message.content
