"""DeclarativeTemplate: validation, replace(), system modes, serialization."""

from __future__ import annotations

import copy
import pickle

import pytest

from chatstream_lab.errors import ConfigError, TemplateError
from chatstream_lab.prompts import DeclarativeTemplate

USER = [{"role": "user", "content": "hi"}]


def test_minimal_template_renders():
    t = DeclarativeTemplate(name="t", user="U: {content}\n", assistant="A: {content}\n",
                            generation_prefix="A:")
    msgs = [*USER, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}]
    assert t.render(msgs) == "U: hi\nA: yo\nU: ?\nA:"
    assert t.render(msgs, add_generation_prompt=False) == "U: hi\nA: yo\nU: ?\n"


def test_replace_returns_new_validated_copy():
    t = DeclarativeTemplate(name="t")
    t2 = t.replace(default_system="Be brief.", system="[{content}]")
    assert t.default_system is None and t2.default_system == "Be brief."
    assert t2.render(USER) == "[Be brief.]hi\n"
    with pytest.raises(ConfigError, match="unknown template field"):
        t.replace(colour="red")
    with pytest.raises(ConfigError):
        t.replace(user="no content here")


@pytest.mark.parametrize("kwargs", [
    {"user": "{content} {content}"},
    {"assistant": "{nope}{content}"},
    {"system": "{content"},
    {"system_mode": "sideways"},
    {"stop_strings": ("",)},
    {"name": ""},
    {"input_replacements": (("", "x"),)},
])
def test_validation(kwargs):
    with pytest.raises(ConfigError):
        DeclarativeTemplate(**kwargs)


def test_format_fields_and_literal_braces():
    t = DeclarativeTemplate(user="{bos}<{role}>{{{content}}}{eos}", bos="<s>", eos="</s>")
    assert t.render(USER, add_generation_prompt=False) == "<s><user>{hi}</s>"


def test_merge_mode_puts_system_into_first_user_turn():
    t = DeclarativeTemplate(system="<<{content}>> ", system_mode="merge", user="[{content}]",
                            assistant="{content};")
    msgs = [{"role": "system", "content": "S"}, *USER, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "b"}]
    assert t.render(msgs) == "[<<S>> hi]a;[b]"
    assert t.render(msgs[:1]) == "[<<S>> ]"  # system only: its own user turn
    with pytest.raises(TemplateError, match="first message"):
        t.render([*USER, {"role": "system", "content": "late"}])


def test_unsupported_system_and_unknown_roles_raise():
    t = DeclarativeTemplate(system_mode="unsupported", default_system="ignored")
    assert t.render(USER) == "hi\n"  # the default is not used where a system role is unsupported
    with pytest.raises(TemplateError, match="no system role"):
        t.render([{"role": "system", "content": "s"}, *USER])
    with pytest.raises(TemplateError, match="role 'tool'"):
        DeclarativeTemplate().render([{"role": "tool", "content": "x"}])


def test_input_replacements_and_strip():
    t = DeclarativeTemplate(user="<{content}>", strip_content=True, input_replacements=(("\n", "/"),))
    assert t.render([{"role": "user", "content": "  a\nb  "}], False) == "<a/b>"


def test_pickle_deepcopy_dict_round_trip():
    t = DeclarativeTemplate(name="t", stop_strings=("x",), output_replacements=(("<NL>", "\n"),),
                            role_markers=("U:",))
    assert pickle.loads(pickle.dumps(t)) == t
    assert copy.deepcopy(t) == t
    assert DeclarativeTemplate.from_dict(t.as_dict()) == t
    assert hash(t) == hash(DeclarativeTemplate.from_dict(t.as_dict()))
