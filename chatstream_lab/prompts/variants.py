"""A configuration changed by a loose spec: what ``Lab.configure`` and ``Lab.compare`` accept."""

from __future__ import annotations

from typing import Any

from ..config import UNSET, SamplingParams, ServeConfig, template_fingerprint
from ..errors import ConfigError, TemplateError
from .resolve import resolve_served_template, resolve_template
from .system import SystemPromptTemplate, base_template, with_system_prompt


def resolve_with_system(template: Any, tokenizer: Any, system_prompt: Any = UNSET) -> Any:
    """``template`` resolved (None: the model's own), with ``system_prompt`` added unless UNSET."""
    resolved = resolve_served_template(template, tokenizer)
    return resolved if system_prompt is UNSET else with_system_prompt(resolved, system_prompt)


def derive_config(base: ServeConfig, spec: Any, tokenizer: Any) -> ServeConfig:
    """``base`` changed by ``spec``: a ServeConfig (taken as is), a template or preset name, a
    SamplingParams, or a dict of ``template`` / ``system_prompt`` / sampling parameters (UNSET
    values are ignored). Raises ConfigError / TemplateError / InvalidParameter when invalid."""
    if isinstance(spec, ServeConfig):
        return spec
    if isinstance(spec, SamplingParams):
        return ServeConfig(base.model_name, base.template, spec, model_ref=base.model_ref)
    if not isinstance(spec, dict):
        spec = {"template": spec}
    spec = {k: v for k, v in spec.items() if v is not UNSET}
    template, system_prompt = spec.pop("template", UNSET), spec.pop("system_prompt", UNSET)
    if template is UNSET:
        if system_prompt is UNSET:
            return base.replace(**spec)
        template = base_template(base.template)
    return base.replace(template=resolve_with_system(template, tokenizer, system_prompt), **spec)


def config_for_model(config: ServeConfig, old_tokenizer: Any, model_name: str, tokenizer: Any,
                     template: Any = UNSET) -> ServeConfig:
    """``config`` moved to another model (``Lab.use_model``): the same sampling parameters and
    added system prompt; the template is ``template`` when given, else the new model's own chat
    template where ``config`` used the old model's own, else the same template.

    Raises TemplateError (the new model has no chat template of its own: pass ``template=``),
    ConfigError (a template for a model without a local tokenizer, which renders its own)."""
    system = config.template.system_prompt if isinstance(config.template, SystemPromptTemplate) else UNSET
    if template is UNSET:
        base = base_template(config.template)
        template = None if _is_own_template(base, old_tokenizer) else base
    if tokenizer is None:
        if template is not None:
            raise ConfigError("this model has no local tokenizer: the upstream renders its own chat template, "
                              "so pass template=None (or give remote_model a tokenizer)", name="template")
        return ServeConfig(model_name, None, config.params)  # (a system prompt is the caller's message then)
    return ServeConfig(model_name, resolve_with_system(template, tokenizer, system), config.params)


def _is_own_template(template: Any, tokenizer: Any) -> bool:
    """``template`` is the chat template of ``tokenizer`` (None: a model that renders its own)."""
    if template is None or tokenizer is None:
        return template is None
    try:
        own = resolve_template(None, tokenizer)
    except TemplateError:  # the tokenizer has none: the template was chosen, not inherited
        return False
    return bool(template_fingerprint(template) == template_fingerprint(own))
