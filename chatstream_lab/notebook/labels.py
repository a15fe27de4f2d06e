"""Short labels for the widgets' headers: a template by its own name and where it came from, and a
stats line that wraps without leaving a separator at the end or the start of a line.

A template's ``name`` is an identifier (the model's own Jinja template is named after its tokenizer's
directory, e.g. ``SmolLM2-135M-Instruct.Q4_1-6092b4000a12 chat template``: a cache key that reads as
"Q4_1 weights"). Headers show :class:`TemplateLabel` ``short`` and ``origin``; the full ``name`` is
the hover text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from ..config import ServeConfig, template_name
from ..prompts import DeclarativeTemplate, JinjaTemplate, base_template, presets, system_prompt_of

_OWN_SUFFIX = " chat template"  # how JinjaTemplate.from_tokenizer names the tokenizer's own template


@dataclass(frozen=True)
class TemplateLabel:
    """``short``: what a header shows; ``origin``: where the template came from; ``full``: its
    identifier (the hover text)."""

    short: str
    origin: str
    full: str

    @property
    def title(self) -> str:
        return f"{self.full} ({self.origin})"

    def html(self) -> str:
        """``<b>short</b> <small>(origin)</small>`` with the full identifier on hover."""
        return (f"<span title='{escape(self.title, quote=True)}'><b>{escape(self.short)}</b> "
                f"<small style='color:#667'>({escape(self.origin)})</small></span>")


def template_label(config: ServeConfig) -> TemplateLabel:
    """The label of ``config``'s template (a system prompt added by the Lab shows as ``+ system prompt``)."""
    template = config.template
    base = base_template(template)
    full = template_name(template)
    system = " + system prompt" if system_prompt_of(template) and base is not template else ""
    if base is None:
        return TemplateLabel("server's own template", "applied by the remote server", full or "none")
    preset = presets.name_of(base)
    if preset is not None:
        return TemplateLabel(preset + system, "preset", full)
    if isinstance(base, DeclarativeTemplate):
        if _preset_with_system(base):  # a preset given a system prompt: its default_system replaced
            return TemplateLabel(base.name + " + system prompt", "preset", full)
        return TemplateLabel(base.name + system, "declarative template", full)
    if isinstance(base, JinjaTemplate):
        if base.name.endswith(_OWN_SUFFIX) or base.name == "tokenizer" + _OWN_SUFFIX:
            return TemplateLabel("model's own template" + system,
                                 f"Jinja, from {config.model_name}'s tokenizer", full)
        return TemplateLabel(base.name + system, "Jinja source", full)
    return TemplateLabel(full + system, f"{type(base).__name__} object", full)


def _preset_with_system(template: DeclarativeTemplate) -> bool:
    if template.name not in presets.names():
        return False
    preset = presets.get(template.name)
    return template != preset and template.replace(default_system=preset.default_system) == preset


# The stats line: each item carries its separator in front of it, and the line is shifted left by one
# separator's width inside a box that clips: the item that starts a line has its separator clipped,
# so a wrapped line never starts or ends with a dangling "·".
_SEP_WIDTH = "1.3em"
_LINE = f"display:flex;flex-wrap:wrap;margin-left:-{_SEP_WIDTH}"
_SEP = f"display:inline-block;width:{_SEP_WIDTH};text-align:center;color:#889"


def stat_items_html(items: Sequence[str], *, css_class: str = "csl-stats") -> str:
    """``items`` (plain text) as one line that wraps between items only, without dangling separators."""
    spans = "".join(f"<span class='csl-stat' style='white-space:nowrap'><span class='csl-sep' style='{_SEP}'>"
                    f"·</span>{escape(item)}</span>" for item in items)
    return (f"<div class='{css_class}' style='overflow:hidden;font-size:85%;line-height:1.5'>"
            f"<div style='{_LINE}'>{spans}</div></div>")

