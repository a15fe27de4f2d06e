"""The bundled chat page in headless Chromium: streaming, Stop, Regenerate, Clear, safe rendering, token."""

from __future__ import annotations

import io
import logging
import os
import re

import httpx
import pytest

from chatstream_lab.models import echo_reply, scripted_model
from chatstream_lab.server import BackgroundServer, ChatStream, create_app
from chatstream_lab.server.auth import page_url

from .conftest import serving, stats, wait_for

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
LONG = "This is a long story. " * 10


def script(prompt: str) -> str:
    last_user = prompt.rsplit("<|im_start|>user\n", 1)[-1]
    return LONG if "story" in last_user else echo_reply(prompt)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def wait_done(page) -> None:
    # locator assertions, not wait_for_function: the page's CSP (no eval) stays on in these tests
    expect(page.locator("#status")).to_have_text(re.compile("^Done"), timeout=20_000)


def last_assistant(page) -> str:
    return page.locator(".msg.assistant .text").last.text_content() or ""


def test_chat_page_stream_stop_regenerate_clear(browser):
    cs = ChatStream(model=scripted_model(script, token_delay=0.01), template="chatml", max_new_tokens=1000)
    with serving(create_app(cs, close_on_shutdown=True)) as url:
        page = browser.new_page()
        page.goto(url + "/")
        # type and see the reply stream in
        page.fill("#input", "hello there")
        page.click("#send")
        wait_done(page)
        assert last_assistant(page) == "You said: hello there. This is a scripted reply."
        # HTML in user text is shown as text, never parsed
        evil = "<img src=x onerror=\"window.pwned=1\"><b>bold</b>"
        page.fill("#input", evil)
        page.press("#input", "Enter")
        wait_done(page)
        assert page.locator(".msg.user .text").last.text_content() == evil
        assert page.locator("#messages img, #messages b").count() == 0
        assert page.evaluate("window.pwned === undefined")
        # Stop mid-stream
        page.fill("#input", "tell me a story")
        page.click("#send")
        expect(page.locator(".msg.assistant").last.locator(".text")).to_have_text(re.compile(".{20,}"))
        page.click("#stop")
        page.wait_for_selector(".msg.assistant:last-child .note")
        partial = last_assistant(page)
        assert 0 < len(partial) < len(LONG) and LONG.startswith(partial)
        assert "(stopped)" in page.locator(".msg.assistant:last-child .note").text_content()
        assert wait_for(lambda: stats(url)["running"] == 0, 3)
        # Regenerate the (stopped) reply in full
        page.click("#regenerate")
        wait_done(page)
        assert last_assistant(page) == LONG
        assert page.locator(".msg.assistant").count() == 3
        # reload: history comes back from the server (same cookie)
        page.reload()
        page.wait_for_selector(".msg.assistant")
        assert page.locator(".msg.user").count() == 3 and last_assistant(page) == LONG
        # Clear
        page.click("#clear")
        expect(page.locator(".msg")).to_have_count(0)
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        r = httpx.get(url + "/get_prompt", cookies=cookies)
        assert r.json()["messages"] == []
        page.close()


def test_chat_page_with_token_and_queue_full_error(browser):
    cs = ChatStream(model=scripted_model(script, token_delay=0.01), template="chatml",
                    num_of_concurrent_executions=1, max_queue_size=0, max_new_tokens=1000)
    server = BackgroundServer(create_app(cs, token="page-token-123", close_on_shutdown=True), port=0,
                              log_level="info").start(15)
    access_log = io.StringIO()
    handler = logging.StreamHandler(access_log)
    logging.getLogger("uvicorn.access").addHandler(handler)
    try:
        url = server.url
        page = browser.new_page()
        page.goto(page_url(url, "page-token-123"))  # what the CLI prints: the token in the fragment
        assert "#token=" in page_url(url, "page-token-123")
        assert "token" not in page.url  # taken out of the address bar, kept in the page
        page.fill("#input", "hi")
        page.click("#send")
        wait_done(page)
        assert last_assistant(page).startswith("You said: hi")
        page.reload()  # the tab keeps the token (sessionStorage): the history loads again
        expect(page.locator(".msg.user .text").first).to_have_text("hi", timeout=10_000)
        # the server saw the page flow, and its access log never the token (issue 10, row 10)
        logged = access_log.getvalue()
        assert "POST /chat_stream" in logged and "GET /get_prompt" in logged, logged
        assert "page-token-123" not in logged, logged
        # hold the only slot from outside, then the page gets a readable 429
        from chatstream_lab.config import SamplingParams

        held = cs.engine.submit([1, 2, 3], SamplingParams(max_new_tokens=500))
        page.fill("#input", "are you busy?")
        page.click("#send")
        page.wait_for_selector("#error:not([hidden])")
        assert "busy" in page.locator("#error").text_content().lower()
        assert page.input_value("#input") == "are you busy?"  # nothing lost
        held.cancel()
        held.result(timeout=5)
        page.close()
    finally:
        logging.getLogger("uvicorn.access").removeHandler(handler)
        server.stop()


ATTACKER = """<!doctype html><title>attacker</title><script>
const victim = "%s";
Promise.allSettled([
  fetch(victim + "/chat_stream", {method: "POST", mode: "no-cors", credentials: "include",
        headers: {"Content-Type": "text/plain"}, body: JSON.stringify({user_input: "injected"})}),
  fetch(victim + "/set_generation_params", {method: "POST", mode: "no-cors", credentials: "include",
        headers: {"Content-Type": "text/plain"}, body: JSON.stringify({temperature: 2.0})}),
  fetch(victim + "/clear_context", {method: "POST", mode: "no-cors", credentials: "include"}),
]).then(() => { document.title = "sent"; });
</script>"""


def test_a_page_on_another_localhost_port_cannot_write_into_the_users_session(browser):
    """Row 8 of issue 10: SameSite=Lax does not separate ports of one host (they are same-site), so
    only the server's Origin / Sec-Fetch-Site / JSON checks stop these writes."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    cs = ChatStream(model=scripted_model(token_delay=0.001), template="chatml", max_new_tokens=32)
    with serving(create_app(cs, close_on_shutdown=True)) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.fill("#input", "mine")
        page.click("#send")
        wait_done(page)
        attacker = Starlette(routes=[Route("/", lambda request: HTMLResponse(ATTACKER % url))])
        with serving(attacker) as evil:
            assert evil != url and evil.startswith("http://127.0.0.1:")
            page.goto(evil + "/")
            expect(page).to_have_title("sent", timeout=10_000)
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        history = httpx.get(url + "/get_prompt", cookies=cookies).json()["messages"]
        assert [m["content"] for m in history][0] == "mine" and len(history) == 2
        params = httpx.get(url + "/get_generation_params", cookies=cookies).json()["generation_params"]
        assert params["temperature"] != 2.0
        page.close()


def test_the_page_says_it_warms_up_while_the_engine_is_built(browser):
    import threading

    from chatstream_lab.admission import AdmissionGate
    from chatstream_lab.config import Limits
    from chatstream_lab.engine import Engine
    from chatstream_lab.service import Service

    release = threading.Event()
    lm = scripted_model("Ready now.")

    class GatedBuild(Engine):  # a model that takes long to load
        def build(self) -> None:
            release.wait(30)
            super().build()

    engine = GatedBuild(lm, gate=AdmissionGate(Limits(2, 4)))
    try:
        with serving(create_app(Service.build(lm, template="chatml", generator=engine))) as url:
            page = browser.new_page()
            page.goto(url + "/")
            expect(page.locator("#status")).to_have_text(re.compile("^Warming up"), timeout=10_000)
            release.set()
            expect(page.locator("#status")).to_have_text("", timeout=10_000)
            page.fill("#input", "hi")
            page.click("#send")
            wait_done(page)
            assert last_assistant(page) == "Ready now."
    finally:
        release.set()
        engine.close()
