"""Lab: the composition root. Configuration, wiring, serving lifecycle, no side effects."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from chatstream_lab import Lab, SamplingParams
from chatstream_lab.errors import ConfigError, InvalidParameter, ServerStartError
from chatstream_lab.models import scripted_model


@pytest.fixture
def lab():
    lab = Lab(scripted_model("The capital of France is Paris."), temperature=0)
    yield lab
    lab.close()


def _wait_for(predicate, timeout: float = 2.0) -> None:
    """Stats are recorded right after the final event is delivered: allow them a moment."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert predicate()


def _listening_ports() -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def test_import_and_construction_have_no_side_effects():
    code = (
        "import sys, threading, asyncio\n"
        "import chatstream_lab, chatstream_lab.lab, chatstream_lab.notebook\n"
        "from chatstream_lab.models import scripted_model\n"
        "from chatstream_lab.notebook import StreamPreview, Dashboard, Endpoint, Playground\n"
        "lab = chatstream_lab.Lab(scripted_model('hi'))\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert 'nest_asyncio' not in sys.modules\n"
        "assert not hasattr(asyncio, '_nest_patched')\n"
        "assert lab.service.health().state.value == 'idle'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_configuration_is_frozen_and_configure_makes_a_new_one(lab):
    first = lab.config
    assert first.params == SamplingParams(temperature=0)
    assert len(first.config_id) == 10
    second = lab.configure(temperature=0.5, template="chatml")
    assert lab.config is second and second is not first
    assert first.params.temperature == 0 and first.template_name != "chatml"
    assert second.config_id != first.config_id
    assert lab.configure(temperature=0.5, template="chatml").config_id == second.config_id  # stable
    third = lab.configure(system_prompt="Be brief.")
    assert third.system_prompt == "Be brief." and third.template_name == "chatml"
    assert third.config_id != second.config_id
    assert lab.configure(system_prompt=None).config_id == second.config_id
    with pytest.raises(InvalidParameter):
        lab.configure(temperature=-1)
    with pytest.raises(InvalidParameter):
        lab.configure(not_a_param=1)
    assert lab.config.config_id == second.config_id  # a failed configure changes nothing


def test_variants(lab):
    base = lab.config
    assert lab.variant({"max_new_tokens": 7}).params.max_new_tokens == 7
    assert lab.variant("chatml").template_name == "chatml"
    assert lab.variant(SamplingParams(top_k=3)).params.top_k == 3
    assert lab.variant(base) is base
    wrapped = lab.variant({"system_prompt": "Hi there."})
    assert "Hi there." in wrapped.template.render([{"role": "user", "content": "q"}])
    assert wrapped.template.stop_strings == base.template.stop_strings


def test_generate_submit_and_stats_share_one_engine(lab):
    assert lab.service.health().state.value == "idle"  # nothing started yet
    assert lab.generate("q") == "The capital of France is Paris."
    assert lab.engine.running
    _wait_for(lambda: lab.stats().completed == 1)
    assert lab.stats().config_id == lab.config.config_id


def test_repr_html_shows_state(lab):
    html = lab._repr_html_()
    for part in ("scripted", lab.config.template_name, lab.config.config_id, "not serving", "temperature=0"):
        assert part in html
    ep = lab.serve()
    html = lab._repr_html_()
    assert ep.url in html and "href" in html
    assert ep.url in repr(lab)
    assert ep.url in ep._repr_html_() and ep.config_id in ep._repr_html_()


def test_serve_twice_stops_the_old_server_and_stop_frees_the_port(lab):
    ep1 = lab.serve()
    port = ep1.port
    ep2 = lab.serve(port=port)  # re-running the cell on the same port works: the old one is stopped
    assert not ep1.running and ep2.running and lab.endpoint is ep2
    assert httpx.get(f"{ep2.url}/health", trust_env=False).status_code == 200
    ep2.stop()
    ep2.stop()  # idempotent
    assert lab.endpoint is None and port not in _listening_ports()
    with socket.socket() as s:  # (SO_REUSEADDR, as servers bind: TIME_WAIT is not a live listener)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_busy_port_fails_fast_with_a_clear_message(lab):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerStartError, match="in use"):
            lab.serve(port=port)
    other = Lab(lab.model)
    try:
        ep = other.serve()
        with pytest.raises(ServerStartError, match="another Lab"):
            lab.serve(port=ep.port)
        assert ep.running
    finally:
        other.close()


def test_twenty_serve_stop_cycles_leave_no_threads_or_sockets(lab):
    lab.generate("start the engine")
    threads_before = {t.ident for t in threading.enumerate()}
    listening_before = _listening_ports()
    with httpx.Client(trust_env=False, timeout=10) as client:
        for i in range(20):
            ep = lab.serve()
            r = client.post(f"{ep.url}/v1/chat/completions",
                            json={"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 4})
            assert r.status_code == 200
            if i % 2:
                ep.stop()  # odd cycles stop explicitly; even ones are stopped by the next serve()
    lab.stop_serving()
    leaked = [t for t in threading.enumerate() if t.ident not in threads_before]
    assert not leaked, leaked
    assert _listening_ports() == listening_before


def test_serve_can_change_limits_while_idle(lab):
    lab.generate("start")
    ep = lab.serve(num_of_concurrent_executions=3, max_queue_size=1)
    assert lab.engine.gate.snapshot().limit == 3
    stats = httpx.get(f"{ep.url}/stats", trust_env=False).json()
    assert stats["limit"] == 3 and stats["max_queue_size"] == 1
    with pytest.raises(ConfigError):
        lab.serve(num_of_concurrent_executions=0)


def test_endpoint_stop_cancels_its_open_generations(lab):
    slow = Lab(scripted_model("x" * 2000, token_delay=0.01), max_new_tokens=2000)
    try:
        ep = slow.serve()

        def post() -> None:
            try:
                httpx.post(f"{ep.url}/v1/chat/completions", trust_env=False, timeout=30,
                           json={"messages": [{"role": "user", "content": "q"}], "stream": True})
            except httpx.HTTPError:
                pass

        t = threading.Thread(target=post)
        t.start()
        while slow.engine.gate.snapshot().running == 0:
            threading.Event().wait(0.01)
        ep.stop(timeout=5)
        t.join(10)
        assert slow.engine.gate.snapshot().running == 0
        _wait_for(lambda: slow.stats().cancelled == 1)
    finally:
        slow.close()


def test_close_and_context_manager():
    with Lab(scripted_model("hi"), temperature=0) as lab:
        ep = lab.serve()
        assert lab.generate("q") == "hi"
    assert not ep.running and lab.service.health().state.value == "idle"  # the engine was closed
    with pytest.raises(ConfigError):
        lab.generate("q")
