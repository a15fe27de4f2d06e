"""Frozen configuration values: generation parameters and serving limits.

Values are validated on construction, so a bad number fails where it is written (in a notebook
cell or a request body), with an :class:`~chatstream_lab.errors.InvalidParameter` naming it.
Change a value with :func:`dataclasses.replace` (or :meth:`SamplingParams.replace`): the
old object is never mutated, so every request keeps the configuration it was submitted with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .constraint import Constraint
from .errors import InvalidParameter

UNSET: Any = object()  # "not given" for optional keyword arguments (None is a real value)
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs


def _check_number(name: str, value: Any, *, lo: float, hi: float, integer: bool = False,
                  lo_open: bool = False) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise InvalidParameter(f"{name} must be {kind}, got {value!r}", name=name)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidParameter(f"{name} must be finite, got {value!r}", name=name)
    too_low = value <= lo if lo_open else value < lo
    if too_low or value > hi:
        left = "(" if lo_open else "["
        raise InvalidParameter(f"{name} must be in {left}{lo}, {hi}], got {value!r}", name=name)


def is_valid_unicode(text: str) -> bool:
    """False for a string holding a lone UTF-16 surrogate (JSON's ``"\\ud800"``), which no
    encoder, tokenizer or JSON response can carry."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    Args:
        max_new_tokens: upper bound on generated tokens (finish reason ``length``).
        temperature: 0 means greedy; otherwise logits are divided by it.
        top_k: keep the k most likely tokens (0 = off). Applied together with ``top_p``.
        top_p: nucleus sampling; keep the smallest set whose probability reaches ``top_p``.
        min_p: drop tokens whose probability is below ``min_p`` times the top probability.
        repetition_penalty: HF/CTRL penalty (>1 makes tokens already seen less likely).
        seed: makes sampling reproducible per request, whatever else runs in the batch.
        stop: extra stop strings; never part of the returned text.
        logprobs: None (off, no extra work per step) or K in 0..20: every ``Delta`` carries, for
            each new token, its log-probability and the K most likely alternatives
            (:class:`~chatstream_lab.types.TokenLogprob`). Log-probabilities are of the raw model
            distribution (before repetition penalty, temperature and top-k/top-p/min-p; OpenAI's
            and vLLM's convention). It changes what is reported, not what is generated, so it
            is not part of ``config_id``.
        constraint: None (free text) or a :class:`~chatstream_lab.constraint.Constraint` (a JSON
            schema, JSON object, regex or structural tag) the reply must match: the engine masks
            every token the grammar does not allow, before penalties, temperature and top-k/p/min-p
            (logprobs stay those of the raw model). An engine that cannot enforce it refuses it.

    The defaults (temperature 0.3, top_p 0.9) keep small chat models on topic; pass
    ``temperature=0`` for greedy, reproducible replies.
    """

    max_new_tokens: int = 256
    temperature: float = 0.3
    top_k: int = 0
    top_p: float = 0.9
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None
    constraint: Constraint | None = None

    def __post_init__(self) -> None:
        _check_number("max_new_tokens", self.max_new_tokens, lo=1, hi=1_000_000, integer=True)
        _check_number("temperature", self.temperature, lo=0.0, hi=100.0)
        _check_number("top_k", self.top_k, lo=0, hi=1_000_000, integer=True)
        _check_number("top_p", self.top_p, lo=0.0, hi=1.0, lo_open=True)
        _check_number("min_p", self.min_p, lo=0.0, hi=1.0)
        _check_number("repetition_penalty", self.repetition_penalty, lo=0.0, hi=100.0, lo_open=True)
        if self.seed is not None:
            _check_number("seed", self.seed, lo=0, hi=2**63 - 1, integer=True)
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (tuple, list)) or not all(isinstance(s, str) and s for s in stop):
            raise InvalidParameter(f"stop must be a list of non-empty strings, got {self.stop!r}",
                                   name="stop")
        if not all(is_valid_unicode(s) for s in stop):  # a lone surrogate cannot be encoded or sent
            raise InvalidParameter("stop strings must be valid Unicode (no lone surrogates)", name="stop")
        object.__setattr__(self, "stop", tuple(stop))
        if self.logprobs is not None:
            _check_number("logprobs", self.logprobs, lo=0, hi=MAX_LOGPROBS, integer=True)
        if isinstance(self.constraint, dict):  # as_dict() read back
            object.__setattr__(self, "constraint", Constraint.from_dict(self.constraint))
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise InvalidParameter("constraint must be a chatstream_lab.constraint.Constraint (e.g. "
                                   f"Constraint.json_schema(schema)), got {type(self.constraint).__name__}",
                                   name="constraint")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with ``changes`` applied (validated); unknown names raise InvalidParameter."""
        unknown = set(changes) - set(self.field_names())
        if unknown:
            raise InvalidParameter(
                f"unknown generation parameter(s) {sorted(unknown)}; known: {self.field_names()}",
                name=sorted(unknown)[0],
            )
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def as_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["stop"] = list(self.stop)
        d["constraint"] = None if self.constraint is None else self.constraint.as_dict()
        return d


def config_id(*parts: Any) -> str:
    """A short stable hash of a configuration, shown by previews, ``/stats`` and ``_repr_html_``."""
    blob = json.dumps(parts, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def _check_limit(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InvalidParameter(f"{name} must be an integer >= {lo}, got {value!r}", name=name)


@dataclass(frozen=True, slots=True)
class Limits:
    """How many requests generate at once and how many more may wait (the admission gate's size).

    ``num_of_concurrent_executions`` is also the batch width of the local engine; one request past
    ``num_of_concurrent_executions + max_queue_size`` is refused with QueueFull (HTTP 429).
    """

    num_of_concurrent_executions: int = 2
    max_queue_size: int = 5

    def __post_init__(self) -> None:
        _check_limit("num_of_concurrent_executions", self.num_of_concurrent_executions, 1)
        _check_limit("max_queue_size", self.max_queue_size, 0)


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on what one HTTP request may carry, checked before anything is stored or submitted.

    Args:
        max_body_bytes: request body size; larger bodies get 413 before they are buffered (the
            body is counted as it streams in, with or without ``Content-Length``).
        max_input_chars: longest user message (``/chat_stream``) or all ``messages`` together
            (``/v1/chat/completions``); longer gets 413.
        max_json_depth: nesting depth of a JSON body (``{"a": [1]}`` is 2); deeper gets 400.
        max_messages: entries in a ``/v1/chat/completions`` ``messages`` list; more gets 400.
        max_stop_strings / max_stop_chars: how many ``stop`` strings, and how long each, on every
            route that takes them; more or longer gets 400 naming ``stop``.
        max_feedback_bytes: size of ``/set_feedback``'s ``form_data`` as JSON; larger gets 413.

    The defaults fit a chat demo; see ARCHITECTURE.md, "Limits", for every bound.
    """

    max_body_bytes: int = 1 << 20
    max_input_chars: int = 8000
    max_json_depth: int = 32
    max_messages: int = 256
    max_stop_strings: int = 16
    max_stop_chars: int = 256
    max_feedback_bytes: int = 16 << 10

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_limit(f.name, getattr(self, f.name), 1)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def template_fingerprint(template: Any) -> Any:
    """JSON-friendly data that identifies a template: its own ``fingerprint()`` (every template in
    :mod:`chatstream_lab.prompts` has one), else its type and name."""
    if template is None:
        return None
    own = getattr(template, "fingerprint", None)
    if callable(own):
        return own()
    return {"object": type(template).__name__, "name": str(getattr(template, "name", ""))}


def template_name(template: Any) -> str:
    """What a template is called in previews, tables and ``/stats`` ("custom" for a seed-style class)."""
    if template is None:
        return "custom"
    return str(getattr(template, "name", type(template).__name__))


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Where a configuration's model comes from, so a saved configuration can load it again.

    ``source`` is what ``load_model`` was given (a path, a hub id; ``"bundled"`` for the bundled
    model) or the upstream URLs of a remote model; ``backend`` and ``dtype`` as
    ``LoadedModel`` reports them. Not part of ``config_id`` (that is the model's ``name``).
    """

    name: str
    source: str
    backend: str = "torch"
    dtype: str = "float32"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "source": self.source, "backend": self.backend, "dtype": self.dtype}


CONFIG_FILE_FORMAT = 1  # "chatstream_lab_config" in a saved configuration file


@dataclass(frozen=True)
class ServeConfig:
    """Model name + chat template + sampling parameters: what a preview and an endpoint run with.

    ``config_id`` is a short hash of all three (the ONE formula: previews, ``_repr_html_``,
    ``/stats``, ``chatstream-lab serve`` and ``Lab.serve()`` report the same id for the same
    configuration). Make a changed copy with :meth:`replace` (or ``Lab.configure``).
    """

    model_name: str
    template: Any
    params: SamplingParams = field(default_factory=SamplingParams)
    config_id: str = field(init=False, compare=False)
    model_ref: ModelRef | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        generation = {k: v for k, v in self.params.as_dict().items() if k != "logprobs"}
        object.__setattr__(self, "config_id", config_id(self.model_name, template_fingerprint(self.template),
                                                        generation))

    @property
    def template_name(self) -> str:
        return template_name(self.template)

    @property
    def system_prompt(self) -> str | None:
        """The system prompt the template adds to conversations that bring none (None: none)."""
        value = getattr(self.template, "system_prompt", None)
        return value if isinstance(value, str) else None

    def replace(self, *, template: Any = UNSET, **params: Any) -> ServeConfig:
        """A copy with another (already resolved) template and/or changed sampling parameters."""
        return ServeConfig(self.model_name, self.template if template is UNSET else template,
                           self.params.replace(**params), model_ref=self.model_ref)

    def to_file_data(self) -> dict[str, Any]:
        """What :meth:`save` writes: the template as its fingerprint (without an added system
        prompt, which is its own field), the sampling parameters, the model reference and the
        ``config_id`` they make. ``chatstream_lab.load_config`` rebuilds the same configuration."""
        inner = getattr(self.template, "inner", self.template)  # a system prompt wrapper's template
        return {"chatstream_lab_config": CONFIG_FILE_FORMAT, "config_id": self.config_id,
                "model": self.model_ref.as_dict() if self.model_ref else {"name": self.model_name},
                "system_prompt": self.system_prompt, "template": template_fingerprint(inner),
                "params": {k: v for k, v in self.params.as_dict().items() if k != "logprobs"}}

    def save(self, path: Any) -> Any:
        """Write this configuration to ``path`` (``.json``, or ``.toml``); returns the path.

        ``Lab.from_config(path)`` and ``chatstream-lab serve --config path`` serve it again with
        the same ``config_id``.
        """
        from pathlib import Path

        target = Path(path)
        data = self.to_file_data()
        if target.suffix.lower() == ".toml":
            text = to_toml(data)
        else:
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        target.write_text(text, encoding="utf-8")
        return target

    def as_dict(self) -> dict[str, Any]:
        return {"config_id": self.config_id, "model": self.model_name, "template": self.template_name,
                "system_prompt": self.system_prompt, "params": self.params.as_dict()}

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.params.as_dict().items()
                   if v != getattr(SamplingParams(), k) and not (k == "stop" and not v)}
        return (f"ServeConfig({self.config_id}: model={self.model_name!r}, template={self.template_name!r}, "
                f"params={changed})")


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidParameter(f"{where}: {value!r} cannot be written as TOML", name=where)
        return repr(value)
    if isinstance(value, str):  # a JSON string is a TOML basic string, once DEL is escaped too
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v, where)}"
                               for k, v in value.items() if v is not None) + "}"
    raise InvalidParameter(f"{where}: {value!r} cannot be written as TOML; save as .json", name=where)


def to_toml(data: dict[str, Any]) -> str:
    """``data`` as TOML: scalars first, then one table per nested dict. TOML has no null, so
    keys whose value is None are left out (reading them back gives the default, None)."""
    def table(prefix: str, d: dict[str, Any]) -> list[str]:
        lines = [f"{json.dumps(str(k))} = {_toml_value(v, prefix + str(k))}" for k, v in d.items()
                 if v is not None and not isinstance(v, dict)]
        for k, v in d.items():
            if isinstance(v, dict):
                name = f"{prefix}{json.dumps(str(k))}"
                lines += ["", f"[{name}]", *table(name + ".", v)]
        return lines

    return "\n".join(table("", data)) + "\n"
