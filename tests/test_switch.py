"""Switching the model behind a Lab and its running endpoint (issue 16, item 4): new requests wait
while the old engine drains and the new one warms; the URL, the numbers and the sessions stay
(conversations are cleared, with a notice, only when the chat template changes); nothing is lost,
no slot leaks. Real uvicorn servers on loopback, httpx clients."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from server.conftest import sse_events, wait_for

import chatstream_lab as csl
from chatstream_lab.errors import ConfigError
from chatstream_lab.models import LoadedModel, scripted_model


def named(name: str, reply: str, **options: Any) -> LoadedModel:
    return dataclasses.replace(scripted_model(reply, **options), name=name)


# -- a load of 8 clients ------------------------------------------------------------------------
@dataclass
class Load:
    """8 clients asking in a loop (SSE with a session, OpenAI streamed, OpenAI not streamed) until
    stopped; every reply is kept with when it was asked."""

    url: str
    message: str = "hi"
    max_tokens: int | None = None
    # (asked at, kind, status, text, finish reason, answered at)
    replies: list[tuple[float, str, int, str, str | None, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, clients: int = 8) -> Load:
        kinds = ("sse", "openai", "openai-json")
        self._threads = [threading.Thread(target=self._client, args=(kinds[i % 3],), daemon=True)
                         for i in range(clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 300) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "a client hung"

    def _client(self, kind: str) -> None:
        with httpx.Client(base_url=self.url, timeout=300) as client:
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    self.replies.append((t, kind, *self._ask(client, kind), time.monotonic()))
                except httpx.HTTPError as exc:
                    self.errors.append(f"{kind}: {exc!r}")

    def _ask(self, client: httpx.Client, kind: str) -> tuple[int, str, str | None]:
        messages = [{"role": "user", "content": self.message}]
        extra = {} if self.max_tokens is None else {"max_tokens": self.max_tokens}
        if kind == "sse":
            r = client.post("/chat_stream", json={"user_input": self.message}, headers={"accept": "text/event-stream"})
            done = [d for e, d in sse_events(r.text) if e == "done"] if r.status_code == 200 else []
            return r.status_code, done[-1]["text"] if done else r.text, done[-1]["finish_reason"] if done else None
        if kind == "openai":
            r = client.post("/v1/chat/completions", json={"messages": messages, "stream": True, **extra})
            text, finish = "", None
            for _, chunk in sse_events(r.text.replace("data: [DONE]", "")) if r.status_code == 200 else []:
                for choice in chunk.get("choices", ()):
                    text += choice["delta"].get("content") or ""
                    finish = choice.get("finish_reason") or finish
            return r.status_code, text if r.status_code == 200 else r.text, finish
        r = client.post("/v1/chat/completions", json={"messages": messages, **extra})
        if r.status_code != 200:
            return r.status_code, r.text, None
        choice = r.json()["choices"][0]
        return r.status_code, choice["message"]["content"], choice["finish_reason"]

    def assert_nothing_lost(self) -> None:
        assert not self.errors, self.errors[:5]
        bad = [r for r in self.replies if r[2] != 200 or r[4] not in ("stop", "length") or not r[3]]
        assert not bad, bad[:5]


def _until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    assert wait_for(predicate, timeout=timeout, interval=0.05)


# -- scripted models: fast, exact ------------------------------------------------------------------
def test_a_switch_under_load_of_8_clients_loses_no_request_and_leaks_no_slot() -> None:
    alpha, beta = named("alpha", "alpha " * 12, token_delay=0.01), named("beta", "beta " * 12, token_delay=0.01)
    lab = csl.Lab(alpha, num_of_concurrent_executions=4, max_queue_size=8)
    try:
        ep = lab.serve(port=0)
        load = Load(ep.url).start()
        _until(lambda: len(load.replies) >= 16)
        t_switch = time.monotonic()
        switch = lab.use_model(beta)
        assert httpx.get(ep.url + "/health", timeout=5).status_code == 200  # a switch is no outage
        report = switch.result(60)
        t_done = time.monotonic()
        n_before = len(load.replies)
        _until(lambda: len(load.replies) >= n_before + 16)
        load.stop()
        load.assert_nothing_lost()
        # (a request a client sent just before the switch may reach the server just after it: then it
        # waits for the new model, as it should; so "before" is what was answered before the switch)
        answered_before = [r for r in load.replies if r[5] < t_switch]
        asked_after = [r for r in load.replies if r[0] > t_done]
        assert answered_before and all(r[3].startswith("alpha") for r in answered_before)
        assert asked_after and all(r[3].startswith("beta") for r in asked_after)
        # drained, not cut: every reply is one model's whole reply, none cut and finished by the other
        assert all(r[3].strip() in (("alpha " * 12).strip(), ("beta " * 12).strip()) for r in load.replies)
        assert report.cancelled == 0 and report.drained >= 1, report
        snap = lab.service.gate.snapshot()
        assert (snap.running, snap.waiting) == (0, 0), "a slot leaked"
        stats = httpx.get(ep.url + "/stats", timeout=5).json()
        assert stats["completed"] == len(load.replies)  # one recorder before and after: nothing reset
        assert [(c["from"], c["to"]) for c in stats["model_changes"]] == [("alpha", "beta")]
        assert stats["model"] == "beta"
        models = httpx.get(ep.url + "/v1/models", timeout=5).json()["data"][0]
        assert models["id"] == "beta" and models["config_id"] == lab.config.config_id == ep.config_id
        assert ep.url == lab.endpoint.url  # the same URL
    finally:
        lab.close()


def test_requests_wait_while_the_old_engine_drains_then_run_on_the_new_one() -> None:
    slow_old = named("old", "o" * 60, token_delay=0.02)  # 1.2 s of reply still running at the switch
    new = named("new", "new")
    lab = csl.Lab(slow_old)
    try:
        running = lab.submit("hi")
        _until(lambda: lab.service.gate.snapshot().running == 1, 10)
        switch = lab.use_model(new)
        waiting = lab.submit("hi")  # returns at once: queued for the new engine
        time.sleep(0.3)
        assert not switch.done and waiting.finished is None  # held while the old one drains
        assert "draining" in repr(switch) or "warming" in repr(switch)
        assert running.result(10).text == "o" * 60  # the old reply ran to its end
        assert waiting.result(10).text == "new"
        assert switch.result(10).drained == 1
        assert lab.generate("hi") == "new" and lab.model is new
    finally:
        lab.close()


def test_a_drain_longer_than_drain_s_cancels_the_rest_with_their_final_event() -> None:
    endless = named("endless", "x" * 400, token_delay=0.05)
    lab = csl.Lab(endless)
    try:
        running = lab.submit("hi")
        _until(lambda: lab.service.gate.snapshot().running == 1, 10)
        report = lab.use_model(named("next", "next"), drain_s=0.3).result(10)
        assert report.cancelled == 1
        assert running.result(10).finish_reason.value == "cancelled"
        assert lab.generate("hi") == "next"
    finally:
        lab.close()


def test_a_switch_that_cannot_start_leaves_the_old_model_serving() -> None:
    from pathlib import Path

    from chatstream_lab.errors import EngineUnavailable
    from chatstream_lab.models.loaded import Backend
    from chatstream_lab.models.openvino import OpenVINOModel, Weights

    old = named("old", "still here")
    broken = LoadedModel(name="broken", model=OpenVINOModel(Path("/nonexistent/ir"), Weights.FLOAT16),
                         tokenizer=old.tokenizer, source="/nonexistent", backend=Backend.OPENVINO)
    lab = csl.Lab(old)
    try:
        ep = lab.serve(port=0)
        switch = lab.use_model(broken)
        with pytest.raises(EngineUnavailable, match="could not start"):
            switch.result(60)
        assert "failed" in repr(switch) and lab.model is old
        assert lab.generate("hi") == "still here"
        r = httpx.post(ep.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                       timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "still here"
        assert httpx.get(ep.url + "/v1/models", timeout=5).json()["data"][0]["id"] == "old"
    finally:
        lab.close()


def test_one_switch_at_a_time_and_close_previous_frees_the_old_model() -> None:
    old = named("old", "o" * 40, token_delay=0.02)
    lab = csl.Lab(old)
    try:
        lab.submit("hi")
        _until(lambda: lab.service.gate.snapshot().running == 1, 10)
        switch = lab.use_model(named("new", "new"), close_previous=True)
        with pytest.raises(ConfigError, match="in progress"):
            lab.use_model(named("third", "third"))
        switch.result(30)
        assert old.closed  # its weights freed once drained
        assert lab.use_model(named("third", "third")).result(30).new_name == "third"
    finally:
        lab.close()


def test_a_template_change_clears_the_endpoints_conversations_with_a_notice() -> None:
    lab = csl.Lab(named("a", "first reply"))
    try:
        ep = lab.serve(port=0)
        with httpx.Client(base_url=ep.url, timeout=30) as user:
            assert user.post("/chat_stream", json={"user_input": "remember me"}).status_code == 200
            assert len(user.get("/get_prompt").json()["messages"]) >= 2
            # the same template: the conversation stays
            lab.use_model(named("b", "second reply")).result(30)
            kept = user.get("/get_prompt").json()
            assert kept["notice"] is None and any(m["content"] == "remember me" for m in kept["messages"])
            # another template: cleared, and the user is told why
            switch = lab.use_model(named("c", "third reply"), template="llama2")
            switch.result(30)
            cleared = user.get("/get_prompt").json()
            assert not any(m["content"] == "remember me" for m in cleared["messages"])
            assert "cleared" in cleared["notice"] and "c" in cleared["notice"]
            assert "1 session conversation(s) cleared" in repr(switch)
            assert user.post("/chat_stream", json={"user_input": "again"}).text.endswith("third reply<::EOS::>")
            assert user.get("/get_prompt").json()["notice"] is None  # told once, until the next turn
    finally:
        lab.close()


@pytest.mark.real_model
def test_the_template_follows_the_model_when_it_was_the_models_own(real_model) -> None:
    """SmolLM2's own chat template becomes the next model's own (with the same added system
    prompt); a template the user chose stays whatever the model."""
    from chatstream_lab.config import template_fingerprint
    from chatstream_lab.prompts import resolve_template
    from chatstream_lab.prompts.system import base_template

    other = named("other", "x")
    lab = csl.Lab(real_model, system_prompt="Be brief.")
    try:
        lab.use_model(other).result(30)
        own = template_fingerprint(resolve_template(None, other.tokenizer))
        assert template_fingerprint(base_template(lab.config.template)) == own
        assert own != template_fingerprint(resolve_template(None, real_model.tokenizer))
        assert lab.config.system_prompt == "Be brief." and lab.config.model_name == "other"
        lab.configure(template="llama2")
        lab.use_model(real_model).result(60)
        assert lab.config.template_name == "llama2" and lab.config.model_name == real_model.name
    finally:
        lab.close()


def test_the_dashboard_marks_the_switch() -> None:
    lab = csl.Lab(named("alpha", "a"))
    try:
        ep = lab.serve(port=0)
        lab.generate("hi")
        lab.use_model(named("beta", "b")).result(30)
        lab.generate("hi")
        dash = ep.dashboard()
        dash.refresh()
        assert [model for _, model in dash.model_marks] == ["beta"]
        assert "model beta" in dash.figure.get_suptitle()
        assert dash.render_png()
    finally:
        lab.close()


# -- real models: torch -> OpenVINO -> remote -> torch, under load ----------------------------------
QUESTION = "What is the capital of France?"


@pytest.mark.real_model
@pytest.mark.timeout(900)
def test_switching_between_torch_openvino_and_remote_under_load_loses_nothing(real_model, openvino_model) -> None:
    """8 clients ask the bundled model (greedy: "The capital of France is Paris.") while the Lab
    behind the endpoint switches from torch to OpenVINO, to a remote model (another real
    OpenAI-compatible server, here a second endpoint), and back to torch: every reply is whole and
    says Paris, no slot leaks, the numbers and the URL stay."""
    upstream_lab = csl.Lab(openvino_model, num_of_concurrent_executions=8, max_queue_size=16)
    lab = csl.Lab(real_model, num_of_concurrent_executions=4, max_queue_size=8, max_new_tokens=12)
    try:
        upstream = upstream_lab.serve(port=0)
        remote = csl.remote_model(upstream.url, tokenizer=real_model, name="remote SmolLM2")
        ep = lab.serve(port=0)
        load = Load(ep.url, message=QUESTION).start()
        reports = []
        for model in (openvino_model, remote, real_model, None):
            _until(lambda seen=len(load.replies): len(load.replies) >= seen + 8, 240)
            if model is not None:
                reports.append(lab.use_model(model).result(240))
        load.stop()
        load.assert_nothing_lost()
        wrong = [r for r in load.replies if "Paris" not in r[3]]
        assert not wrong, wrong[:3]
        assert [r.new_name for r in reports] == [openvino_model.name, "remote SmolLM2", real_model.name]
        print(f"{len(load.replies)} replies over 3 switches: " + "; ".join(
            f"-> {r.new_name} in {r.seconds:.1f} s ({r.drained} drained, {r.cancelled} cancelled)" for r in reports))
        snap = lab.service.gate.snapshot()
        assert (snap.running, snap.waiting) == (0, 0), "a slot leaked"
        stats = httpx.get(ep.url + "/stats", timeout=5).json()
        assert stats["completed"] == len(load.replies) and len(stats["model_changes"]) == 3
        assert stats["backend"] == "torch"
    finally:
        lab.close()
        upstream_lab.close()
