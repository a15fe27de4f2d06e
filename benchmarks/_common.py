"""Helpers shared by the benchmark scripts (machine facts printed next to every figure)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


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


class ServeProcess:
    """``chatstream-lab serve ARGS --port P`` in its own process (what a user runs), logging to ``log``."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "chatstream_lab.cli", "serve", *args, "--port", str(port)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(ROOT))

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self._log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the server did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


async def openai_stream(client: Any, url: str, body: dict[str, Any]) -> tuple[float, list[float], int]:
    """POST an OpenAI streaming request and read it to the end: (send time, arrival time of each
    chunk with text, completion tokens from the final usage chunk). Chat and completions alike."""
    import json

    t0 = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            obj = json.loads(line[5:])
            if any(c.get("text") or (c.get("delta") or {}).get("content") for c in obj.get("choices") or ()):
                arrivals.append(time.perf_counter())
            if obj.get("usage"):
                tokens = int(obj["usage"]["completion_tokens"])
    return t0, arrivals, tokens
