"""Samplers, tested on fixed logits and statistically."""

from __future__ import annotations

import torch

from chatstream_lab.config import SamplingParams
from chatstream_lab.engine.batching.sampling import (
    apply_repetition_penalty,
    filter_min_p,
    filter_top_k,
    filter_top_p,
    make_generator,
    sample_token,
)

NO_SEEN = torch.tensor([], dtype=torch.long)


def _counts(logits: torch.Tensor, params: SamplingParams, n: int = 4000) -> torch.Tensor:
    gen = make_generator(1234)
    counts = torch.zeros(logits.shape[0])
    for _ in range(n):
        counts[sample_token(logits, params, NO_SEEN, gen)] += 1
    return counts / n


def test_temperature_zero_is_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample_token(logits, SamplingParams(temperature=0), NO_SEEN, None) == 1


def test_top_p_keeps_the_nucleus_with_relative_probabilities() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    freq = _counts(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert freq[2] == 0 and freq[3] == 0  # outside the nucleus (0.5 + 0.3 reaches 0.8)
    assert abs(freq[0] / (freq[0] + freq[1]) - 0.5 / 0.8) < 0.04  # relative odds kept


def test_top_k_and_top_p_apply_together() -> None:
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log()
    # top_k keeps 3 (renormalised 0.44/0.33/0.22); top_p=0.7 then keeps the first two.
    kept = filter_top_p(filter_top_k(logits, 3), 0.7)
    assert torch.isfinite(kept).tolist() == [True, True, False, False]


def test_top_p_always_keeps_the_most_likely_token() -> None:
    logits = torch.tensor([5.0, 0.0, 0.0])
    assert torch.isfinite(filter_top_p(logits, 0.01)).tolist() == [True, False, False]


def test_min_p_drops_unlikely_tokens() -> None:
    logits = torch.tensor([0.6, 0.3, 0.1]).log()
    assert torch.isfinite(filter_min_p(logits, 0.4)).tolist() == [True, True, False]


def test_repetition_penalty_uses_ctrl_semantics() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]  # positive divided, negative multiplied


def test_repetition_penalty_makes_repeats_less_likely() -> None:
    logits = torch.tensor([1.0, 1.0, 1.0, 1.0])
    seen = torch.tensor([0, 0, 1])
    gen = make_generator(7)
    params = SamplingParams(temperature=1.0, repetition_penalty=1.8)
    picks = [sample_token(logits, params, seen, gen) for _ in range(3000)]
    repeat_rate = sum(p in (0, 1) for p in picks) / len(picks)
    assert repeat_rate < 0.40  # 0.5 without the penalty


def test_seed_reproduces_samples() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, seed=42)
    a = [sample_token(logits, params, NO_SEEN, g) for g in [make_generator(42)] for _ in range(20)]
    b = [sample_token(logits, params, NO_SEEN, g) for g in [make_generator(42)] for _ in range(20)]
    assert a == b
    assert len(set(a)) > 3


def test_temperature_sharpens_distribution() -> None:
    logits = torch.tensor([1.0, 0.0])
    cold = _counts(logits, SamplingParams(temperature=0.3), 2000)[0]
    hot = _counts(logits, SamplingParams(temperature=3.0), 2000)[0]
    assert cold > 0.9 > hot
