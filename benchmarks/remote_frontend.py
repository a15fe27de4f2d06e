"""Is our front-end the bottleneck in front of a real engine? llama-server directly vs through
``chatstream-lab serve --upstream URL --tokenizer bundled``, in ONE run, on the same llama-server.

Systems (same llama-server process, same rendered prompts, greedy, streaming, loopback):

* ``direct``  ``POST {llama}/v1/completions`` with the prompt's token ids (rendered here with the
              bundled tokenizer's chat template, exactly what our front-end sends);
* ``ours``    ``POST {ours}/v1/chat/completions`` with the messages, our front-end (its own
              process, the CLI) rendering them and streaming from the same llama-server.

At each concurrency C (1 and 16), C httpx async streaming clients each send one request at once
(prompt ``i % 16``), systems interleaved round by round so machine noise hits them alike.
Reported: aggregate tokens/s (completion tokens from the streams' usage / wall time from the first
send to the last byte), TTFT p50 (send -> first text chunk), the ratios ours/direct, the added
TTFT (median of ours minus median of direct at C=1), and the load average. Targets (the issue):
>= 0.9x at both levels, added TTFT <= 10 ms.

Usage::

    python benchmarks/remote_frontend.py [--max-new-tokens 64] [--rounds 3] [--parallel 16]

Writes ``benchmarks/results/remote_frontend.json``. No timing assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from _common import ServeProcess, loadavg, median, openai_stream, percentile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "tests"))  # _engines: LlamaServer (built and cached on first use)

from _engines import LlamaServer, free_port  # noqa: E402
from throughput import PROMPTS  # noqa: E402


def render_prompts(n: int) -> list[list[int]]:
    """The token ids our front-end will send for each prompt (same template, same tokenizer)."""
    from chatstream_lab.models import load_model
    from chatstream_lab.prompts import encode_messages, resolve_template

    lm = load_model(progress=False)
    template = resolve_template(None, lm.tokenizer)
    return [list(encode_messages(template, lm.tokenizer, PROMPTS[i % len(PROMPTS)]).ids) for i in range(n)]


def frontend(upstream: str, limit: int, max_new_tokens: int, log: Path) -> ServeProcess:
    """``chatstream-lab serve --upstream`` in its own process (what a user runs)."""
    return ServeProcess(["--upstream", upstream, "--tokenizer", "bundled", "--num-of-concurrent-executions",
                         str(limit), "--max-queue-size", str(limit), "--max-new-tokens", str(max_new_tokens)],
                        free_port(), log)


async def one_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Send, stream to the end; TTFT = send -> first chunk with text; tokens from the usage."""
    t0, arrivals, tokens = await openai_stream(client, url, body)
    return {"ttft_s": arrivals[0] - t0 if arrivals else None, "tokens": tokens, "end": time.perf_counter()}


def request(system: str, base: str, i: int, ids: list[list[int]], max_new_tokens: int) -> tuple[str, dict[str, Any]]:
    common = {"max_tokens": max_new_tokens, "temperature": 0, "stream": True,
              "stream_options": {"include_usage": True}}
    if system == "direct":
        return base + "/v1/completions", {**common, "prompt": ids[i]}
    return base + "/v1/chat/completions", {**common, "messages": [{"role": "user",
                                                                   "content": PROMPTS[i % len(PROMPTS)]}]}


async def level(system: str, base: str, c: int, ids: list[list[int]], max_new_tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, *request(system, base, i, ids, max_new_tokens))
                                         for i in range(c)))
    wall = max(r["end"] for r in results) - t0
    tokens = sum(r["tokens"] for r in results)
    ttfts = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "ttfts": ttfts}


def run(args: argparse.Namespace) -> dict[str, Any]:
    ids = render_prompts(max(args.concurrency))
    RESULTS.mkdir(exist_ok=True)
    out: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "parallel": args.parallel,
                           "cpus": os.cpu_count(), "loadavg_before": loadavg(), "levels": {}}
    with LlamaServer(parallel=args.parallel, ctx_per_slot=512, threads=args.threads) as llama:
        front = frontend(llama.url, max(args.concurrency), args.max_new_tokens, RESULTS / "remote_frontend.log")
        try:
            front.wait_ready()
            bases = {"direct": llama.url, "ours": front.url}
            for system in bases:  # warm-up: connections, prompt cache, our first request
                asyncio.run(level(system, bases[system], 2, ids, 8))
            for c in args.concurrency:
                runs: dict[str, list[dict[str, Any]]] = {s: [] for s in bases}
                for _ in range(args.rounds):
                    for system, base in bases.items():
                        runs[system].append(asyncio.run(level(system, base, c, ids, args.max_new_tokens)))
                out["levels"][str(c)] = summarize(runs)
        finally:
            front.stop()
    out["loadavg_after"] = loadavg()
    return out


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per system: median aggregate tok/s over rounds, pooled TTFT; then ours/direct."""
    summary: dict[str, Any] = {}
    for system, rs in runs.items():
        ttfts = [t for r in rs for t in r["ttfts"]]
        summary[system] = {"tok_s": median([r["tok_s"] for r in rs]), "tok_s_rounds": [r["tok_s"] for r in rs],
                           "tokens": [r["tokens"] for r in rs], "ttft_p50_ms": 1000 * median(ttfts),
                           "ttft_p95_ms": 1000 * percentile(ttfts, 95)}
    summary["ratio_tok_s"] = summary["ours"]["tok_s"] / summary["direct"]["tok_s"]
    summary["added_ttft_ms"] = summary["ours"]["ttft_p50_ms"] - summary["direct"]["ttft_p50_ms"]
    return summary


def report(out: dict[str, Any]) -> None:
    print(f"{'C':>3} {'direct tok/s':>13} {'ours tok/s':>11} {'ratio':>6} {'TTFT direct':>12} "
          f"{'TTFT ours':>10} {'added':>8}")
    for c, lv in out["levels"].items():
        print(f"{c:>3} {lv['direct']['tok_s']:>13.1f} {lv['ours']['tok_s']:>11.1f} {lv['ratio_tok_s']:>6.2f} "
              f"{lv['direct']['ttft_p50_ms']:>10.1f}ms {lv['ours']['ttft_p50_ms']:>8.1f}ms "
              f"{lv['added_ttft_ms']:>6.1f}ms")
    single = out["levels"].get("1")
    if single:
        print(f"added TTFT (median, C=1): {single['added_ttft_ms']:.1f} ms (target <= 10 ms)")
    print("ratios ours/direct: " + ", ".join(f"C={c}: {lv['ratio_tok_s']:.2f}x" for c, lv in out["levels"].items())
          + " (target >= 0.9x)")
    print(f"load average before {out['loadavg_before']}, after {out['loadavg_after']} on {out['cpus']} CPUs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,16", help="comma-separated client counts (default 1,16)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=16, help="llama-server --parallel (default 16)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama-server -t")
    args = ap.parse_args()
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    out = run(args)
    report(out)
    path = RESULTS / "remote_frontend.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
