"""``run_grid``: plan the rows of a grid, wire one lane per model, start the runner.

``Lab.grid`` calls it with the Lab's service and configuration; everything here is a client of
:class:`~chatstream_lab.service.Service` (no engine is touched directly). Variants are derived
from the Lab's configuration on the Lab's model; on another model from that model's own chat
template with the Lab's system prompt and sampling parameters (a variant that names a template
uses it everywhere).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..config import UNSET, Limits, ServeConfig
from ..errors import ConfigError
from ..prompts.variants import derive_config, resolve_with_system
from ..service import Service
from .cache import GridBook, RowCache
from .capabilities import reports_logprobs, why_not_scored
from .checks import Check, check_names
from .result import GridLayout, GridResult
from .rows import GridInput, GridRow
from .runner import GridRunner, GridState, Lane, RunPlan
from .spec import (
    ModelEntry,
    model_fingerprint,
    normalize_inputs,
    normalize_models,
    normalize_seeds,
    normalize_variants,
    package_versions,
    row_config,
    row_key,
)

Reference = str | Callable[[GridInput], "str | None"] | None


def _with_references(inputs: Sequence[GridInput], reference: Reference) -> tuple[GridInput, ...]:
    if reference is None:
        return tuple(inputs)
    out = []
    for item in inputs:
        value = reference(item) if callable(reference) else reference
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"reference must give a string, got {value!r}", name="reference")
        out.append(GridInput(item.index, item.messages, value, item.metadata))
    return tuple(out)


def _base_config(entry: ModelEntry, lab_model: Any, lab_config: ServeConfig) -> ServeConfig:
    if entry.model is lab_model:
        return lab_config
    tokenizer = entry.model.tokenizer
    system = lab_config.system_prompt if tokenizer is not None and lab_config.system_prompt else UNSET
    return ServeConfig(entry.model.name, resolve_with_system(None, tokenizer, system), lab_config.params,
                       model_ref=entry.model.ref)


def _variant_configs(entry: ModelEntry, base: ServeConfig, variants: dict[str, Any]) -> dict[str, ServeConfig]:
    out = {}
    for name, spec in variants.items():
        try:
            out[name] = base if spec is None else derive_config(base, spec, entry.model.tokenizer)
        except ConfigError as exc:
            raise type(exc)(f"variant {name!r} on {entry.label}: {exc}", name=exc.name) from exc
        except Exception as exc:  # TemplateError and friends: name the variant
            raise ConfigError(f"variant {name!r} on {entry.label}: {exc}", name="variants") from exc
    return out


def _earlier_rows(reuse: Any) -> Iterable[GridRow]:
    if reuse is True or reuse is False or reuse is None:
        return ()
    sources = [reuse] if isinstance(reuse, (GridResult, str, Path)) else list(reuse)
    rows: list[GridRow] = []
    for source in sources:
        result = source if isinstance(source, GridResult) else GridResult.load(source)
        rows += result.rows
    return rows


def run_grid(service: Service, config: ServeConfig, inputs: Any, variants: Any = None, models: Any = None,
             seeds: Any = 1, checks: Sequence[Check] = (), reference: Reference = None, *,
             reuse: Any = True, book: GridBook | None = None, concurrency: int | None = None,
             reserve: int = 0, token_logprobs: bool = True, scorer: Any = None) -> GridResult:
    """Plan and start a grid (see ``Lab.grid``); returns its result at once."""
    grid_inputs = _with_references(normalize_inputs(inputs), reference)
    variant_specs = normalize_variants(variants)
    seed_values = normalize_seeds(seeds)
    entries = normalize_models(models, service.model)
    checks = tuple(checks)
    names = tuple(check_names(checks))
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or concurrency < 1):
        raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}", name="concurrency")
    cache = book.cache if book is not None and reuse is not False else None
    earlier = RowCache(_earlier_rows(reuse))

    rows: list[GridRow] = []
    lanes: list[Lane] = []
    configs: dict[tuple[str, str], ServeConfig] = {}
    leaders: dict[int, list[int]] = {}
    reused: dict[int, GridRow] = {}
    score_configs: dict[int, ServeConfig] = {}
    versions = package_versions()
    for entry in entries:
        per_variant = _variant_configs(entry, _base_config(entry, service.model, config), variant_specs)
        lane = _lane(entry, service, per_variant, concurrency, reserve, token_logprobs)
        if lane.score_reason is not None and scorer is not None and grid_inputs_have_references(grid_inputs):
            lane.scorer, lane.score_reason = _scorer_service(scorer, entry), None
        fingerprint = model_fingerprint(entry.model)
        first_of_key: dict[str, int] = {}
        for item in grid_inputs:
            for vname, vconfig in per_variant.items():
                configs[(entry.label, vname)] = vconfig
                for seed in seed_values:
                    i = len(rows)
                    rc = row_config(vconfig, seed)
                    key = row_key(fingerprint, rc, item.messages)
                    rows.append(GridRow(i, entry.label, vname, item, seed, rc.config_id, key, fingerprint,
                                        str(entry.model.backend), str(entry.model.dtype),
                                        {k: v for k, v in rc.params.as_dict().items() if k != "logprobs"},
                                        rc.template_name, versions=versions))
                    lane.rows.append(i)
                    lane.configs[i] = rc
                    score_configs[i] = vconfig
                    if key is not None and key in first_of_key:
                        leaders[first_of_key[key]].append(i)
                        continue
                    if key is not None:
                        first_of_key[key] = i
                        leaders[i] = []
                    found = (cache.get(key) if cache is not None else None) or earlier.get(key)
                    if found is not None:
                        reused[i] = found
        lanes.append(lane)
    layout = GridLayout(tuple(e.label for e in entries), tuple(variant_specs), names, seed_values, configs)
    plan = RunPlan(tuple(lanes), checks, names, {k: v for k, v in leaders.items() if v}, reused, score_configs)
    state = GridState(rows)
    runner = GridRunner(state, plan, cache)
    result = GridResult(state, layout, runner)
    runner.start()
    if book is not None:
        book.started(result)
    return result


def grid_inputs_have_references(inputs: Sequence[GridInput]) -> bool:
    return any(item.reference is not None for item in inputs)


def _scorer_service(scorer: Any, entry: ModelEntry) -> Service:
    """A Service of ``scorer`` (the same weights on an engine that can score, e.g. the torch copy of
    an OpenVINO model) for the reference scores of ``entry``'s rows; closed when the lane ends."""
    model = scorer.model if hasattr(scorer, "service") else scorer  # a Lab, or a LoadedModel
    if why_not_scored(model) is not None:
        raise ConfigError(f"scorer {model.name!r} cannot score either: {why_not_scored(model)}", name="scorer")
    if model.name != entry.model.name:
        raise ConfigError(f"scorer {model.name!r} is not the same model as {entry.model.name!r}: its scores would "
                          "describe other weights", name="scorer")
    return Service.build(model, config=ServeConfig(model.name, None if model.tokenizer is None else
                                                   resolve_with_system(None, model.tokenizer)),
                         limits=Limits(1, 0))


def _lane(entry: ModelEntry, service: Service, configs: dict[str, ServeConfig], concurrency: int | None,
          reserve: int, token_logprobs: bool) -> Lane:
    """The Lab's own service for its model (in flight: its limit less ``reserve`` slots kept for a
    running endpoint's clients); a service of its own, with the Lab's limits, for another model."""
    limits = service.limits
    if entry.model is service.model:
        lane_service, owned = service, False
        width = max(1, limits.num_of_concurrent_executions - reserve)
    else:
        width = concurrency or limits.num_of_concurrent_executions
        lane_service = Service.build(entry.model, config=next(iter(configs.values())),
                                     limits=Limits(width, limits.max_queue_size))
        owned = True
    if concurrency is not None:
        width = min(width, concurrency)
    return Lane(entry.label, lane_service, [], width, entry.remote, owned,
                token_logprobs and reports_logprobs(entry.model), why_not_scored(entry.model))


__all__ = ["run_grid"]
