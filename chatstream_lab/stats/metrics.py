"""Pure functions behind the stats snapshot: percentiles and token rates.

No clocks, no locks, no state: the recorder hands in plain numbers, so every formula here is
tested with hand-built lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation; None for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q!r}")
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    frac = rank - lo
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * frac)


def rate(count: float, seconds: float) -> float:
    """``count / seconds``, 0.0 when no time passed (never a ZeroDivisionError)."""
    return count / seconds if seconds > 0 else 0.0


def window_rate(spans: Iterable[tuple[float, float, int]], now: float, window_s: float) -> float:
    """Aggregate tokens per second over ``[now - window_s, now]``.

    Each span ``(start, end, tokens)`` is one finished request whose ``tokens`` were produced
    evenly between ``start`` (first token) and ``end`` (finish); only the part of it that falls
    inside the window counts. Spreading tokens like this keeps the rate from jumping when a long
    request finishes. A span with ``end <= start`` counts entirely at ``end``.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s!r}")
    lo = now - window_s
    total = 0.0
    for start, end, tokens in spans:
        if tokens <= 0 or end < lo or start > now:
            continue
        if end <= start:
            total += tokens
            continue
        overlap = min(end, now) - max(start, lo)
        if overlap > 0:
            total += tokens * overlap / (end - start)
    return total / window_s
