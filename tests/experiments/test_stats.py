"""The statistics against known cases (textbook values computed by hand, not by the code under test)."""

from __future__ import annotations

import math

import pytest

from chatstream_lab.experiments.stats import (
    PairedTest,
    bootstrap_mean,
    compare_paired,
    mcnemar_exact,
    paired_permutation_p,
    wilson_interval,
    within_input_sd,
)


def test_wilson_interval_known_values():
    # Wilson score interval, 95%: 5/10 -> [0.2366, 0.7634]; 0/10 -> [0, 0.2775]; 81/263 -> [0.2553, 0.3662]
    iv = wilson_interval(5, 10)
    assert iv.estimate == 0.5
    assert iv.low == pytest.approx(0.2366, abs=1e-4) and iv.high == pytest.approx(0.7634, abs=1e-4)
    iv = wilson_interval(0, 10)
    assert iv.low == pytest.approx(0.0, abs=1e-12) and iv.high == pytest.approx(0.2775, abs=1e-4)
    iv = wilson_interval(81, 263)
    assert iv.low == pytest.approx(0.2553, abs=1e-4) and iv.high == pytest.approx(0.3662, abs=1e-4)
    assert math.isnan(wilson_interval(0, 0).estimate)


def test_exact_mcnemar_on_a_known_table():
    # discordant pairs 10 vs 2: two-sided exact p = 2 * P(X <= 2 | n=12, 1/2) = 2 * 79/4096 = 0.03857
    assert mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096, rel=1e-9)
    assert mcnemar_exact(2, 10) == pytest.approx(2 * 79 / 4096, rel=1e-9)
    # 6 vs 0: 2 / 2**6; no discordant pair: nothing to test
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_permutation_test_exact_answer():
    # five pairs, every difference positive: of the 2**5 sign flips only "all +" and "all -" are as
    # extreme, so the two-sided p-value is exactly 2/32
    a = [3.0, 5.0, 4.0, 6.0, 5.5]
    b = [1.0, 2.0, 2.5, 3.0, 4.0]
    assert paired_permutation_p(a, b) == pytest.approx(2 / 32)
    # differences +1, -1, +2, -2: the mean difference is 0, every flip is as extreme
    assert paired_permutation_p([1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 2.0]) == pytest.approx(1.0)
    assert paired_permutation_p([1.0, 2.0], [1.0, 2.0]) == 1.0


def test_bootstrap_mean_covers_the_mean_and_is_reproducible():
    values = [float(x) for x in range(20)]
    iv = bootstrap_mean(values)
    assert iv.estimate == pytest.approx(9.5) and iv.low < 9.5 < iv.high
    assert 6.0 < iv.low < 9.0 and 10.0 < iv.high < 13.0  # about mean ± 1.96 * sd/sqrt(n) = 9.5 ± 2.5
    assert bootstrap_mean(values) == iv  # a fixed seed: the same data give the same interval
    same = bootstrap_mean([2.0, 2.0, 2.0])
    assert (same.low, same.high) == (2.0, 2.0)


def test_compare_paired_chooses_the_test_and_counts_wins():
    # one seed, pass/fail: McNemar on the discordant inputs (a passes 6 that b fails, b none)
    a = [[1.0]] * 8 + [[0.0]] * 2
    b = [[0.0]] * 6 + [[1.0]] * 2 + [[0.0]] * 2
    c = compare_paired("a", "b", "check", a, b, binary=True)
    assert c.test is PairedTest.MCNEMAR and c.p_value == pytest.approx(2 / 64)
    assert (c.wins, c.losses, c.ties, c.n) == (6, 0, 4, 10)
    assert c.effect == pytest.approx(0.6) and c.better == "a" and c.significant()
    assert "a beats b on 6/10 inputs" in c.sentence() and "McNemar" in c.sentence()
    # several seeds: per-input means, permutation test
    c = compare_paired("a", "b", "score", [[1.0, 2.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 1.0]], binary=False)
    assert c.test is PairedTest.PERMUTATION and c.effect == pytest.approx(1.75)
    # lower is worse: the sentence says which is worse
    c = compare_paired("bad", "good", "check", b, a, binary=True)
    assert c.better == "good" and "bad is worse than good on 6/10 inputs" in c.sentence()


def test_within_input_sd():
    assert within_input_sd([[1.0], [2.0]]) == 0.0
    assert within_input_sd([[1.0, 3.0], [2.0, 2.0]]) == pytest.approx((math.sqrt(2) + 0.0) / 2)
