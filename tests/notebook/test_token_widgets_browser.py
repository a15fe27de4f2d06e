"""The reply box's browser side (``ReplyView``'s ES module) in headless Chromium, without JupyterLab:
the module is rendered into a plain page with a stand-in for anywidget's model (get / set / on / off /
save_changes), so hover, click, the height cap and following the stream are checked in a second or two.
(tests/notebook/test_widgets_jupyterlab.py checks the same inside a real JupyterLab.)"""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from chatstream_lab.notebook.reply_view import ReplyView

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

# anywidget's model, as far as the module uses it
_MODEL = """
window.makeModel = (state) => {
  const handlers = {};
  return {
    saved: 0,
    get: (k) => state[k],
    set: (k, v) => { state[k] = v; (handlers['change:' + k] || []).forEach(f => f()); },
    on: (e, f) => { (handlers[e] = handlers[e] || []).push(f); },
    off: (e, f) => { handlers[e] = (handlers[e] || []).filter(g => g !== f); },
    save_changes() { this.saved += 1; },
  };
};
"""


@contextlib.contextmanager
def _page():
    """A Chromium page. (Open it after making the widgets: Playwright's sync API runs an event loop in
    this thread, on which a preview would be scheduled instead of running to its end.)"""
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser.new_page(viewport={"width": 800, "height": 600})
        finally:
            browser.close()


def _render(page, view: ReplyView) -> None:
    state = {"value": view.value, "max_height": view.max_height, "selected": view.selected,
             "clickable": view.clickable}
    page.set_content(f"<!doctype html><meta charset='utf-8'><style>{view._css}</style>"
                     f"<script>{_MODEL}</script><body style='margin:20px'><div id='out' style='width:400px'></div>"
                     "<div id='below'>the line under the widget</div></body>")
    page.add_script_tag(type="module", content=view._esm.replace("export default { render };", "")
                        + f"\nwindow.model = makeModel({json.dumps(state)});"
                        + "\nrender({ model: window.model, el: document.getElementById('out') });"
                        + "\nwindow.rendered = true;")
    page.wait_for_function("() => window.rendered === true")


def test_hover_shows_the_alternatives_in_one_popup_and_a_click_selects(make_lab):
    lab = make_lab("Hi there")
    preview = lab.preview("hello")  # no running loop here: generated to the end before it returns
    preview.tokens_panel.colour.value = True
    with _page() as page:
        _check_hover_and_click(page, preview.reply)


def _check_hover_and_click(page, view: ReplyView) -> None:
    _render(page, view)
    tokens = page.locator(".csl-tok")
    expect(tokens).to_have_count(len("Hi there") + 1)  # + the end marker (the stop token)
    end = page.locator(".csl-tok.csl-end")
    expect(end).to_have_count(1)
    expect(end).to_have_attribute("data-i", str(len("Hi there")))
    popup = page.locator(".csl-pop")
    expect(popup).to_be_hidden()
    tokens.nth(2).hover()  # the space
    expect(popup).to_be_visible()
    expect(popup.locator(".csl-alt")).to_have_count(5)
    expect(popup.locator(".csl-alt-head")).to_have_text("token 2: '␣' 100.0%")
    expect(popup.locator(".csl-alt").first).to_have_text("✓ '␣' 100.0%")
    assert tokens.nth(2).get_attribute("title") is None
    expect(page.locator(".csl-tok .csl-alts").first).to_be_hidden()  # only the popup shows them
    colour = tokens.nth(0).evaluate("e => getComputedStyle(e).backgroundColor")
    assert colour != "rgba(0, 0, 0, 0)"
    page.mouse.move(790, 590)
    expect(popup).to_be_hidden()
    end.hover()  # the end marker's popup: the chance that the model stopped there
    expect(popup.locator(".csl-alt-head")).to_contain_text(f"token {len('Hi there')}: end of reply 100%")
    page.mouse.move(790, 590)
    tokens.nth(4).click()
    assert page.evaluate("() => [window.model.get('selected'), window.model.saved]") == [4, 1]
    expect(page.locator(".csl-tok.csl-selected")).to_have_attribute("data-i", "4")


def test_a_long_reply_scrolls_in_its_capped_box_and_follows_the_end():
    view = ReplyView(value="<div>" + "line<br>" * 200 + "</div>", max_height="10em")
    with _page() as page:
        _check_scrolling(page, view)


def _check_scrolling(page, view: ReplyView) -> None:
    _render(page, view)
    box = page.locator(".csl-scroll")
    size = box.evaluate("b => [b.clientHeight, b.scrollHeight, b.scrollTop + b.clientHeight]")
    em = box.evaluate("b => parseFloat(getComputedStyle(b).fontSize)")
    assert size[0] <= 10 * em + 1 < size[1]  # capped, scrolls
    assert abs(size[2] - size[1]) < 2  # showing the end
    # more text arrives: still at the end; scrolled up by the reader: stays where the reader is
    page.evaluate("() => window.model.set('value', window.model.get('value') + 'more<br>'.repeat(20))")
    assert box.evaluate("b => Math.abs(b.scrollTop + b.clientHeight - b.scrollHeight) < 2")
    box.evaluate("b => { b.scrollTop = 0; b.dispatchEvent(new Event('scroll')); }")
    page.evaluate("() => window.model.set('value', window.model.get('value') + 'again<br>')")
    assert box.evaluate("b => b.scrollTop") == 0
