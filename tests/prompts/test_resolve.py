"""resolve_template: None / name / Jinja source / object."""

from __future__ import annotations

import pytest

from chatstream_lab.errors import TemplateError
from chatstream_lab.prompts import DeclarativeTemplate, JinjaTemplate, presets, resolve_template

from .official_templates import CHATML


def test_none_uses_tokenizer_template(fake_tokenizer):
    t = resolve_template(None, fake_tokenizer(chat_template=CHATML))
    assert isinstance(t, JinjaTemplate) and t.source == CHATML


def test_none_without_tokenizer_or_template_explains(fake_tokenizer):
    with pytest.raises(TemplateError, match="no tokenizer"):
        resolve_template(None)
    with pytest.raises(TemplateError, match="no chat template"):
        resolve_template(None, fake_tokenizer(chat_template=None))


def test_names_sources_and_objects(fake_tokenizer):
    assert resolve_template("llama3") is presets.get("llama3")
    j = resolve_template(CHATML, fake_tokenizer())
    assert isinstance(j, JinjaTemplate) and j.eos_token == "</s>"
    mine = DeclarativeTemplate(name="x")
    assert resolve_template(mine) is mine
    with pytest.raises(TemplateError, match="instantiate"):
        resolve_template(DeclarativeTemplate)
    with pytest.raises(TemplateError, match="not a chat template"):
        resolve_template(42)
    with pytest.raises(TemplateError, match="Known presets"):
        resolve_template("nope")
