"""The OpenVINO backend itself: agreement with torch, refusals, failure, and how it is chosen."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

import chatstream_lab as csl
from chatstream_lab.admission import AdmissionGate
from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.engine.factory import build_generator
from chatstream_lab.engine.openvino import OpenVINOEngine
from chatstream_lab.errors import ConfigError, EngineUnavailable, InvalidParameter
from chatstream_lab.models import Backend, load_model
from chatstream_lab.prompts import encode_messages, resolve_template
from chatstream_lab.types import FinishReason

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(300)]

PROMPTS = ["What is the capital of France?", "日本の首都はどこですか？日本語で答えてください。",
           "Write a haiku about the sea."]
GREEDY = SamplingParams(temperature=0, max_new_tokens=32)


def _ids(model, text: str) -> list[int]:
    return list(encode_messages(resolve_template(None, model.tokenizer), model.tokenizer, text).ids)


def _greedy_ids(model, prompts) -> list[list[int]]:
    with build_generator(model, AdmissionGate(Limits(4, 4))) as gen:
        streams = [gen.submit(_ids(model, p), GREEDY) for p in prompts]
        return [[t for e in s if hasattr(e, "token_ids") for t in e.token_ids] for s in streams]


def _agreement(a: list[int], b: list[int]) -> float:
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(len(a), len(b), 1)


def test_fp32_weights_agree_with_torch_token_for_token(real_model, openvino_fp32_model) -> None:
    assert _greedy_ids(openvino_fp32_model, PROMPTS) == _greedy_ids(real_model, PROMPTS)


def test_the_calibrated_precision_answers_like_torch(real_model, openvino_model) -> None:
    ours, ref = _greedy_ids(openvino_model, PROMPTS), _greedy_ids(real_model, PROMPTS)
    assert ours[0] == ref[0]  # "The capital of France is Paris."
    # the rest may part where the reference's two best tokens are close (the gate allows that); report it
    agreement = [_agreement(a, b) for a, b in zip(ours, ref)]
    print(f"{openvino_model.dtype} prefix agreement with torch:", agreement)
    assert min(agreement) >= 0.5


def test_stream_runs_on_a_private_engine_and_leaves_no_thread(openvino_model) -> None:
    before = {t.name for t in threading.enumerate()}
    assert csl.stream(openvino_model, PROMPTS[0], temperature=0).text() == "The capital of France is Paris."
    assert not any(t.name == "chatstream-openvino" for t in threading.enumerate()) or \
        "chatstream-openvino" in before


def test_a_parameter_openvino_cannot_honour_is_refused_by_name(openvino_model) -> None:
    @dataclass(frozen=True)
    class WithTypicalP(SamplingParams):
        typical_p: float = 1.0

    engine = OpenVINOEngine(openvino_model)
    with pytest.raises(InvalidParameter) as info:
        engine.submit(_ids(openvino_model, "hi"), WithTypicalP(typical_p=0.5))
    assert info.value.name == "typical_p" and "backend='torch'" in str(info.value)
    assert engine.gate.snapshot().waiting == 0  # refused before it was queued
    engine.close()


def test_a_crashing_engine_thread_ends_every_request_and_later_ones_fail_fast(openvino_model) -> None:
    engine = OpenVINOEngine(openvino_model, num_of_concurrent_executions=1, max_queue_size=2)

    all_in = threading.Event()

    def broken_collect() -> None:  # after the first step, once every request is in
        all_in.wait(10)
        raise MemoryError("injected")

    engine._collect = broken_collect  # type: ignore[method-assign]
    try:
        streams = [engine.submit(_ids(openvino_model, "hi"), GREEDY) for _ in range(3)]
        all_in.set()
        finals = [s.result(30) for s in streams]
        assert [f.finish_reason for f in finals] == [FinishReason.ERROR] * 3
        assert engine.gate.snapshot().running == 0 and engine.gate.snapshot().waiting == 0
        assert not engine.health().ok
        with pytest.raises(EngineUnavailable):
            engine.submit(_ids(openvino_model, "hi"), GREEDY)
    finally:
        engine.close()


def test_backend_choice(openvino_model) -> None:
    auto = load_model(progress=False)  # the IR is cached and the runtime installed: the fast one
    assert auto.backend is Backend.OPENVINO and auto.dtype == openvino_model.dtype  # the calibrated precision
    assert "openvino" in auto._repr_html_() and "backend='openvino'" in repr(auto)
    assert auto.default_params.temperature == 0  # the bundled model is greedy unless told otherwise
    assert csl.Lab(auto).config.params.temperature == 0
    assert csl.Lab(auto, temperature=0.5).config.params.temperature == 0.5
    assert load_model(dtype="bfloat16", progress=False).backend is Backend.TORCH  # only torch has it
    with pytest.raises(ConfigError) as info:
        load_model(backend="openvino", dtype="bfloat16", progress=False)
    assert info.value.name == "dtype"
    with pytest.raises(ConfigError) as info:
        load_model(backend="openvino", device="cuda", progress=False)
    assert info.value.name == "device"
    with pytest.raises(ConfigError) as info:
        load_model(backend="tensorrt", progress=False)
    assert info.value.name == "backend"


def test_logprobs_and_scoring_are_refused_with_the_fix(openvino_model) -> None:
    engine = OpenVINOEngine(openvino_model)
    with pytest.raises(InvalidParameter) as info:
        engine.submit(_ids(openvino_model, "hi"), GREEDY.replace(logprobs=2))
    assert info.value.name == "logprobs" and "backend='torch'" in str(info.value)
    with pytest.raises(InvalidParameter, match="backend='torch'"):
        engine.score([1, 2, 3], 1)
    with pytest.raises(InvalidParameter, match="backend='torch'"):
        csl.score(openvino_model, "hi", "Hello")
    engine.close()
    lab = csl.Lab(openvino_model)  # widgets do not ask OpenVINO for logprobs
    assert lab._widget_config(lab.config).params.logprobs is None
    lab.close()
