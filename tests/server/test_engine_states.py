"""What HTTP clients see of the engine's own states, on a real uvicorn server: prompt ids refused
before anything is queued (400 naming the position, on every engine), an engine still being built
(/health 503 ``starting`` with Retry-After, requests queued meanwhile), a build that failed, and a
stopped endpoint (503 ``shutting_down``)."""

from __future__ import annotations

import threading

import httpx
import pytest

from chatstream_lab.admission import AdmissionGate
from chatstream_lab.config import Limits
from chatstream_lab.engine import Engine
from chatstream_lab.errors import ModelLoadError
from chatstream_lab.models import scripted_model
from chatstream_lab.server import create_app
from chatstream_lab.service import Service

from .conftest import serving, wait_for

pytestmark = pytest.mark.timeout(120)


class _GatedBuild(Engine):
    """A torch engine whose build waits for ``release`` (and then fails if ``fail``)."""

    def __init__(self, *args, release: threading.Event, fail: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release, self.fail = release, fail

    def build(self) -> None:
        self.release.wait(30)
        if self.fail:
            raise ModelLoadError("cannot read /private/weights.bin")
        super().build()


def _bad_id_responses(url: str) -> list[httpx.Response]:
    return [httpx.post(url + "/v1/completions", json={"prompt": ids, "max_tokens": 4}, timeout=30)
            for ids in ([1, 2, 999999], [1, -5, 2])]


def _assert_refused_by_position(responses: list[httpx.Response]) -> None:
    for response, position in zip(responses, (2, 1)):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_parameter" and error["param"] == "prompt"
        assert f"at position {position}" in error["message"]


def test_prompt_ids_outside_the_vocabulary_are_400_naming_the_position(real_backend_model) -> None:
    service = Service.build(real_backend_model)
    with serving(create_app(service, close_on_shutdown=True)) as url:
        _assert_refused_by_position(_bad_id_responses(url))
        stats = httpx.get(url + "/stats", timeout=5).json()
        assert stats["rejected"] == 0 and stats["errors"] == 0 and stats["completed"] == 0  # nothing queued
        ok = httpx.post(url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2}, timeout=60)
        assert ok.status_code == 200


def test_health_is_starting_503_while_the_engine_builds_and_requests_wait(scripted) -> None:
    release = threading.Event()
    lm = scripted("Hello there")
    engine = _GatedBuild(lm, release=release, gate=AdmissionGate(Limits(2, 4)))
    service = Service.build(lm, template="chatml", generator=engine)
    try:
        with serving(create_app(service)) as url:  # the app's startup starts the build
            health = httpx.get(url + "/health", timeout=5)
            assert health.status_code == 503 and health.headers["Retry-After"]
            assert health.json()["status"] == "starting" and health.json()["engine"]["state"] == "starting"
            replies: list[httpx.Response] = []
            client = threading.Thread(target=lambda: replies.append(httpx.post(
                url + "/v1/chat/completions", timeout=30,
                json={"messages": [{"role": "user", "content": "hi"}], "stream": False})))
            client.start()
            assert wait_for(lambda: service.gate.snapshot().waiting == 1, 10)  # queued, not refused
            assert httpx.get(url + "/health", timeout=5).json()["status"] == "starting"
            release.set()
            client.join(30)
            assert replies[0].status_code == 200
            assert replies[0].json()["choices"][0]["message"]["content"] == "Hello there"
            health = httpx.get(url + "/health", timeout=5)
            assert health.status_code == 200 and health.json()["engine"]["state"] == "running"
    finally:
        release.set()
        engine.close()


def test_a_failed_build_fails_waiting_requests_and_health_says_why(scripted) -> None:
    release = threading.Event()
    lm = scripted("x")
    engine = _GatedBuild(lm, release=release, fail=True, gate=AdmissionGate(Limits(2, 4)))
    service = Service.build(lm, template="chatml", generator=engine)
    try:
        with serving(create_app(service)) as url:
            replies: list[httpx.Response] = []
            client = threading.Thread(target=lambda: replies.append(httpx.post(
                url + "/v1/chat/completions", timeout=30,
                json={"messages": [{"role": "user", "content": "hi"}]})))
            client.start()
            assert wait_for(lambda: service.gate.snapshot().waiting == 1, 10)
            release.set()
            client.join(30)
            assert replies[0].status_code == 500 and "error id" in replies[0].json()["error"]["message"]
            health = httpx.get(url + "/health", timeout=5)
            assert health.status_code == 503 and health.headers["Retry-After"]
            body = health.json()
            assert body["status"] == "unavailable" and body["engine"]["state"] == "failed"
            assert "could not start (ModelLoadError)" in body["engine"]["detail"]
            assert "/private" not in health.text  # no path reaches a client
            later = httpx.post(url + "/v1/chat/completions", timeout=30,
                               json={"messages": [{"role": "user", "content": "hi"}]})
            assert later.status_code == 503 and later.json()["error"]["type"] == "engine_unavailable"
    finally:
        engine.close()


def test_a_stopped_endpoint_answers_503_shutting_down_with_retry_after() -> None:
    service = Service.build(scripted_model("x"), template="chatml")
    with serving(create_app(service, close_on_shutdown=True)) as url:
        service.detach()
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                       timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert r.json()["error"]["type"] == "shutting_down"  # issue 16: a stop is not a failure
