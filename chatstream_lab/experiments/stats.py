"""Statistics of a grid, as pure functions on ``scipy.stats`` (an optional import of the
``notebook`` extra).

* a pass rate with its Wilson score interval (``binomtest(...).proportion_ci(method="wilson")``);
* a mean with a bootstrap interval (``scipy.stats.bootstrap``, percentile method);
* two variants over the same inputs: exact McNemar for pass/fail (``binomtest`` on the discordant
  pairs), a paired permutation test (``permutation_test``, ``permutation_type="samples"``, exact
  when the inputs are few) and a paired bootstrap interval for scores.

Every resampling uses a fixed seed, so the same data give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import MissingExtra

CONFIDENCE = 0.95
RESAMPLES = 9999
RANDOM_SEED = 0


def _scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError as exc:
        raise MissingExtra("grid statistics need scipy: pip install 'chatstream_lab[notebook]' "
                           "(or pip install scipy)", extra="notebook") from exc
    return stats


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with its confidence interval."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def __str__(self) -> str:
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"


def wilson_interval(passes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """The pass rate ``passes / n`` with its Wilson score interval (NaN when ``n`` is 0)."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    ci = _scipy_stats().binomtest(int(passes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(passes / n, float(ci.low), float(ci.high), n, confidence)


def bootstrap_mean(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` with a percentile bootstrap interval (NaNs dropped)."""
    import numpy as np

    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(data.mean())
    if data.size == 1 or np.all(data == data[0]):
        return Interval(mean, mean, mean, int(data.size), confidence)
    res = _scipy_stats().bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                                   method="percentile", random_state=np.random.default_rng(RANDOM_SEED))
    return Interval(mean, float(res.confidence_interval.low), float(res.confidence_interval.high),
                    int(data.size), confidence)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: ``a_only`` inputs where only A
    passed, ``b_only`` where only B did (a binomial test of ``a_only`` in ``a_only + b_only`` at 1/2)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    return float(_scipy_stats().binomtest(int(a_only), int(n), 0.5).pvalue)


def paired_permutation_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the mean paired difference ``a - b`` under random sign flips
    (``scipy.stats.permutation_test``; exact for up to 13 pairs)."""
    import numpy as np

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0:
        return math.nan
    if np.all(x - y == 0):
        return 1.0

    def statistic(u: Any, v: Any, axis: int) -> Any:
        return np.mean(u - v, axis=axis)

    res = _scipy_stats().permutation_test((x, y), statistic, permutation_type="samples", vectorized=True,
                                          n_resamples=RESAMPLES, alternative="two-sided",
                                          random_state=np.random.default_rng(RANDOM_SEED))
    return float(min(1.0, res.pvalue))


class PairedTest(str, Enum):
    """Which paired test a comparison used."""

    MCNEMAR = "exact McNemar"
    PERMUTATION = "paired permutation"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Comparison:
    """Variant ``a`` against variant ``b`` on ``metric``, paired over the same inputs.

    ``effect`` is the mean per-input difference ``a - b`` (for pass/fail: the difference in pass
    rates), with its paired bootstrap interval ``effect_low``..``effect_high``; ``wins`` / ``losses``
    / ``ties`` count inputs where ``a`` did better / worse / the same (seeds averaged per input).
    """

    a: str
    b: str
    metric: str
    test: PairedTest
    n: int
    wins: int
    losses: int
    ties: int
    mean_a: float
    mean_b: float
    effect: float
    effect_low: float
    effect_high: float
    p_value: float
    unit: str = ""
    higher_is_better: bool = True

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    @property
    def better(self) -> str | None:
        """The variant that did better (None: no difference in the means)."""
        if self.effect == 0 or math.isnan(self.effect):
            return None
        return self.a if (self.effect > 0) == self.higher_is_better else self.b

    def sentence(self) -> str:
        """``chatml beats own on 31/40 inputs, +0.42 nats mean reference_logprob, p = 0.004``."""
        what = f"{self.metric}" + (f" ({self.unit})" if self.unit else "")
        if self.better is None:
            return f"{self.a} and {self.b} do the same on {what} over {self.n} inputs (p = {_p(self.p_value)})"
        if self.better == self.a:
            head = f"{self.a} beats {self.b} on {self.wins}/{self.n} inputs"
        else:
            head = f"{self.a} is worse than {self.b} on {self.losses}/{self.n} inputs"
        mean = f"{self.mean_a:.2f} vs {self.mean_b:.2f} mean {what}"
        return (f"{head}: {mean}, {self.effect:+.2f} [{self.effect_low:+.2f}, {self.effect_high:+.2f}], "
                f"{self.test} p = {_p(self.p_value)}")

    def __repr__(self) -> str:
        return f"<Comparison {self.sentence()}>"

    def _repr_html_(self) -> str:
        from html import escape

        mark = " <b>(significant at 0.05)</b>" if self.significant() else ""
        return f"<div>{escape(self.sentence())}{mark}</div>"


def _p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def compare_paired(a_name: str, b_name: str, metric: str, a: Sequence[Sequence[float]],
                   b: Sequence[Sequence[float]], *, binary: bool, unit: str = "",
                   higher_is_better: bool = True) -> Comparison:
    """Compare per-input values: ``a[i]`` and ``b[i]`` hold input ``i``'s values, one per seed.

    With one seed and a pass/fail metric: exact McNemar; otherwise a paired permutation test on
    the per-input means. Inputs missing a value on either side are left out.
    """
    import numpy as np

    pairs = [(float(np.mean(x)), float(np.mean(y))) for x, y in zip(a, b)
             if len(x) and len(y) and not (np.isnan(x).any() or np.isnan(y).any())]
    n = len(pairs)
    xs = np.asarray([p[0] for p in pairs], dtype=float)
    ys = np.asarray([p[1] for p in pairs], dtype=float)
    diffs = xs - ys
    sign = 1.0 if higher_is_better else -1.0
    wins = int(np.sum(sign * diffs > 0))
    losses = int(np.sum(sign * diffs < 0))
    one_seed = all(len(x) == 1 for x in a) and all(len(y) == 1 for y in b)
    if binary and one_seed:
        test = PairedTest.MCNEMAR
        p_value = mcnemar_exact(int(np.sum(xs > ys)), int(np.sum(xs < ys)))
    else:
        test = PairedTest.PERMUTATION
        p_value = paired_permutation_p(xs.tolist(), ys.tolist()) if n else math.nan
    effect = bootstrap_mean(diffs.tolist()) if n else Interval(math.nan, math.nan, math.nan, 0)
    return Comparison(a_name, b_name, metric, test, n, wins, losses, n - wins - losses,
                      float(xs.mean()) if n else math.nan, float(ys.mean()) if n else math.nan,
                      effect.estimate, effect.low, effect.high, p_value, unit, higher_is_better)


def within_input_sd(values: Sequence[Sequence[float]]) -> float:
    """The mean over inputs of the standard deviation across seeds (0 for one seed)."""
    import numpy as np

    sds = [float(np.std(v, ddof=1)) for v in values if len(v) > 1 and not np.isnan(v).any()]
    return float(np.mean(sds)) if sds else 0.0


__all__ = ["Comparison", "Interval", "PairedTest", "bootstrap_mean", "compare_paired", "mcnemar_exact",
           "paired_permutation_p", "wilson_interval", "within_input_sd"]
