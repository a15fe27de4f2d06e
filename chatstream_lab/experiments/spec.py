"""What ``lab.grid(...)`` accepts, normalised into values: inputs, seeds, models, and row keys.

* an input is a string (one user message), a message list, or a dict with ``input`` /
  ``messages`` / ``prompt``, an optional ``reference`` answer, and anything else as metadata;
* ``seeds`` is a count (seeds 0..n-1), a list of seeds, or None (unseeded sampling, never reused);
* a row's key is everything that determines its output: the model's fingerprint (name, source,
  backend, dtype), the ``config_id`` (template, sampling; the seed for sampled rows), and the
  conversation. A greedy row's key leaves the seed out, since it does not change a greedy reply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..config import ServeConfig
from ..errors import ConfigError
from .rows import GridInput

INPUT_KEYS = ("input", "messages", "prompt")


def _conversation(value: Any, where: str) -> tuple[Mapping[str, str], ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if isinstance(value, Mapping) and "role" in value:
        value = [value]
    if isinstance(value, Sequence) and value and all(isinstance(m, Mapping) for m in value):
        out = []
        for m in value:
            if not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
                raise ConfigError(f"{where}: each message needs a string 'role' and 'content', got {m!r}",
                                  name="inputs")
            out.append({"role": m["role"], "content": m["content"]})
        return tuple(out)
    raise ConfigError(f"{where}: an input is a string, a list of {{'role', 'content'}} messages, or a dict "
                      f"with 'input' (or 'messages') and an optional 'reference'; got {value!r}", name="inputs")


def normalize_inputs(inputs: Any) -> tuple[GridInput, ...]:
    """``inputs`` as :class:`GridInput` values, in order (raises ConfigError naming a bad one)."""
    if isinstance(inputs, (str, Mapping)) or not isinstance(inputs, Iterable):
        raise ConfigError("inputs must be a list (of strings, message lists or dicts); wrap a single "
                          "input in a list", name="inputs")
    out = []
    for i, item in enumerate(inputs):
        where = f"inputs[{i}]"
        if isinstance(item, Mapping) and "role" not in item:
            found = [k for k in INPUT_KEYS if k in item]
            if len(found) != 1:
                raise ConfigError(f"{where}: a dict input needs exactly one of {INPUT_KEYS}, got keys "
                                  f"{sorted(item)}", name="inputs")
            reference = item.get("reference")
            if reference is not None and not isinstance(reference, str):
                raise ConfigError(f"{where}: 'reference' must be a string, got {reference!r}", name="inputs")
            metadata = {k: v for k, v in item.items() if k not in (*INPUT_KEYS, "reference")}
            out.append(GridInput(i, _conversation(item[found[0]], where), reference, metadata))
        else:
            out.append(GridInput(i, _conversation(item, where)))
    if not out:
        raise ConfigError("inputs is empty: give at least one input", name="inputs")
    return tuple(out)


def normalize_seeds(seeds: Any) -> tuple[int | None, ...]:
    """A count n -> (0, ..., n-1); a list of seeds -> itself; None -> (None,) (unseeded)."""
    if seeds is None:
        return (None,)
    if isinstance(seeds, bool):
        raise ConfigError(f"seeds must be a count, a list of integers or None, got {seeds!r}", name="seeds")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {seeds}", name="seeds")
        return tuple(range(seeds))
    values = tuple(seeds)
    if not values or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values):
        raise ConfigError(f"seeds must be a count, a list of integers >= 0 or None, got {seeds!r}", name="seeds")
    if len(set(values)) != len(values):
        raise ConfigError(f"seeds has duplicates: {seeds!r}", name="seeds")
    return values


def normalize_variants(variants: Any) -> dict[str, Any]:
    """``{name: spec}`` (None: one variant, the current configuration, called ``current``)."""
    if variants is None:
        return {"current": None}
    if not isinstance(variants, Mapping) or not variants:
        raise ConfigError("variants must be a non-empty dict: {name: template, preset name, sampling dict "
                          "or ServeConfig}", name="variants")
    for name in variants:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"variant names must be non-empty strings, got {name!r}", name="variants")
    return dict(variants)


@dataclass(frozen=True)
class ModelEntry:
    """A model of the grid and the label its rows carry."""

    label: str
    model: Any  # LoadedModel

    @property
    def remote(self) -> bool:
        return str(getattr(self.model, "backend", "torch")) == "remote"


def normalize_models(models: Any, lab_model: Any) -> tuple[ModelEntry, ...]:
    """None -> the Lab's model; a list or a ``{label: model}`` dict of LoadedModels."""
    if models is None:
        return (ModelEntry(lab_model.name, lab_model),)
    pairs = list(models.items()) if isinstance(models, Mapping) else [(None, m) for m in models]
    if not pairs:
        raise ConfigError("models is empty: leave it out for the Lab's model", name="models")
    out: list[ModelEntry] = []
    labels: set[str] = set()
    for label, model in pairs:
        if not hasattr(model, "tokenizer") or not hasattr(model, "backend"):
            raise ConfigError(f"models holds {model!r}: give loaded models (load_model(...)) or "
                              "remote_model(url) handles", name="models")
        name = label or model.name
        base, n = name, 2
        while name in labels:
            name, n = f"{base} ({n})", n + 1
        labels.add(name)
        out.append(ModelEntry(name, model))
    return tuple(out)


def model_fingerprint(model: Any) -> str:
    """Name, source, backend and dtype of ``model``, hashed (what a cached row must match)."""
    from ..config import config_id

    return config_id("model", model.name, model.source, str(model.backend), str(model.dtype))


def row_config(config: ServeConfig, seed: int | None) -> ServeConfig:
    """``config`` for one seed: a sampled configuration takes the seed; a greedy one is unchanged."""
    if seed is None or config.params.greedy:
        return config
    return config.replace(seed=seed)


def row_key(fingerprint: str, config: ServeConfig, messages: Sequence[Mapping[str, str]]) -> str | None:
    """The key of a row (None: unseeded sampling, whose output is not reproducible)."""
    if not config.params.greedy and config.params.seed is None:
        return None
    blob = json.dumps([fingerprint, config.config_id, [dict(m) for m in messages]], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Versions of the packages that make an output (stored with every row)."""
    from importlib import metadata

    out = {}
    for name in ("chatstream_lab", "torch", "transformers", "openvino", "openvino-genai"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


__all__ = ["ModelEntry", "model_fingerprint", "normalize_inputs", "normalize_models", "normalize_seeds",
           "normalize_variants", "package_versions", "row_config", "row_key"]
