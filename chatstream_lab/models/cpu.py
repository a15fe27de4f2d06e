"""The CPU signature a precision choice is cached under: which precision is fastest depends on it.

Measured on this project's hosts: int8 weights beat fp16 on an AVX-512 Zen 4 without AMX and lost
to it on a host with AMX; bf16 compute exists only where the CPU has it. So a cached choice is
valid for the same instruction set (the CPU flags), the same number of usable cores, the same CPU
model and the same OpenVINO release; a cache directory shared by different machines keeps one
choice per signature.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuSignature:
    """What a calibration's result depends on; ``key`` names it in the cache."""

    cpu: str  # model name
    flags: str  # sha256 (16 hex) of the sorted CPU feature flags
    cores: int  # cores this process may run on
    runtime: str  # the OpenVINO release

    @property
    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}


def current_signature() -> CpuSignature:
    """This machine's signature (reads ``/proc/cpuinfo`` on Linux; platform strings elsewhere)."""
    name, flags = _cpuinfo()
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        runtime = metadata.version("openvino")
    except metadata.PackageNotFoundError:
        runtime = "none"
    return CpuSignature(cpu=name, flags=hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
                        cores=cores, runtime=runtime)


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    name, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return name or platform.processor() or platform.machine(), flags or {platform.machine()}
