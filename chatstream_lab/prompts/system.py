"""A system prompt on any template.

``with_system_prompt(template, text)`` gives a template whose conversations start with ``text``
as the system message unless they bring their own: a declarative template gets it as its
``default_system``; any other template (the model's own Jinja template) is wrapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import template_fingerprint, template_name
from .declarative import DeclarativeTemplate


@dataclass(frozen=True)
class SystemPromptTemplate:
    """``inner`` with ``system_prompt`` as the system message of conversations that have none."""

    inner: Any
    system_prompt: str

    @property
    def name(self) -> str:
        return f"{template_name(self.inner)} + system prompt"

    def fingerprint(self) -> Any:
        return {"system_prompt": self.system_prompt, "inner": template_fingerprint(self.inner)}

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
