"""Template helpers the notebook side needs: a stable fingerprint, and a system prompt on any template.

``fingerprint(template)`` is what goes into a configuration id: every field of a declarative
template, the source of a Jinja one, so editing one character of a turn format makes a new id.
``with_system_prompt(template, text)`` gives a template whose conversations start with ``text``
as the system message unless they bring their own: a declarative template gets it as its
``default_system``; any other template (the model's own Jinja template) is wrapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..prompts import DeclarativeTemplate


def template_name(template: Any) -> str:
    return str(getattr(template, "name", type(template).__name__))


def fingerprint(template: Any) -> Any:
    """JSON-friendly data that identifies ``template`` (for :func:`~chatstream_lab.config.config_id`)."""
    if isinstance(template, SystemPromptTemplate):
        return {"system_prompt": template.system_prompt, "inner": fingerprint(template.inner)}
    as_dict = getattr(template, "as_dict", None)
    if callable(as_dict):
        return {"type": type(template).__name__, **as_dict()}
    source = getattr(template, "source", None)
    if isinstance(source, str):
        return {"type": type(template).__name__, "name": template_name(template), "source": source,
                "stop_strings": list(getattr(template, "stop_strings", ()) or ())}
    return {"type": type(template).__name__, "name": template_name(template)}


@dataclass(frozen=True)
class SystemPromptTemplate:
    """``inner`` with ``system_prompt`` as the system message of conversations that have none."""

    inner: Any
    system_prompt: str

    @property
    def name(self) -> str:
        return f"{template_name(self.inner)} + system prompt"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return tuple(self.inner.stop_strings or ())

    @property
    def output_replacements(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.inner.output_replacements or ())

    def _with_system(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        msgs = list(messages)
        if msgs and msgs[0].get("role") == "system":
            return msgs
        return [{"role": "system", "content": self.system_prompt}, *msgs]

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        return self.inner.render(self._with_system(messages), add_generation_prompt=add_generation_prompt)

    def encode(self, tokenizer: Any, messages: Sequence[dict[str, Any]],
               add_generation_prompt: bool = True) -> list[int]:
        return self.inner.encode(tokenizer, self._with_system(messages),
                                 add_generation_prompt=add_generation_prompt)


def base_template(template: Any) -> Any:
    """``template`` without a system prompt added by :func:`with_system_prompt` (a wrapper's inner)."""
    return template.inner if isinstance(template, SystemPromptTemplate) else template


def system_prompt_of(template: Any) -> str | None:
    if isinstance(template, SystemPromptTemplate):
        return template.system_prompt
    if isinstance(template, DeclarativeTemplate):
        return template.default_system
    return None


def with_system_prompt(template: Any, system_prompt: str | None) -> Any:
    """``template`` whose conversations start with ``system_prompt`` (None or "" removes an added one)."""
    if isinstance(template, DeclarativeTemplate):
        return template.replace(default_system=system_prompt or None)
    inner = base_template(template)
    return SystemPromptTemplate(inner, system_prompt) if system_prompt else inner
