"""A constrained reply in the preview widget: it streams, and each token shows how much of the
model's raw probability its grammar allowed (the scripted model; the real one in notebook 05)."""

from __future__ import annotations

import asyncio

from chatstream_lab.constraint import Constraint
from chatstream_lab.types import FinishReason


async def test_a_constrained_preview_shows_what_the_grammar_allowed(make_lab):
    lab = make_lab("hello")  # the model wants "hello"; the grammar allows yes / no
    preview = lab.preview("Is it?", response_format=Constraint.regex("(yes|no)"))
    fin = await asyncio.wait_for(preview.wait(), 10)
    assert fin.finish_reason is FinishReason.STOP and preview.text in ("yes", "no")
    assert preview.tokens and all(t.allowed is not None and t.allowed < 0.01 for t in preview.tokens[:1])
    preview.tokens_panel.colour.value = True
    html = preview.reply.value
    assert "grammar allowed" in html and "border-bottom:3px solid" in html
    free = lab.preview("Is it?")
    await asyncio.wait_for(free.wait(), 10)
    assert free.text == "hello" and all(t.allowed is None for t in free.tokens)
