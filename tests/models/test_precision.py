"""Precision values, the correctness gate's rule, the choice rule, the CPU signature and the cache
file: pure functions on known cases (the real calibration is in test_calibration.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from chatstream_lab.errors import ConfigError
from chatstream_lab.models.calibrate import CalibrationPlan, choose
from chatstream_lab.models.cpu import CpuSignature, current_signature
from chatstream_lab.models.gate import NEAR_TIE_NATS, Reference, judge
from chatstream_lab.models.precision import (
    CandidateResult,
    ChoiceSource,
    Compute,
    GateResult,
    Precision,
    PrecisionChoice,
    PromptVerdict,
    Verdict,
    Weights,
)
from chatstream_lab.models.precision_cache import PrecisionCache

STOP = 2


# -- Precision -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, weights, compute", [
    ("int8", Weights.INT8, None), ("int8/f32", Weights.INT8, Compute.F32),
    ("float16/bf16", Weights.FLOAT16, Compute.BF16), ("fp16/f32", Weights.FLOAT16, Compute.F32),
    ("float32", Weights.FLOAT32, None), ("int4/f32", Weights.INT4, Compute.F32),
])
def test_precision_parses_what_dtype_takes_and_prints_it_back(text, weights, compute) -> None:
    p = Precision.parse(text)
    assert (p.weights, p.compute) == (weights, compute)
    assert Precision.parse(str(p)) == p


@pytest.mark.parametrize("bad", ["bfloat16", "int8/f16", "int3", "float16/"])
def test_an_unknown_precision_names_what_the_backend_offers(bad) -> None:
    with pytest.raises(ConfigError) as info:
        Precision.parse(bad)
    assert info.value.name == "dtype" and "'int8/f32'" in str(info.value) and "backend='torch'" in str(info.value)


def test_compute_precision_becomes_the_inference_hint() -> None:
    assert Precision(Weights.INT8, Compute.F32).compile_properties == {"INFERENCE_PRECISION_HINT": "f32"}
    assert Precision(Weights.FLOAT16, Compute.BF16).compile_properties == {"INFERENCE_PRECISION_HINT": "bf16"}
    assert Precision(Weights.FLOAT16).compile_properties == {}  # the runtime's default
    assert Precision(Weights.FLOAT32).compile_properties == {"INFERENCE_PRECISION_HINT": "f32"}


def test_int8_exports_asymmetric_per_channel_and_int4_in_groups_of_64() -> None:
    assert Weights.INT8.export_args == ("--weight-format", "int8")  # optimum's int8 is asymmetric, per channel
    assert "--sym" not in Weights.INT4.export_args and Weights.INT4.export_args[-2:] == ("--group-size", "64")


# -- the gate --------------------------------------------------------------------------------
def _reference() -> Reference:
    """Two prompts: the exact one (reply 10 11 STOP) and another (20 21 22 23, no stop, limit 4).
    At position 1 of the second, the reference had 21 at -0.5 and 31 at -0.6 (a near tie), 41 at -3."""
    top_exact = tuple(((t, -0.1), (99, -2.5)) for t in (10, 11, STOP))
    top_other = (((20, -0.1), (98, -4.0)), ((21, -0.5), (31, -0.6), (41, -3.0)), ((22, -0.2),), ((23, -0.2),))
    return Reference(("capital?", "other"), ((1, 2), (3, 4)), ((10, 11, STOP), (20, 21, 22, 23)),
                     (top_exact, top_other), (STOP,), reply_tokens=4)


def test_the_gate_passes_identical_replies() -> None:
    result = judge(_reference(), [[10, 11, STOP], [20, 21, 22, 23, 24, 25]], alone=[10, 11, STOP, 7])
    assert result.passed and [v.verdict for v in result.verdicts] == [Verdict.AGREES] * 3
    assert (result.agreed_tokens, result.reference_tokens) == (10, 10)


def test_the_gate_tolerates_parting_at_a_near_tie_of_the_reference() -> None:
    result = judge(_reference(), [[10, 11, STOP], [20, 31, 5, 5]])
    other = result.verdicts[1]
    assert result.passed and other.verdict is Verdict.NEAR_TIE
    assert other.parted_at == 1 and other.margin == pytest.approx(0.1) and other.margin < NEAR_TIE_NATS


def test_the_gate_rejects_parting_where_the_reference_was_sure() -> None:
    result = judge(_reference(), [[10, 11, STOP], [20, 41, 5, 5]])
    assert not result.passed and result.verdicts[1].verdict is Verdict.DIFFERS
    assert result.verdicts[1].margin == pytest.approx(2.5)
    outside_top = judge(_reference(), [[10, 11, STOP], [20, 777, 5, 5]])  # not even in its top-k
    assert not outside_top.passed and math.isinf(outside_top.verdicts[1].margin)
    assert "'other' parts at token 1" in outside_top.summary


def test_the_demo_prompt_must_agree_exactly_batched_and_alone() -> None:
    near_tie_on_exact = Reference(_reference().prompts, _reference().prompt_ids, _reference().replies,
                                  (tuple(((t, -0.5), (12, -0.55)) for t in (10, 11, STOP)), _reference().top[1]),
                                  (STOP,), 4)
    assert not judge(near_tie_on_exact, [[10, 12, STOP], [20, 21, 22, 23]]).passed  # "Paris, France." case
    alone_differs = judge(_reference(), [[10, 11, STOP], [20, 21, 22, 23]], alone=[10, 11, 11, STOP])
    assert not alone_differs.passed and alone_differs.verdicts[-1].prompt == "capital? (alone)"


def test_stopping_early_or_late_is_a_difference() -> None:
    late = judge(_reference(), [[10, 11, 12, STOP], [20, 21, 22, 23]])
    assert not late.passed and late.verdicts[0].parted_at == 2
    early = judge(_reference(), [[10, 11, STOP], [20, STOP]])
    assert not early.passed and early.verdicts[1].parted_at == 1


# -- the choice ------------------------------------------------------------------------------
def _gate(passed: bool) -> GateResult:
    return GateResult((PromptVerdict("p", Verdict.AGREES if passed else Verdict.DIFFERS, 3, 4,
                                     None if passed else 3, None if passed else 5.0),))


def _candidate(text: str, one: float | None, batch: float | None, passed: bool = True) -> CandidateResult:
    return CandidateResult(Precision.parse(text), _gate(passed), one, batch)


def test_choose_never_takes_a_candidate_that_failed_the_gate_however_fast() -> None:
    results = [_candidate("float16/f32", 60, 500), _candidate("int4/f32", 120, 900, passed=False)]
    assert choose(results).precision == Precision.parse("float16/f32")


def test_choose_weighs_one_stream_and_sixteen_alike() -> None:
    fp16_bf16 = _candidate("float16/bf16", 54.3, 504)  # the table (medians)
    fp16_f32 = _candidate("float16/f32", 66.8, 290)
    int8_f32 = _candidate("int8/f32", 77.6, 603)
    assert choose([fp16_bf16, fp16_f32, int8_f32]) is int8_f32
    # a faster single stream does not win when it halves the batch throughput
    assert choose([fp16_bf16, fp16_f32]) is fp16_bf16


def test_choose_returns_none_when_nothing_is_eligible() -> None:
    assert choose([_candidate("int4/f32", 80, 500, passed=False), CandidateResult(Precision.parse("int8/f32"),
                                                                                  error="export failed")]) is None
    assert choose([_candidate("int8/f32", None, None)]) is None  # passed but never timed


def test_a_choice_round_trips_through_json_and_labels_itself() -> None:
    choice = PrecisionChoice(Precision.parse("int8/f32"), ChoiceSource.CALIBRATED,
                             (_candidate("float16/f32", 60.0, 500.0), _candidate("int8/f32", 93.8, 658.0),
                              _candidate("int4/f32", None, None, passed=False)),
                             {"cpu": "x"}, "2026-12-07T00:00:00+00:00", (0.4, 0.9), 61.0)
    again = PrecisionChoice.from_dict(choice.as_dict())
    assert again == choice
    assert choice.label == "int8/f32 (calibrated: 1 stream 93.8 tok/s, 16 streams 658 tok/s)"
    assert choice.with_source(ChoiceSource.CACHED).label.startswith("int8/f32 (cached calibration:")
    brief = choice.as_dict(detail=False)
    assert brief["candidates"][2]["gate"].startswith("failed") and "one_stream_runs" not in brief["candidates"][0]
    assert PrecisionChoice.override(Precision.parse("float16")).label == "float16 (dtype override)"


# -- CPU signature and the cache file --------------------------------------------------------
def test_the_cpu_signature_changes_with_flags_and_cores() -> None:
    here = current_signature()
    assert here.cores >= 1 and len(here.flags) == 16 and here.key == current_signature().key
    assert dataclasses.replace(here, cores=here.cores + 1).key != here.key
    assert dataclasses.replace(here, flags="0" * 16).key != here.key


def test_the_plan_is_part_of_the_cache_key() -> None:
    assert CalibrationPlan().key == CalibrationPlan().key
    assert CalibrationPlan(rounds=1).key != CalibrationPlan().key


def test_the_cache_keeps_one_choice_per_signature(tmp_path) -> None:
    cache = PrecisionCache(tmp_path, "model-abc")
    a = CpuSignature("cpu", "f" * 16, 2, "2026.4.1")
    b = dataclasses.replace(a, cores=4)
    assert cache.choice(a.key) is None
    first = PrecisionChoice(Precision.parse("int8/f32"), ChoiceSource.CALIBRATED)
    second = PrecisionChoice(Precision.parse("float16/f32"), ChoiceSource.CALIBRATED)
    cache.store_choice(a.key, first)
    cache.store_choice(b.key, second)
    assert cache.choice(a.key) == first and cache.choice(b.key) == second
    assert cache.keys() == sorted([a.key, b.key])
    cache.choices_path.write_text("{not json")
    assert cache.choice(a.key) is None  # a damaged file means "measure again", not a crash


def test_a_calibration_under_load_or_without_a_winner_says_so() -> None:
    from chatstream_lab.models.calibrate import _note

    winner = _candidate("int8/f32", 90, 600)
    assert _note(winner, 0.5, 2) == ""
    assert "measured under load 1.4 on 2 cores; --precision auto measures again" in _note(winner, 1.4, 2)
    assert _note(None, 0.1, 2).startswith("no candidate passed the gate: float32/f32")
