"""Precision calibration on the real bundled model: the gate, the cache per CPU signature, overrides.

The candidate IRs and the torch fp32 gate reference are made by ``make test``'s setup step
(``make openvino``: ``python -m chatstream_lab.models.openvino --calibrate-bundled``), so these
tests read them from the cache; the calibrations below use a small plan (fp16 only, one round, a
few tokens) and a temporary choice file, never the shared one.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

import chatstream_lab as csl
from chatstream_lab.errors import ConfigError
from chatstream_lab.models import load_model
from chatstream_lab.models.calibrate import (
    CalibrationPlan,
    check_precision,
    load_reference,
    resolve_precision,
)
from chatstream_lab.models.cpu import current_signature
from chatstream_lab.models.loader import calibration_target
from chatstream_lab.models.openvino import export_ir, ir_dir_for
from chatstream_lab.models.precision import ChoiceSource, Compute, Precision, Verdict, Weights
from chatstream_lab.models.precision_cache import PrecisionCache

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(600)]

FP16_F32 = Precision(Weights.FLOAT16, Compute.F32)
SMALL_PLAN = CalibrationPlan(weights=(Weights.FLOAT16,), computes=(Compute.F32,), rounds=1, new_tokens=8, streams=2)


@pytest.fixture(scope="module")
def target():
    return calibration_target(progress=False)


@pytest.fixture(scope="module")
def fp16_ir(target) -> Path:
    return export_ir(target.hf_dir, Weights.FLOAT16, ir_dir_for(target.source_key, Weights.FLOAT16, target.cache_dir),
                     cache_dir=target.cache_dir, progress=False)


def perturbed_copy(ir: Path, dst: Path, relative_noise: float, seed: int = 0) -> Path:
    """``ir`` with seeded Gaussian noise (``relative_noise`` x each matrix's std) on every projection
    matrix: what a too-coarse quantization does, but known to change the greedy reply."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.Core().read_model(ir / "openvino_model.xml")
    rng = np.random.default_rng(seed)
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Constant" and op.get_friendly_name().endswith("_proj.weight_compressed"):
            w = op.get_data().astype(np.float32)
            noisy = ops.constant((w + rng.normal(0.0, relative_noise * float(w.std()), w.shape)).astype(np.float16))
            noisy.set_friendly_name(op.get_friendly_name())
            op.output(0).replace(noisy.output(0))
    dst.mkdir(parents=True)
    for f in ir.iterdir():  # tokenizer IRs, configs
        if f.is_file() and not f.name.startswith("openvino_model."):
            shutil.copy(f, dst / f.name)
    ov.save_model(model, dst / "openvino_model.xml", compress_to_fp16=False)
    return dst


def test_the_gate_rejects_a_perturbed_ir_that_changes_the_greedy_reply(target, fp16_ir, tmp_path) -> None:
    reference = load_reference(target)
    assert reference.prompts[0] == "What is the capital of France?"
    assert target.tokenizer.decode(reference.replies[0], skip_special_tokens=True) == "The capital of France is Paris."
    assert check_precision(fp16_ir, FP16_F32, reference).passed  # the same gate passes the real IR
    # 16% noise: the demo answer itself changes (measured: at token 3, where the reference was sure)
    broken = check_precision(perturbed_copy(fp16_ir, tmp_path / "p16", relative_noise=0.16), FP16_F32, reference)
    print(broken.summary)
    demo = broken.verdicts[0]
    assert demo.verdict is Verdict.DIFFERS and demo.parted_at is not None and demo.margin > 1.0
    assert not broken.passed and broken.summary.startswith("failed: 'What is the capital of France?'")
    # 12% noise: other replies part where the reference was sure; the gate looks past the demo answer
    subtle = check_precision(perturbed_copy(fp16_ir, tmp_path / "p12", relative_noise=0.12), FP16_F32, reference)
    print(subtle.summary)
    assert not subtle.passed and any(v.verdict is Verdict.DIFFERS for v in subtle.verdicts[1:])


def test_a_cached_choice_is_reused_and_a_new_cpu_signature_measures_again(target, tmp_path) -> None:
    choices = PrecisionCache(tmp_path, target.source_key)
    here = current_signature()
    first = resolve_precision(target, plan=SMALL_PLAN, signature=here, cache=choices, progress=False)
    assert first.source is ChoiceSource.CALIBRATED and first.precision == FP16_F32
    chosen = first.chosen
    assert chosen is not None and chosen.gate is not None and chosen.gate.passed
    assert chosen.one_stream_tok_s > 0 and chosen.batch_tok_s > 0 and len(chosen.one_stream_runs) == 1
    assert first.signature["key"] == here.key and len(first.loadavg) == 2 and first.seconds > 0

    again = resolve_precision(target, plan=SMALL_PLAN, signature=here, cache=choices, progress=False)
    assert again.source is ChoiceSource.CACHED
    assert (again.precision, again.measured_at, again.candidates) == (first.precision, first.measured_at,
                                                                      first.candidates)
    assert len(choices.keys()) == 1

    for moved in (dataclasses.replace(here, cores=here.cores + 2), dataclasses.replace(here, flags="0" * 16)):
        other = resolve_precision(target, plan=SMALL_PLAN, signature=moved, cache=choices, progress=False)
        assert other.source is ChoiceSource.CALIBRATED and other.signature["key"] == moved.key
    assert len(choices.keys()) == 3  # one choice per signature, the first one kept
    assert choices.choice(f"{here.key}-{SMALL_PLAN.key}").measured_at == first.measured_at

    forced = resolve_precision(target, plan=SMALL_PLAN, signature=here, cache=choices, recalibrate=True,
                               progress=False)
    assert forced.source is ChoiceSource.CALIBRATED


def test_load_model_serves_the_cached_calibration(openvino_model, target) -> None:
    choice = openvino_model.precision
    assert choice is not None and choice.source in (ChoiceSource.CACHED, ChoiceSource.CALIBRATED)
    stored = target.cache.choice(f"{current_signature().key}-{CalibrationPlan().key}")
    assert stored is not None and stored.precision == choice.precision  # what setup measured here
    assert openvino_model.dtype == str(choice.precision)
    assert openvino_model.model.ir_dir.name.endswith(choice.precision.weights.value)
    assert openvino_model.model.compile_properties()["INFERENCE_PRECISION_HINT"] == choice.precision.compute.value
    assert choice.chosen is not None and choice.chosen.eligible  # passed the gate and was timed
    for candidate in choice.candidates:  # a failed gate is never chosen, however fast
        if candidate.gate is not None and not candidate.gate.passed:
            assert candidate.precision != choice.precision
    assert load_model(progress=False).precision.source is ChoiceSource.CACHED
    assert "precision=" in repr(openvino_model) and "candidates" in openvino_model._repr_html_()


def test_an_override_wins_over_the_calibration(openvino_model) -> None:
    chosen = openvino_model.precision.precision
    other = FP16_F32 if chosen != FP16_F32 else Precision(Weights.INT8, Compute.F32)
    lm = load_model(backend="openvino", dtype=str(other), progress=False)
    assert lm.precision.source is ChoiceSource.OVERRIDE and lm.dtype == str(other)
    assert lm.model.precision == other and lm.model.compile_properties()["INFERENCE_PRECISION_HINT"] == "f32"
    assert csl.stream(lm, "What is the capital of France?", temperature=0).text() == "The capital of France is Paris."
    runtime_default = load_model(backend="openvino", dtype="float16", progress=False)
    assert "INFERENCE_PRECISION_HINT" not in runtime_default.model.compile_properties()
    with pytest.raises(ConfigError) as info:
        load_model(backend="openvino", dtype="int8", precision="auto", progress=False)
    assert info.value.name == "precision"
    with pytest.raises(ConfigError):
        load_model(backend="torch", precision="auto", progress=False)
    with pytest.raises(ConfigError):
        load_model(backend="openvino", precision="fastest", progress=False)
