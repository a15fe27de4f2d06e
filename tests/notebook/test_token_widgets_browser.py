"""The coloured reply of a preview in headless Chromium: hovering a token shows its alternatives."""

from __future__ import annotations

import os

import pytest

expect = pytest.importorskip("playwright.sync_api").expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def test_hover_shows_the_alternatives(make_lab):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed")
    from playwright.sync_api import sync_playwright

    lab = make_lab("Hi there")
    preview = lab.preview("hello")  # no running loop here: generated to the end before it returns
    assert preview.finished is not None
    preview.tokens_panel.colour.value = True
    html = preview.reply.value  # what the HTML widget puts in the page
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.set_content(f"<!doctype html><meta charset='utf-8'><body>{html}</body>")
            tokens = page.locator(".csl-tok")
            expect(tokens).to_have_count(len("Hi there"))
            alts = tokens.nth(2).locator(".csl-alts")  # the space
            expect(alts).to_be_hidden()
            tokens.nth(2).hover()
            expect(alts).to_be_visible()
            expect(alts.locator(".csl-alt")).to_have_count(5)
            expect(alts.locator(".csl-alt").first).to_have_text("'␣' 100.0%")
            assert tokens.nth(2).get_attribute("title").startswith("'␣' 100.0% — top: '␣' 100.0% | '!'")
            colour = tokens.nth(0).evaluate("e => getComputedStyle(e).backgroundColor")
            assert colour != "rgba(0, 0, 0, 0)"
            tokens.nth(0).hover()
            expect(alts).to_be_hidden()
        finally:
            browser.close()
