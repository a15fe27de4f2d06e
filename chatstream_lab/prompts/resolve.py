"""One place that turns what a user passes as ``template=`` into a template object."""

from __future__ import annotations

from typing import Any

from ..errors import TemplateError
from . import presets
from .base import is_template
from .jinja import JinjaTemplate


def resolve_template(template: Any = None, tokenizer: Any = None) -> Any:
    """None -> the tokenizer's own Jinja chat template; str -> a preset (or, if it looks like Jinja
    source, a JinjaTemplate with the tokenizer's BOS/EOS); a template object -> itself.
    """
    if template is None:
        if tokenizer is None:
            raise TemplateError("template=None means the model's own chat template, but no tokenizer "
                                "was given; pass a tokenizer or template=<preset name> (e.g. 'chatml')")
        return JinjaTemplate.from_tokenizer(tokenizer)
    if isinstance(template, str):
        if "{%" in template or "{{" in template:
            if tokenizer is not None:
                return JinjaTemplate.from_tokenizer(tokenizer, source=template, name="custom jinja")
            return JinjaTemplate(template, name="custom jinja")
        return presets.get(template)
    if isinstance(template, type):
        raise TemplateError(f"template must be a template object, not the class {template.__name__}; "
                            "instantiate it")
    if is_template(template):
        return template
    raise TemplateError(f"{type(template).__name__} is not a chat template: pass None, a preset name "
                        f"({', '.join(presets.names())}), a DeclarativeTemplate or a JinjaTemplate")


def resolve_served_template(template: Any, tokenizer: Any) -> Any:
    """Like :func:`resolve_template`, but None stays None for a model without a local tokenizer
    (a remote model that applies its own chat template to the messages it is sent)."""
    if template is None and tokenizer is None:
        return None
    return resolve_template(template, tokenizer)
