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
