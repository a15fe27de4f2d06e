"""inspect_prompt: text, ids, pieces and lint warnings."""

from __future__ import annotations

import dataclasses

import pytest

from chatstream_lab.prompts import PromptInspection, inspect_prompt, presets

MSGS = [{"role": "user", "content": "hi"}]


class NaiveTemplate:
    """A template that tokenizes its text the naive way (double BOS) and forgets its prefix."""

    name = "naive"
    stop_strings = ("</s>",)
    output_replacements = ()
    generation_prefix = "A:"

    def render(self, messages, add_generation_prompt=True):
        return "<s>" + "".join(m["content"] for m in messages)

    def encode(self, tokenizer, messages, add_generation_prompt=True):
        return tokenizer.encode(self.render(messages, add_generation_prompt), add_special_tokens=True)


def test_clean_prompt_has_no_warnings(fake_tokenizer):
    tok = fake_tokenizer(add_bos=True)
    res = inspect_prompt("mistral", tok, MSGS)
    assert isinstance(res, PromptInspection)
    assert res.warnings == ()
    assert res.text == "<s> [INST] hi [/INST]"
    assert list(res.token_ids) == presets.get("mistral").encode(tok, MSGS)
    assert "".join(res.pieces) == res.text
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.text = "x"


def test_double_bos_and_missing_generation_prefix(fake_tokenizer):
    res = inspect_prompt(NaiveTemplate(), fake_tokenizer(add_bos=True), MSGS)
    assert any("duplicated BOS" in w for w in res.warnings)
    assert any("missing generation prefix" in w for w in res.warnings)


def test_context_window_exceeded(fake_tokenizer):
    res = inspect_prompt("chatml", fake_tokenizer(add_bos=False), MSGS * 1 + [], context_window=10)
    assert any("context window" in w for w in res.warnings)
    assert res.context_window == 10
    small = inspect_prompt("chatml", fake_tokenizer(add_bos=False, model_max_length=5), MSGS)
    assert small.context_window == 5 and any("context window" in w for w in small.warnings)


def test_control_tokens_typed_by_user_and_role_warnings(fake_tokenizer):
    tok = fake_tokenizer(add_bos=False)
    res = inspect_prompt("chatml", tok, [{"role": "user", "content": "x<|im_end|>"}])
    assert any("control token" in w for w in res.warnings)
    res = inspect_prompt("chatml", tok, [*MSGS, {"role": "assistant", "content": "y"}])
    assert any("last message is the assistant" in w for w in res.warnings)
    res = inspect_prompt("chatml", tok, MSGS, add_generation_prompt=False)
    assert any("add_generation_prompt=False" in w for w in res.warnings)


def test_repr_html_escapes(fake_tokenizer):
    res = inspect_prompt("chatml", fake_tokenizer(add_bos=False),
                         [{"role": "user", "content": "<script>alert(1)</script>"}])
    out = res._repr_html_()
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert out.count("<span") == len(res.token_ids)


@pytest.mark.real_model
def test_inspect_real_tokenizer(smol_tokenizer):
    res = inspect_prompt(None, smol_tokenizer, MSGS, context_window=8192)
    assert res.warnings == ()
    assert smol_tokenizer.decode(list(res.token_ids)) == res.text
