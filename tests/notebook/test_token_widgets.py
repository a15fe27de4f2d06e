"""Token probabilities in the widgets (colours, alternatives, branches) and the widget polish of
issue 11, on the scripted model (its fake logprobs: the script's token ~0, runners-up ~-20)."""

from __future__ import annotations

import asyncio
import re

import chatstream_lab as csl
from chatstream_lab.notebook.compare import column_title
from chatstream_lab.notebook.playground import SLIDER_LABEL_WIDTH
from chatstream_lab.notebook.tokens import prob_colour, tokens_html
from chatstream_lab.types import FinishReason, TokenLogprob, TopLogprob


def branching_reply(prompt: str) -> str:
    """The first reply is "Hello P world"; a continuation forced to "...Q" gets " rest", one that
    continues with byte 0 where the model stopped (the EOS's scripted runner-up) gets " more"."""
    if prompt.endswith("Hello Q"):
        return " rest"
    return " more" if prompt.endswith("\x00") else "Hello P world"


async def test_preview_colours_tokens_and_shows_alternatives(make_lab):
    lab = make_lab("Hi there\nyou")
    preview = lab.preview("hello")
    fin = await asyncio.wait_for(preview.wait(), 10)
    assert fin.finish_reason is FinishReason.STOP and preview.text == "Hi there\nyou"
    *reply, end = preview.tokens  # the stop token that ended the reply comes last
    assert [t.text for t in reply] == list("Hi there\nyou") and not any(t.ends_reply for t in reply)
    assert end.ends_reply and end.text == "<|im_end|>" and fin.usage.completion_tokens == len(preview.tokens)
    assert all(len(t.top) == 5 for t in preview.tokens)  # Lab previews ask for the top 5
    assert preview.tokens_panel.layout.display == "flex"
    assert "csl-tok" not in preview.reply.value  # colours are off until toggled
    preview.tokens_panel.colour.value = True
    html = preview.reply.value
    spans = re.findall(r"<span class='csl-tok'", html)
    assert len(spans) == len(reply)
    assert "token 2: &#x27;␣&#x27; 100.0%" in html  # the space token, shown as a glyph
    assert "title=" not in html  # the popup is the only hover text: no native tooltip repeating it
    assert "↵" in html and "csl-alts" in html and prob_colour(0.0) in html
    # the stop token: one muted end marker with the chance the model stopped, not reply text
    assert html.count("<span class='csl-tok csl-end'") == 1 and "■ end 100%</span>" not in html
    assert re.search(r"<span class='csl-tok csl-end' data-i='12'>■ end 100%<span class='csl-alts' style='display:none'>"
                     r"<div class='csl-alt-head'>token 12: end of reply 100% \(&#x27;&lt;\|im_end\|&gt;&#x27; 100.0%\)",
                     html)
    preview.tokens_panel.colour.value = False
    assert "csl-tok" not in preview.reply.value and "im_end" not in preview.reply.value
    assert preview.reply.value.count("you") == 1 and preview.text == "Hi there\nyou"


async def test_preview_branches_into_a_column_beside_the_original(make_lab):
    lab = make_lab(branching_reply)
    preview = lab.preview("hello")
    await asyncio.wait_for(preview.wait(), 10)
    assert preview.text == "Hello P world"
    panel = preview.tokens_panel
    assert panel.branch_row.layout.display == "flex"
    preview.reply.selected = 6  # a click on the "P" in the page picks it in "branch at"
    assert panel.picker.value == 6
    panel.colour.value = True  # re-renders the reply: the token picked stays picked
    assert panel.picker.value == 6 and preview.reply.selected == 6
    labels = [b.description for b in panel.buttons.children]
    assert labels[0].startswith("'Q'")  # the scripted runner-up: the next byte
    panel.buttons.children[0].click()
    [branch] = preview.branches
    fin = await asyncio.wait_for(branch.wait(), 10)
    assert branch.text == "Hello Q rest" == fin.text
    assert [t.text for t in branch.tokens][:7] == list("Hello Q")
    assert "branch 1" in branch.header.value and "token 6: &#x27;P&#x27; → &#x27;Q&#x27;" in branch.header.value
    # the original stays as it was, first, with the branch beside it
    assert preview.text == "Hello P world" and preview.finished.text == "Hello P world"
    assert preview.columns.children == (preview.main, branch)
    assert "original" in preview.column_label.value and preview.column_label.layout.display is None
    assert preview.stop_button.layout.display == "none"  # a finished preview shows no Stop
    # a branch of the branch joins the same row; closing one leaves the others
    second = branch.branch(8, branch.tokens[8].top[1].token_id)
    await asyncio.wait_for(second.wait(), 10)
    assert preview.branches == [branch, second] and "branch 2" in second.header.value
    branch.close_button.click()
    assert preview.branches == [second] and preview.columns.children == (preview.main, second)
    assert branch.tokens[-1].ends_reply and not branch.tokens[6].ends_reply  # the forced "Q"


async def test_preview_branches_at_the_end_marker_to_continue_instead_of_stopping(make_lab):
    lab = make_lab(branching_reply)
    preview = lab.preview("hello")
    await asyncio.wait_for(preview.wait(), 10)
    panel = preview.tokens_panel
    end = len("Hello P world")
    assert preview.tokens[end].ends_reply and len(preview.tokens) == end + 1
    assert panel.picker.options[-1] == (f"{end}: end of reply 100%", end)
    panel.picker.value = end
    first = panel.buttons.children[0]
    assert first.description.startswith("'\x00'") and first.tooltip == "continue with token 0 instead of stopping"
    first.click()
    [branch] = preview.branches
    fin = await asyncio.wait_for(branch.wait(), 10)
    assert branch.text == "Hello P world\x00 more" == fin.text and preview.text == "Hello P world"
    assert [t.ends_reply for t in branch.tokens].count(True) == 1 and branch.tokens[-1].ends_reply


async def test_chat_colours_and_branches_the_last_reply(make_lab):
    lab = make_lab(branching_reply)
    chat = lab.chat()
    await asyncio.wait_for(chat.send("hello"), 10)
    assert chat.messages[-1]["content"] == "Hello P world" and len(chat.last_tokens) == 13 + 1  # + the EOS
    chat.tokens_panel.colour.value = True
    assert chat.transcript.value.count("class='csl-tok'") == 13
    transcript = chat.transcript.value
    assert transcript.count("class='csl-tok csl-end'") == 1 and "im_end|&gt;&#x27; 100.0%" in transcript
    chat.transcript.selected = 6  # a click on a token picks it in "branch at"
    assert chat.tokens_panel.picker.value == 6
    await asyncio.wait_for(chat.branch(6, ord("Q")), 10)
    assert [m["content"] for m in chat.messages] == ["hello", "Hello Q rest"]
    assert chat.transcript.value.count("class='csl-tok'") == len("Hello Q rest")
    # the way back: the replaced reply, its tokens with it
    assert chat.tokens_panel.restore_button.layout.display is None
    chat.tokens_panel.restore_button.click()
    assert [m["content"] for m in chat.messages] == ["hello", "Hello P world"]
    assert len(chat.last_tokens) == 13 + 1 and chat.transcript.value.count("class='csl-tok'") == 13
    assert chat.tokens_panel.restore_button.layout.display == "none"
    await asyncio.wait_for(chat.branch(len("Hello P world"), 0), 10)  # at the end marker: go on
    assert [m["content"] for m in chat.messages] == ["hello", "Hello P world\x00 more"]


async def test_compare_scores_a_reference_per_template(make_lab):
    lab = make_lab("Paris.")
    view = lab.compare({"own template": None, "a very long template variant name indeed": "chatml"},
                       "capital?", reference="Paris.")
    rows = await asyncio.wait_for(view.wait(), 10)
    assert all(isinstance(r["mean_logprob"], float) and r["mean_logprob"] > -1e-3 for r in rows)
    assert "mean_logprob" in view.table.value


def test_lab_score_is_csl_score(make_lab):
    lab = make_lab("Paris.")
    assert lab.score("capital?", "Paris.", top=2) == csl.score(lab.model, "capital?", "Paris.", top=2)
    assert lab.score("capital?", "Rome.", template="chatml").mean_logprob < -10


# -- polish --------------------------------------------------------------------------------------
async def test_widget_layouts_keep_labels_whole(make_lab):
    lab = make_lab()
    preview = lab.preview("hello")
    stop = preview.stop_button.layout
    assert stop.min_width == "5.5em" and stop.flex == "0 0 auto"  # never shrinks to an icon and "…"
    await asyncio.wait_for(preview.wait(), 10)
    title = column_title("a very long template variant name indeed", lab.config)
    assert title.count("white-space:nowrap") == 2 and "text-overflow:ellipsis" in title
    assert "title='a very long template variant name indeed'" in title
    assert preview.stop_button in preview.controls.children
    assert preview.main.children.index(preview.controls) < preview.main.children.index(preview.reply)
    pg = lab.playground()
    slider = pg.sliders["repetition_penalty"]
    assert slider.style.description_width == SLIDER_LABEL_WIDTH
    assert float(SLIDER_LABEL_WIDTH.removesuffix("em")) >= 0.62 * len("repetition_penalty")
    chips = pg.inspection_html.value
    assert "Ġ" not in chips and "Ċ" not in chips


def test_the_stop_token_is_a_muted_end_marker_not_reply_text():
    t = TokenLogprob(104, "hi", -0.01, (), b"hi")
    end = TokenLogprob(2, "<|im_end|>", -0.6931, (TopLogprob(2, "<|im_end|>", -0.6931, b""),
                                                  TopLogprob(13, ".", -1.2, b".")), b"", ends_reply=True)
    html = tokens_html([t, end])  # (without colours a view shows the reply's text: no stop token)
    assert "class='csl-tok csl-end'" in html and ">■ end 50%<" in html and "end of reply 50%" in html
    assert "background:" not in html.split("csl-end'")[1].split(">")[0]  # muted: no probability colour


def test_token_pieces_show_whitespace_glyphs():
    t = TokenLogprob(1, " the\n", -0.1, (TopLogprob(2, " a", -2.0, b" a"),), b" the\n")
    html = tokens_html([t])
    assert "&#x27;␣the↵&#x27; 90.5%" in html and "&#x27;␣a&#x27; 13.5%" in html


async def test_probabilities_toggle_is_a_compact_checkbox_in_the_controls_row(make_lab):
    lab = make_lab("Hi")
    preview = lab.preview("hello")
    await asyncio.wait_for(preview.wait(), 10)
    toggle = preview.tokens_panel.colour
    assert toggle in preview.controls.children  # beside Stop and the stats line, not a bar of its own
    assert toggle.layout.width == "auto" and toggle.layout.display == "flex" and not toggle.indent
