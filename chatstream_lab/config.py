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
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParameter


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
        object.__setattr__(self, "stop", tuple(stop))

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
        d = dataclasses.asdict(self)
        d["stop"] = list(self.stop)
        return d


def config_id(*parts: Any) -> str:
    """A short stable hash of a configuration, shown by previews, ``/stats`` and ``_repr_html_``."""
    blob = json.dumps(parts, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
