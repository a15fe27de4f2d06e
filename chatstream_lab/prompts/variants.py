"""A configuration changed by a loose spec: what ``Lab.configure`` and ``Lab.compare`` accept."""

from __future__ import annotations

from typing import Any

from ..config import UNSET, SamplingParams, ServeConfig
from .resolve import resolve_served_template
from .system import base_template, with_system_prompt


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
