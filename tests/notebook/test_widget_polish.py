"""The rough edges of issue 17, kernel side: template labels, the stats line, empty and long replies,
the dashboard's header and timer, the playground's max_new_tokens slider."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from chatstream_lab.notebook.dashboard import Dashboard, header_text, next_tick
from chatstream_lab.notebook.labels import stat_items_html, template_label
from chatstream_lab.notebook.playground import MAX_NEW_TOKENS_STEPS
from chatstream_lab.notebook.preview import reply_html
from chatstream_lab.stats import StatsRecorder
from chatstream_lab.types import FinishReason, RequestId, Usage


@pytest.mark.real_model
def test_the_model_s_own_template_shows_by_name_and_origin_not_as_a_cache_key(real_model):
    from chatstream_lab import Lab

    lab = Lab(real_model, temperature=0)
    try:
        label = template_label(lab.config)
        cache_key = lab.config.template_name  # e.g. "SmolLM2-135M-Instruct.Q4_1-6092b4000a12 chat template"
        assert label.short == "model's own template"
        assert label.origin == f"Jinja, from {real_model.name}'s tokenizer" and "Q4_1" not in label.origin
        assert label.full == cache_key  # the full identifier, on hover
        html = label.html()
        visible = html.split(">", 1)[1]  # everything but the hover text
        assert cache_key not in visible and f"title='{cache_key}" in html.replace("&#x27;", "'")
        pg = lab.playground()
        assert "model&#x27;s own template" in pg.config_label.value
        assert "model&#x27;s own template" in lab._repr_html_()
    finally:
        lab.close()


def test_template_labels_name_presets_declarative_and_system_prompts(make_lab):
    lab = make_lab()
    assert template_label(lab.variant("chatml")) == template_label(lab.variant("chatml"))
    chatml = template_label(lab.variant("chatml"))
    assert (chatml.short, chatml.origin) == ("chatml", "preset")
    with_system = template_label(lab.variant({"template": "chatml", "system_prompt": "Be brief."}))
    assert (with_system.short, with_system.origin) == ("chatml + system prompt", "preset")
    brief = template_label(lab.variant(lab.variant("chatml").template.replace(name="brief", user="U: {content}\n")))
    assert (brief.short, brief.origin) == ("brief", "declarative template")
    own_system = template_label(lab.variant({"system_prompt": "Be brief."}))
    assert own_system.short == "model's own template + system prompt"
    jinja = template_label(lab.variant({"template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}))
    assert (jinja.short, jinja.origin) == ("custom jinja", "Jinja source")


def test_stats_line_items_carry_their_separator_and_never_break_inside():
    html = stat_items_html(["stop", "8 tokens", "TTFT 0.21 s"])
    assert html.count("white-space:nowrap") == 3 and html.count("csl-sep") == 3
    assert "overflow:hidden" in html and "margin-left:-" in html  # the first separator of a line is clipped


def test_an_empty_finished_reply_says_so():
    assert "(empty)" in reply_html("", finished=True)
    assert "(empty)" not in reply_html("", finished=False)  # still waiting: nothing yet is not "empty"
    assert "(empty)" not in reply_html("Paris.", finished=True)


async def test_compare_columns_cap_their_height_and_mark_an_empty_reply(make_lab):
    lab = make_lab(lambda prompt: "" if "USER:" in prompt else "#\n" * 64)  # vicuna: empty; the rest degenerate
    view = lab.compare({"own": None, "vicuna": "vicuna"}, "hi")
    rows = await asyncio.wait_for(view.wait(), 20)
    assert [r["tokens"] for r in rows][1] <= 1
    own, vicuna = view.previews["own"], view.previews["vicuna"]
    assert own.reply.max_height == vicuna.reply.max_height == "18em"  # a long column scrolls inside
    assert "(empty)" in vicuna.reply.value and "(empty)" not in own.reply.value
    assert "model&#x27;s own template" in own.header.value and "title=" in own.header.value


def test_max_new_tokens_slider_moves_in_round_steps():
    steps = MAX_NEW_TOKENS_STEPS
    assert steps[0] == 1 and steps[-1] == 1024
    assert all(b / a <= 2.0 for a, b in zip(steps, steps[1:]))  # one notch never more than doubles


def test_playground_max_new_tokens_is_a_ladder_that_keeps_the_current_value(make_lab):
    lab = make_lab(max_new_tokens=50)
    pg = lab.playground()
    slider = pg.sliders["max_new_tokens"]
    assert slider.value == 50 and 50 in slider.options
    i = list(slider.options).index(50)
    slider.index = i + 1  # the smallest move a drag can make
    assert lab.config.params.max_new_tokens == slider.options[i + 1] <= 64
    slider.value = 32
    assert lab.config.params.max_new_tokens == 32


def _recorder_after_one_request() -> StatsRecorder:
    clock = [100.0]
    rec = StatsRecorder("abc", clock=lambda: clock[0])
    rid = RequestId("r1")
    rec.on_queued(rid)
    rec.on_admitted(rid)
    rec.on_first_token(rid)
    clock[0] = 102.0
    rec.on_finished(rid, FinishReason.STOP, Usage(completion_tokens=40, ttft_s=0.1, total_s=2.0))
    clock[0] = 103.0
    return rec


def test_dashboard_header_says_idle_instead_of_a_stale_rate():
    snap = _recorder_after_one_request().snapshot()
    assert snap.running == 0 and snap.throughput_tokens_per_s > 0  # the windowed rate decays over 10 s
    header = header_text(snap, "http://127.0.0.1:1")
    assert "idle" in header and "tok/s" not in header
    assert "endpoint stopped" in header_text(snap, stopped=True)
    busy = header_text(dataclasses.replace(snap, running=2))
    assert f"{snap.throughput_tokens_per_s:.1f} tok/s" in busy


def test_dashboard_figure_header_is_the_idle_one():
    dash = Dashboard(_recorder_after_one_request().snapshot)
    dash.refresh()
    assert "idle" in dash.figure._suptitle.get_text() and "tok/s ·" not in dash.figure._suptitle.get_text()


def test_next_tick_keeps_a_fixed_rate_and_skips_missed_ticks():
    assert next_tick(1.0, 1.3, 1.0) == 2.0  # a redraw of 0.3 s shortens the wait, not the rate
    assert next_tick(1.0, 3.5, 1.0) == 4.0  # fell behind: the next tick on the grid, no burst
    assert next_tick(1.0, 2.0, 1.0) == 3.0


async def test_dashboard_redraws_at_its_rate_when_a_redraw_is_slow():
    # A redraw that takes 40% of the interval (Agg + PNG on a busy kernel) must not stretch the period:
    # it was sleep(interval) + redraw, ~1.4 s per frame for a 1 s interval.
    rec = StatsRecorder("abc")
    dash = Dashboard(rec.snapshot, interval=0.25)
    dash.refresh()  # the first draw imports matplotlib and builds the figure: not part of the rate
    drawn: list[float] = []
    real_draw = dash.draw

    def slow_draw() -> None:
        time.sleep(0.1)
        real_draw()
        drawn.append(time.monotonic())

    dash.draw = slow_draw
    dash.refresh = lambda force=True: (dash.sample(), dash.draw(), True)[-1]  # every tick redraws
    t0 = time.monotonic()
    dash.start()
    await asyncio.sleep(2.6)
    dash.stop()
    elapsed = time.monotonic() - t0
    # 10 ticks in 2.6 s at 0.25 s; sleep + redraw would give 7
    assert len(drawn) >= 9, (len(drawn), elapsed)
    gaps = [b - a for a, b in zip(drawn, drawn[1:])]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.25, abs=0.05)
