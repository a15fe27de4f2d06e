"""Preview, chat, playground and compare widgets driven programmatically on the scripted model.

These run in pytest-asyncio's loop, which plays the kernel's loop: the widget pumps are tasks on it.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from chatstream_lab.errors import QueueFull
from chatstream_lab.types import FinishReason

LONG = "word " * 60  # 300 bytes -> 300 tokens with the byte tokenizer


async def test_preview_returns_at_once_and_streams_coalesced(make_lab):
    lab = make_lab(LONG, token_delay=0.004)  # ~1.2 s of generation
    lab.generate("warm up", max_new_tokens=1)  # first use imports torch and ipywidgets
    lab.preview("warm up", max_new_tokens=1)
    t0 = time.perf_counter()
    preview = lab.preview("hello")
    assert time.perf_counter() - t0 < 0.5  # returned before the reply was generated
    assert preview.finished is None
    values = []
    preview.reply.observe(lambda change: values.append(change["new"]), names="value")
    fin = await asyncio.wait_for(preview.wait(), 30)
    elapsed = time.perf_counter() - t0
    assert fin.finish_reason is FinishReason.STOP
    assert preview.text == LONG == fin.text
    assert fin.usage.completion_tokens >= len(LONG)  # (+ the EOS token)
    # coalesced: ~12 updates per second of generation, never one per token (300 tokens)
    assert 2 <= len(values) <= elapsed * 15 + 3, (len(values), elapsed)
    assert len(values) < fin.usage.completion_tokens / 5
    assert preview.updates == len(values)
    status = preview.status.value
    for part in ("stop", f"{fin.usage.completion_tokens} tokens", "TTFT", "tok/s"):
        assert part in status
    assert preview.stop_button.disabled


async def test_stop_button_cancels_and_frees_the_slot(make_lab, eventually):
    lab = make_lab(LONG * 4, token_delay=0.01, num_of_concurrent_executions=1, max_queue_size=0)
    preview = lab.preview("hello")
    await eventually(lambda: preview.text)
    assert lab.engine.gate.snapshot().running == 1
    preview.stop_button.click()
    fin = await asyncio.wait_for(preview.wait(), 10)
    assert fin.finish_reason is FinishReason.CANCELLED
    assert 0 < len(fin.text) < len(LONG * 4)
    assert (LONG * 4).startswith(fin.text)
    assert "cancelled" in preview.status.value
    assert lab.engine.gate.snapshot().running == 0
    await eventually(lambda: lab.stats().cancelled == 1, timeout=2)  # (recorded right after the push)
    # the single slot is free again: the next preview runs
    again = await asyncio.wait_for(lab.preview("again", max_new_tokens=5).wait(), 10)
    assert again.finish_reason is FinishReason.LENGTH and again.text == "word "


async def test_preview_and_http_clients_share_one_gate(make_lab, eventually):
    lab = make_lab(LONG * 4, token_delay=0.01, num_of_concurrent_executions=1, max_queue_size=0)
    ep = lab.serve()
    preview = lab.preview("hold the only slot")
    await eventually(lambda: preview.text)
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        r = await client.post(f"{ep.url}/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 429
        assert "Retry-After" in r.headers
        with pytest.raises(QueueFull):
            lab.preview("and a second preview")
        stats = (await client.get(f"{ep.url}/stats")).json()
    assert stats["running"] == 1 and stats["rejected"] == 2
    preview.stop()
    await preview.wait()
    ep.stop()


async def test_chat_turns_regenerate_clear(make_lab):
    from chatstream_lab.models import echo_reply

    lab = make_lab(echo_reply)
    chat = lab.chat(system_prompt="Be kind.")
    await chat.send("first question")
    await chat.send("second question")
    roles = [m["role"] for m in chat.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert "second question" in chat.messages[-1]["content"]
    assert "first question" in chat.messages[2]["content"]
    assert "second question" in chat.transcript.value
    before = list(chat.messages)
    fin = await chat.regenerate()
    assert fin.finish_reason is FinishReason.STOP
    assert chat.messages == before  # same (deterministic) reply, still one assistant turn
    chat.clear()
    assert chat.messages == [{"role": "system", "content": "Be kind."}]
    assert chat.regenerate() is None and "nothing to regenerate" in chat.notice.value


async def test_chat_stop_keeps_partial_reply_marked(make_lab, eventually):
    lab = make_lab(LONG * 4, token_delay=0.01)
    chat = lab.chat()
    chat.input.value = "go"
    chat.send_button.click()
    await eventually(lambda: chat.busy and "▍" in chat.transcript.value)
    chat.stop_button.click()
    fin = await asyncio.wait_for(chat.wait(), 10)
    assert fin.finish_reason is FinishReason.CANCELLED
    assert chat.messages[-1]["role"] == "assistant" and chat.notes[len(chat.messages) - 1] == "cancelled"
    assert chat.input.value == ""


async def test_playground_edit_then_serve_shows_the_same_config(make_lab):
    lab = make_lab()
    pg = lab.playground("What is the capital of France?")
    pg.preset.value = "chatml"
    pg.system_prompt.value = "Answer briefly."
    pg.sliders["temperature"].value = 0.0
    pg.sliders["max_new_tokens"].value = 40
    pg.fields["user"].value = "<|im_start|>user\n{content}\n<|im_end|>\n"  # an edit of a turn format
    assert pg.error.value == ""
    assert lab.config.template_name == "chatml (edited)"
    assert lab.config.system_prompt == "Answer briefly."
    assert lab.config.params.max_new_tokens == 40
    assert "Answer briefly." in pg.inspection.text and pg.inspection.num_tokens > 10
    assert lab.config.config_id in pg.config_label.value

    preview = pg.preview()
    await asyncio.wait_for(preview.wait(), 10)
    previewed = lab.config.config_id
    assert previewed in preview.header.value

    ep = lab.serve()
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        stats = (await client.get(f"{ep.url}/stats")).json()
        r = await client.post(f"{ep.url}/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert stats["config_id"] == previewed == ep.config_id
    assert r.json()["choices"][0]["message"]["content"] == preview.text
    assert ep.chat_stream.default_params == lab.config.params
    assert ep.chat_stream.template == lab.config.template

    # an invalid edit is reported and changes nothing
    pg.fields["assistant"].value = "no content field"
    assert "content" in pg.error.value
    assert lab.config.config_id == previewed
    # editing after serve() makes a new configuration; the endpoint keeps serving the old one
    pg.fields["assistant"].value = "<|im_start|>assistant\n{content}<|im_end|>\n"
    pg.sliders["temperature"].value = 0.5
    assert lab.config.config_id != previewed
    assert ep.stats().config_id == previewed
    ep.stop()


async def test_playground_model_own_template_and_jinja_edit(make_lab):
    lab = make_lab()
    pg = lab.playground()
    assert pg.preset.value == "(model's own template)"
    assert pg.template_box.children == (pg.jinja_source,)
    own_id = lab.config.config_id
    pg.system_prompt.value = "You are terse."
    assert lab.config.config_id != own_id
    assert "You are terse." in pg.inspection.text
    pg.system_prompt.value = ""
    assert lab.config.config_id == own_id
    pg.jinja_source.value = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    assert lab.config.template_name == "custom jinja"
    assert pg.inspection.text.startswith("What is the capital")


async def test_compare_streams_side_by_side_and_ends_with_a_table(make_lab):
    lab = make_lab(token_delay=0.002)
    view = lab.compare({"own": None, "chatml": "chatml", "short": {"max_new_tokens": 5}}, "Capital?")
    assert len(view.columns.children) == 3
    rows = await asyncio.wait_for(view.wait(), 20)
    assert [r["variant"] for r in rows] == ["own", "chatml", "short"]
    assert [r["finish_reason"] for r in rows] == ["stop", "stop", "length"]
    assert rows[2]["tokens"] == 5 and rows[0]["tokens"] >= len("The capital of France is Paris.")
    assert all(r["ttft_s"] is not None and r["tokens_per_s"] > 0 for r in rows)
    assert len({r["config_id"] for r in rows}) == 3
    for header in ("finish_reason", "tokens", "ttft_s", "tokens_per_s"):
        assert header in view.table.value


def test_preview_without_a_running_loop_runs_inline(make_lab):
    lab = make_lab()
    preview = lab.preview("hi")  # a plain script: no loop is running, so it generates to the end
    assert preview.finished is not None and preview.finished.finish_reason is FinishReason.STOP
    assert preview.text == "The capital of France is Paris."
    view = lab.compare({"a": None, "b": "chatml"}, "hi")
    assert [r["finish_reason"] for r in view.rows] == ["stop", "stop"]


# -- issue 17: one turn at a time, nothing lost -------------------------------------------------------
async def test_chat_send_while_a_reply_streams_keeps_the_message_and_says_why(make_lab, eventually):
    lab = make_lab(lambda prompt: "Cherry." if "red fruit" in prompt else LONG * 4, token_delay=0.01)
    chat = lab.chat()
    chat.input.value = "What is the capital of France?"
    chat.send_button.click()
    await eventually(lambda: "▍" in chat.transcript.value)
    assert chat.send_button.disabled  # while a reply streams, Send is off
    chat.input.value = "Name a red fruit."
    chat.send_button.click()  # (a click that reached the kernel anyway)
    assert chat.input.value == "Name a red fruit."  # kept in the box
    assert "not sent" in chat.notice.value and chat.notice.layout.display is None
    await asyncio.sleep(0.3)  # the status line is rewritten while the reply streams; the notice stays
    assert "not sent" in chat.notice.value
    assert [m["role"] for m in chat.messages] == ["user"]
    chat.stop_button.click()
    await asyncio.wait_for(chat.wait(), 10)
    assert not chat.send_button.disabled
    chat.send_button.click()
    assert chat.input.value == "" and chat.notice.layout.display == "none"
    await asyncio.wait_for(chat.wait(), 10)
    assert [m["content"] for m in chat.messages if m["role"] == "user"] == [
        "What is the capital of France?", "Name a red fruit."]
    assert chat.messages[-1] == {"role": "assistant", "content": "Cherry."}


async def test_chat_send_before_the_finished_reply_is_shown_is_refused(make_lab):
    # A cell that sends and then blocks (or a click handled before the reply's pump ran): the engine has
    # finished the reply, but it is not in ``messages`` yet. A second Send then must not be accepted
    # (it was: the first answer vanished and two user turns followed each other).
    lab = make_lab("Paris.")
    chat = lab.chat()
    chat.send("What is the capital of France?")
    chat.stream.result(10)  # blocks the loop: the reply is done in the engine, its pump has not run
    assert chat.send("Name a red fruit.") is None
    assert "not sent" in chat.notice.value
    await asyncio.wait_for(chat.wait(), 10)
    assert chat.messages == [{"role": "user", "content": "What is the capital of France?"},
                             {"role": "assistant", "content": "Paris."}]


async def test_chat_refused_by_the_gate_keeps_no_lone_user_turn(make_lab, eventually):
    lab = make_lab(lambda prompt: LONG * 4 if "hold" in prompt else "Hi!", token_delay=0.01,
                   num_of_concurrent_executions=1, max_queue_size=0)
    preview = lab.preview("hold the only slot")
    await eventually(lambda: preview.text)
    chat = lab.chat()
    chat.input.value = "hello?"
    chat.send_button.click()
    assert chat.messages == [] and chat.input.value == "hello?"
    assert "not sent" in chat.notice.value and "queue" in chat.notice.value.lower()
    assert not chat.busy and not chat.send_button.disabled
    preview.stop()
    await preview.wait()
    chat.send_button.click()
    await asyncio.wait_for(chat.wait(), 10)
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]
