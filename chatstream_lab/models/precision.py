"""What an OpenVINO model runs in: weight format x compute precision, and who chose it.

Values only (no measuring here; that is :mod:`.calibrate`). A :class:`Precision` is what
``load_model(dtype=...)`` takes on the OpenVINO backend and what ``LoadedModel.dtype`` shows:
``"int8/f32"`` = int8 weights, fp32 compute; ``"float16"`` alone = fp16 weights, compute left to
the runtime (bf16 on CPUs that have it). A :class:`PrecisionChoice` records how it was chosen (the
calibration's measurements, or the user's override) for the repr, ``/stats`` and the cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..errors import ConfigError


class Weights(str, Enum):
    """The weight formats the OpenVINO backend exports (``optimum-cli --weight-format``)."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"
    INT8 = "int8"  # NNCF, asymmetric, per output channel (optimum's default for int8)
    INT4 = "int4"  # NNCF, asymmetric, groups of 64 (embedding / head in int8)

    def __str__(self) -> str:
        return self.value

    @property
    def export_args(self) -> tuple[str, ...]:
        return {Weights.FLOAT16: ("--weight-format", "fp16"),
                Weights.FLOAT32: ("--weight-format", "fp32"),
                Weights.INT8: ("--weight-format", "int8"),
                Weights.INT4: ("--weight-format", "int4", "--group-size", "64")}[self]


class Compute(str, Enum):
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` on the CPU: the precision activations are computed in."""

    F32 = "f32"
    BF16 = "bf16"  # only where the CPU has it (AVX512-BF16 / AMX); elsewhere OpenVINO computes in f32

    def __str__(self) -> str:
        return self.value


_WEIGHT_ALIASES = {"fp16": Weights.FLOAT16, "fp32": Weights.FLOAT32, "f16": Weights.FLOAT16,
                   "f32": Weights.FLOAT32}


@dataclass(frozen=True)
class Precision:
    """Weights plus compute. ``compute=None`` leaves it to the runtime (fp32 weights: f32)."""

    weights: Weights
    compute: Compute | None = None

    def __str__(self) -> str:
        return self.weights.value if self.compute is None else f"{self.weights.value}/{self.compute.value}"

    @property
    def compile_properties(self) -> dict[str, str]:
        """What the engine adds to its compile properties (nothing = the runtime's default)."""
        if self.compute is not None:
            return {"INFERENCE_PRECISION_HINT": self.compute.value}
        if self.weights is Weights.FLOAT32:  # fp32 weights mean fp32 compute: agreement with torch
            return {"INFERENCE_PRECISION_HINT": Compute.F32.value}
        return {}

    @classmethod
    def parse(cls, text: str) -> Precision:
        """``"int8"``, ``"int8/f32"``, ``"float16/bf16"``, ``"fp16/f32"`` -> Precision.

        Raises:
            ConfigError: (``name="dtype"``) naming what the OpenVINO backend offers.
        """
        weights_text, slash, compute_text = str(text).removeprefix("torch.").partition("/")
        try:
            weights = _WEIGHT_ALIASES.get(weights_text) or Weights(weights_text)
            compute = Compute(compute_text) if slash else None
        except ValueError:
            offered = ", ".join(repr(w.value) for w in Weights)
            raise ConfigError(f"the OpenVINO backend offers dtype {offered}, optionally with a compute precision "
                              f"('int8/f32', 'float16/bf16'), not {text!r}; use backend='torch' for other dtypes",
                              name="dtype") from None
        return cls(weights, compute)


class ChoiceSource(str, Enum):
    """Who decided a model's precision."""

    CALIBRATED = "calibrated"  # measured on this machine just now
    CACHED = "cached calibration"  # measured earlier on a machine with the same CPU signature
    OVERRIDE = "dtype override"  # load_model(dtype=...) / --dtype

    def __str__(self) -> str:
        return self.value


class Verdict(str, Enum):
    """How one gate reply compares with the torch fp32 reference."""

    AGREES = "agrees"  # token for token, to the end of the reply (or the token limit)
    NEAR_TIE = "near tie"  # parts where the reference itself was undecided: tolerated
    DIFFERS = "differs"  # parts where the reference was sure: the candidate fails the gate

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PromptVerdict:
    """One gate prompt: the verdict, where the reply parted (None: it did not) and the
    reference's log-probability margin of its own token over the candidate's there."""

    prompt: str
    verdict: Verdict
    agreed_tokens: int
    reference_tokens: int
    parted_at: int | None = None
    margin: float | None = None  # nats; inf when the candidate's token was not in the reference's top

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "verdict": self.verdict.value, "agreed_tokens": self.agreed_tokens,
                "reference_tokens": self.reference_tokens, "parted_at": self.parted_at,
                "margin": None if self.margin is None or math.isinf(self.margin) else round(self.margin, 4)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptVerdict:
        margin = d.get("margin")
        if d.get("parted_at") is not None and margin is None:
            margin = math.inf
        return cls(d["prompt"], Verdict(d["verdict"]), int(d["agreed_tokens"]), int(d["reference_tokens"]),
                   d.get("parted_at"), margin)


@dataclass(frozen=True)
class GateResult:
    """The correctness gate's answer for one candidate (see :mod:`.gate` for the rule)."""

    verdicts: tuple[PromptVerdict, ...]

    @property
    def passed(self) -> bool:
        return all(v.verdict is not Verdict.DIFFERS for v in self.verdicts)

    @property
    def agreed_tokens(self) -> int:
        return sum(v.agreed_tokens for v in self.verdicts)

    @property
    def reference_tokens(self) -> int:
        return sum(v.reference_tokens for v in self.verdicts)

    @property
    def summary(self) -> str:
        """``"passed: 189/207 tokens agree, 4 near ties"`` / ``"failed on 'What is ...' at token 6"``."""
        ties = sum(v.verdict is Verdict.NEAR_TIE for v in self.verdicts)
        head = f"{self.agreed_tokens}/{self.reference_tokens} tokens agree, {ties} near ties"
        if self.passed:
            return f"passed: {head}"
        first = next(v for v in self.verdicts if v.verdict is Verdict.DIFFERS)
        return f"failed: {first.prompt!r} parts at token {first.parted_at}; {head}"

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary, "verdicts": [v.as_dict() for v in self.verdicts]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        return cls(tuple(PromptVerdict.from_dict(v) for v in d.get("verdicts", ())))


@dataclass(frozen=True)
class CandidateResult:
    """One candidate precision as calibration saw it. Speeds are medians over the rounds (tok/s);
    None where it was not timed (it failed the gate, or could not be exported or compiled)."""

    precision: Precision
    gate: GateResult | None = None
    one_stream_tok_s: float | None = None
    batch_tok_s: float | None = None
    one_stream_runs: tuple[float, ...] = ()
    batch_runs: tuple[float, ...] = ()
    error: str | None = None

    @property
    def eligible(self) -> bool:
        """Passed the gate and was timed: calibration may choose it."""
        return (self.error is None and self.gate is not None and self.gate.passed
                and self.one_stream_tok_s is not None and self.batch_tok_s is not None)

    @property
    def summary(self) -> str:
        if self.error is not None:
            return f"{self.precision}: {self.error}"
        speed = "" if self.one_stream_tok_s is None or self.batch_tok_s is None else \
            f"1 stream {self.one_stream_tok_s:.1f} tok/s, 16 streams {self.batch_tok_s:.0f} tok/s; "
        return f"{self.precision}: {speed}gate {self.gate.summary if self.gate else 'not run'}"

    def as_dict(self) -> dict[str, Any]:
        return {"precision": str(self.precision), "one_stream_tok_s": _round(self.one_stream_tok_s),
                "batch_tok_s": _round(self.batch_tok_s), "one_stream_runs": [_round(x) for x in self.one_stream_runs],
                "batch_runs": [_round(x) for x in self.batch_runs], "error": self.error,
                "gate": self.gate.as_dict() if self.gate is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateResult:
        gate = d.get("gate")
        return cls(Precision.parse(d["precision"]), GateResult.from_dict(gate) if gate else None,
                   d.get("one_stream_tok_s"), d.get("batch_tok_s"), tuple(d.get("one_stream_runs", ())),
                   tuple(d.get("batch_runs", ())), d.get("error"))


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a model runs in, and why (``LoadedModel.precision``; ``/stats``, the repr)."""

    precision: Precision
    source: ChoiceSource
    candidates: tuple[CandidateResult, ...] = ()
    signature: dict[str, Any] = field(default_factory=dict)  # CpuSignature.as_dict() of the measuring machine
    measured_at: str | None = None  # ISO time of the calibration
    loadavg: tuple[float, ...] = ()  # the 1-min load average before and after it (timings are noisy)
    seconds: float | None = None  # what the calibration took (exports included)
    note: str = ""

    @property
    def chosen(self) -> CandidateResult | None:
        return next((c for c in self.candidates if c.precision == self.precision), None)

    @property
    def label(self) -> str:
        """``"int8/f32 (calibrated: 1 stream 93.8 tok/s, 16 streams 658 tok/s)"``."""
        chosen = self.chosen
        if chosen is not None and chosen.one_stream_tok_s is not None and chosen.batch_tok_s is not None:
            return (f"{self.precision} ({self.source}: 1 stream {chosen.one_stream_tok_s:.1f} tok/s, "
                    f"16 streams {chosen.batch_tok_s:.0f} tok/s)")
        return f"{self.precision} ({self.source})"

    def with_source(self, source: ChoiceSource) -> PrecisionChoice:
        from dataclasses import replace

        return replace(self, source=source)

    def as_dict(self, *, detail: bool = True) -> dict[str, Any]:
        """JSON-ready; ``detail=False`` drops the per-prompt gate verdicts (what ``/stats`` shows)."""
        candidates = [c.as_dict() for c in self.candidates]
        if not detail:
            for c, full in zip(candidates, self.candidates):
                c.pop("one_stream_runs")
                c.pop("batch_runs")
                c["gate"] = full.gate.summary if full.gate is not None else None
        return {"precision": str(self.precision), "weights": self.precision.weights.value,
                "compute": self.precision.compute.value if self.precision.compute else "runtime default",
                "source": self.source.value, "measured_at": self.measured_at, "loadavg": list(self.loadavg),
                "seconds": _round(self.seconds), "note": self.note, "signature": dict(self.signature),
                "candidates": candidates}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecisionChoice:
        return cls(Precision.parse(d["precision"]), ChoiceSource(d["source"]),
                   tuple(CandidateResult.from_dict(c) for c in d.get("candidates", ())),
                   dict(d.get("signature") or {}), d.get("measured_at"), tuple(d.get("loadavg") or ()),
                   d.get("seconds"), d.get("note", ""))

    @classmethod
    def override(cls, precision: Precision) -> PrecisionChoice:
        return cls(precision, ChoiceSource.OVERRIDE)


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 2)
