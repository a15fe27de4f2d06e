"""Helpers shared by the benchmark scripts (machine facts printed next to every figure)."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no data."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prompt_ids(lm, messages) -> list[int]:
    """The prompt ids of ``messages`` (a string: one user message) with the model's own template."""
    from chatstream_lab.prompts import encode_messages, resolve_template

    return list(encode_messages(resolve_template(None, lm.tokenizer), lm.tokenizer, messages).ids)
