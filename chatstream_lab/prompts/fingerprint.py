"""What identifies a template, and how a template is saved and rebuilt.

:func:`template_to_dict` is the JSON form a :class:`~chatstream_lab.prompts.ChatPrompt` saves; the
same data is a template's ``fingerprint()``, which goes into every configuration id
(:class:`~chatstream_lab.config.ServeConfig`): a preset by name, a declarative template by every
field, a Jinja template by its source, so editing one character of a turn format makes a new id.
"""

from __future__ import annotations

from typing import Any

from ..errors import TemplateError
from . import presets
from .declarative import DeclarativeTemplate
from .jinja import JinjaTemplate


def template_to_dict(template: Any) -> dict[str, Any] | None:
    if template is None:
        return None
    name = presets.name_of(template)
    if name is not None:
        return {"preset": name}
    if isinstance(template, DeclarativeTemplate):
        return {"declarative": template.as_dict()}
    if isinstance(template, JinjaTemplate):
        return {"jinja": {"source": template.source, "bos_token": template.bos_token,
                          "eos_token": template.eos_token, "name": template.name,
                          "stop_strings": list(template.stop_strings or ()),
                          "output_replacements": [list(p) for p in template.output_replacements],
                          "variables": [[k, list(v) if isinstance(v, tuple) else v]
                                        for k, v in template.variables]}}
    return {"object": getattr(template, "name", type(template).__name__)}


def template_from_dict(data: dict[str, Any] | None) -> Any:
    if data is None:
        return None
    if "preset" in data:
        return presets.get(data["preset"])
    if "declarative" in data:
        return DeclarativeTemplate.from_dict(data["declarative"])
    if "jinja" in data:
        d = dict(data["jinja"])
        d["stop_strings"] = tuple(d.get("stop_strings", ()))
        d["output_replacements"] = tuple(tuple(p) for p in d.get("output_replacements", ()))
        d["variables"] = tuple((k, v) for k, v in d.get("variables", ()))
        return JinjaTemplate(**d)
    raise TemplateError(f"the saved ChatPrompt used template {data.get('object')!r}, which cannot be "
                        "rebuilt from JSON; pass it again: ChatPrompt.from_dict(data, template=...)")


def fingerprint(template: Any) -> Any:
    """JSON-friendly data that identifies ``template`` (a template's own ``fingerprint()`` first)."""
    own = getattr(template, "fingerprint", None)
    if callable(own):
        return own()
    return template_to_dict(template)
