"""The widgets in a real JupyterLab 4, in Debian's Chromium: what only a live page shows.

Send while a reply streams (and while a cell that sent one still blocks), Stop on a long reply, the
token popup inside the page, a click on a token, and compare's columns (stats lines without dangling
separators, height caps, "(empty)", labels not cut). Each test writes a small notebook on the
scripted model (fast, deterministic) and drives it through JupyterLab's UI.
"""

from __future__ import annotations

import os
import time

import pytest
from _jupyterlab import (
    CHROMIUM,
    CUT_LABELS_JS,
    DANGLING_SEPARATORS_JS,
    JupyterLab,
    jupyterlab_installed,
    launch_chromium,
    notebook_json,
    run_cell,
    wait_cell_done,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

SETUP = ("import chatstream_lab as csl\n"
         "lab = csl.Lab(csl.scripted_model({reply}, token_delay={delay}), temperature=0, max_new_tokens=2000)")


@pytest.fixture(scope="module")
def jlab(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed")
    if not jupyterlab_installed():
        pytest.skip("JupyterLab is not installed (the test extra has it)")
    with JupyterLab(tmp_path_factory.mktemp("jupyterlab")) as server:
        yield server


@pytest.fixture
def page(jlab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page = launch_chromium(p)
        try:
            yield page
        finally:
            browser.close()
            jlab.shutdown_kernels()


def _outputs(page):
    return page.locator(".jp-OutputArea-output")


def _open(jlab, page, name: str, cells: list[str]) -> None:
    (jlab.root / name).write_text(notebook_json(cells))
    jlab.open(page, name)


def test_send_while_a_reply_streams_keeps_the_message(jlab, page):
    from playwright.sync_api import expect

    _open(jlab, page, "chat.ipynb", [
        SETUP.format(reply='lambda prompt: "Cherry." if "red fruit" in prompt else "word " * 600', delay=0.01)
        + "\nchat = lab.chat()\nchat",
        "import time\nchat.clear()\nchat.send('Name a red fruit.')\nchat.stream.result(60)\ntime.sleep(4)",
    ])
    run_cell(page, 0)
    box, send = page.locator(".widget-textarea textarea"), _outputs(page).get_by_role("button", name="Send")
    transcript = page.locator(".jp-OutputArea-output .csl-replyview, .jp-OutputArea-output .widget-html").first
    box.fill("What is the capital of France?")
    send.click()
    expect(transcript.get_by_text("▍")).to_be_visible(timeout=20_000)  # streaming
    box.fill("Name a red fruit.")
    send.click(force=True)  # whatever the button's state: the message must not be lost
    time.sleep(1.0)
    expect(box).to_have_value("Name a red fruit.")
    expect(send).to_be_disabled()
    assert "Name a red fruit." not in transcript.inner_text()
    _outputs(page).get_by_role("button", name="Stop").click()
    expect(transcript.get_by_text("(cancelled)")).to_be_visible(timeout=20_000)
    expect(send).to_be_enabled()
    send.click()
    expect(transcript.get_by_text("Cherry.")).to_be_visible(timeout=20_000)
    expect(box).to_have_value("")

    # A cell that sends and blocks until the engine is done: a click on Send meanwhile is not taken
    # (it was: the click, handled before the reply's pump ran, dropped the reply)
    run_cell(page, 1, wait=False)
    expect(transcript).not_to_contain_text("What is the capital", timeout=20_000)  # chat.clear() ran
    box.fill("And a yellow one?")
    send.click(force=True)
    wait_cell_done(page, 1)
    time.sleep(1.0)
    expect(box).to_have_value("And a yellow one?")
    assert "And a yellow one?" not in transcript.inner_text()
    expect(transcript.get_by_text("Cherry.")).to_have_count(1)  # the blocked cell's reply is there


def test_stop_stays_put_while_a_long_reply_grows(jlab, page):
    from playwright.sync_api import expect

    _open(jlab, page, "long_reply.ipynb", [SETUP.format(reply='"word " * 1500', delay=0.006)
                                           + "\npreview = lab.preview('hello', max_new_tokens=3500)\npreview"])
    run_cell(page, 0)
    stop = _outputs(page).get_by_role("button", name="Stop")
    reply_height = "() => document.querySelector('.csl-reply').getBoundingClientRect().height"  # (re-rendered)
    expect(stop).to_be_visible(timeout=20_000)
    positions, heights = [], []
    for _ in range(12):
        positions.append(stop.bounding_box()["y"])
        heights.append(page.evaluate(reply_height))
        time.sleep(0.3)
    assert heights[-1] > heights[0] + 40, heights  # the reply grew by lines meanwhile
    assert max(positions) - min(positions) < 1, positions  # Stop did not move
    stop.click()
    status = page.locator(".csl-stats")
    expect(status).to_contain_text("cancelled", timeout=20_000)
    assert "length" not in status.inner_text()


def test_token_popup_is_whole_in_the_page_and_a_click_picks_the_token(jlab, page):
    from playwright.sync_api import expect

    _open(jlab, page, "tokens.ipynb", [
        SETUP.format(reply='"word " * 70 + "end"', delay=0) + "\npreview = lab.preview('hello')\npreview",
        "await preview.wait()\npreview.tokens_panel.colour.value = True",
    ])
    jlab.run_all(page)
    tokens = page.locator(".csl-tok")
    expect(tokens).to_have_count(353 + 1)  # + the end marker: the stop token, hoverable like the others
    last = tokens.last  # on the reply's last line, just above the box's end
    last.scroll_into_view_if_needed()
    last.hover()
    popup = page.locator(".csl-pop:visible, .csl-alts:visible")  # wherever the alternatives show
    expect(popup).to_be_visible()
    expect(popup.locator(".csl-alt")).to_have_count(5)
    geometry = page.evaluate("""() => {
        const el = [...document.querySelectorAll('.csl-pop, .csl-alts')].find(e => e.getClientRects().length);
        el.style.pointerEvents = 'auto';  // (it lets the mouse through: hit-test it for this check)
        const pop = el.getBoundingClientRect();
        const stats = [...document.querySelectorAll('.jp-OutputArea-output .widget-html-content')]
            .find(e => e.textContent.includes('tok/s')).getBoundingClientRect();  // the stats line
        const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
        const corners = [[pop.left + 2, pop.top + 2], [pop.right - 2, pop.top + 2],
                         [pop.left + 2, pop.bottom - 2], [pop.right - 2, pop.bottom - 2]];
        const result = {inside: pop.left >= 0 && pop.top >= 0 && pop.right <= vw && pop.bottom <= vh,
                        uncovered: corners.every(([x, y]) => el.contains(document.elementFromPoint(x, y))),
                        overStats: !(pop.bottom <= stats.top || pop.top >= stats.bottom ||
                                     pop.right <= stats.left || pop.left >= stats.right)};
        el.style.pointerEvents = '';
        return result;
    }""")
    assert geometry == {"inside": True, "uncovered": True, "overStats": False}, geometry
    assert tokens.first.get_attribute("title") is None  # no native tooltip repeating the popup
    page.mouse.move(5, 5)
    expect(popup).to_be_hidden()
    tokens.nth(7).click()
    picker = page.locator(".widget-dropdown select")
    expect(picker).to_have_value("7: 'r' 100%")  # token 7 of "word word…"
    expect(page.locator(".csl-tok.csl-selected")).to_have_attribute("data-i", "7")


def test_compare_columns_wrap_cleanly_cap_their_height_and_mark_empty_replies(jlab, page):
    from playwright.sync_api import expect

    reply = 'lambda prompt: "" if "USER:" in prompt else ("#\\n" * 64 if "[INST]" in prompt else "Paris.")'
    _open(jlab, page, "compare.ipynb", [
        SETUP.format(reply=reply, delay=0.002)
        + "\nview = lab.compare({'model own': None, 'a rather long variant name': 'chatml', 'vicuna': 'vicuna',"
          " 'llama2': 'llama2'}, 'What is the capital of France?')\nview",
        "rows = await view.wait()",
    ])
    jlab.run_all(page)
    for width in range(900, 1500, 50):  # wherever the stats lines wrap, and however the columns fall
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(300)
        assert page.evaluate(DANGLING_SEPARATORS_JS, ".widget-html-content") == [], width
        assert page.evaluate(CUT_LABELS_JS) == [], width
    page.set_viewport_size({"width": 1000, "height": 900})
    expect(page.get_by_text("(empty)")).to_be_visible()
    boxes = page.evaluate("""() => [...document.querySelectorAll('.csl-scroll')].map(b =>
        ({client: b.clientHeight, scroll: b.scrollHeight,
          em: parseFloat(getComputedStyle(b).fontSize)}))""")
    assert len(boxes) == 4
    degenerate = max(boxes, key=lambda b: b["scroll"])
    assert degenerate["scroll"] > degenerate["client"] <= 18 * degenerate["em"] + 1  # capped, scrolls
