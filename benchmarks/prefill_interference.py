"""Prefill interference: how much do running streams stall while new long prompts are prefilled?

The engine prefills a new prompt in chunks of ``Engine(prefill_chunk=...)`` tokens, one chunk per
step between decode steps, so the streams already running keep ticking. This script measures the
inter-token gaps of ``--running`` streams (short prompts, greedy, ``--max-new-tokens``) in two runs
on the same engine settings, alternated:

* ``quiet``     nothing else arrives;
* ``arrivals``  after every running stream has produced ``--warm-tokens`` tokens,
                ``--arrivals`` long prompts (~``--long-tokens`` tokens each) are submitted
                ``--spacing-s`` apart.

For each prefill chunk size (``--chunks``; a chunk larger than the prompt = no chunking) it
reports, for the running streams, the inter-token p50/p95/max in the *arrival window* (from the
first long submission until the last long prompt has its first token) against the same token
range of the quiet run, the p95 over the whole rest of the stream (after the long rows joined:
their padded cache columns make every later step attend over more positions), and the long
prompts' TTFT. Runs in-process on the engine thread (no HTTP): this is about the scheduler.
No timing assertion; prints a table with the load average and writes
``benchmarks/results/prefill_interference.json``.

Usage: ``python benchmarks/prefill_interference.py [--chunks 64,256,4096] [--running 4]
[--arrivals 2] [--long-tokens 1000] [--max-new-tokens 96] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from _common import loadavg, machine, median, percentile, prompt_ids

import chatstream_lab as csl
from chatstream_lab.config import SamplingParams
from chatstream_lab.engine import Engine
from chatstream_lab.types import Delta

HERE = Path(__file__).resolve().parent
RUNNING_PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Write a long story about a dragon who is afraid of the dark.",
    "Write a long story about a robot learning to paint.",
    "Write a long story about two friends lost in a forest.",
    "Write a long letter from a sailor to his family back home.",
    "Write a long description of a busy market on a Saturday morning.",
    "Write a detailed travel guide for a week in Kyoto.",
    "Write a detailed essay about the history of the printing press.",
]
FILLER = ("The committee met on Tuesday to review the quarterly figures for the northern region, "
          "where sales of garden tools rose while demand for winter clothing fell sharply. ")


def long_prompt(lm: Any, n_tokens: int, i: int) -> list[int]:
    """A user message of about ``n_tokens`` tokens (distinct per i), chat-templated."""
    unit = len(lm.tokenizer.encode(FILLER, add_special_tokens=False))
    body = f"Report {i}. " + FILLER * max(1, n_tokens // unit)
    ids = prompt_ids(lm, body + "\nSummarize the report above in one sentence.")
    return ids


class Watched:
    """A submitted request whose token arrival times a consumer thread records."""

    def __init__(self, engine: Engine, ids: list[int], max_new: int) -> None:
        self.t_submit = time.perf_counter()
        self.stream = engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=max_new))
        self.times: list[float] = []
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def _consume(self) -> None:
        for ev in self.stream:
            if isinstance(ev, Delta) and ev.token_ids:
                self.times.append(time.perf_counter())

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


def one_run(engine: Engine, lm: Any, args: argparse.Namespace, running_ids: list[list[int]],
            long_ids: list[list[int]] | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    runners = [Watched(engine, ids, args.max_new_tokens) for ids in running_ids]
    deadline = time.monotonic() + args.timeout
    while min(len(r.times) for r in runners) < args.warm_tokens and time.monotonic() < deadline:
        if all(r.stream.done for r in runners):
            break
        time.sleep(0.005)
    t_arrive = time.perf_counter()
    longs: list[Watched] = []
    if long_ids:
        for k, ids in enumerate(long_ids):
            if k:
                time.sleep(args.spacing_s)
            longs.append(Watched(engine, ids, args.long_new_tokens))
    for w in runners + longs:
        w.join(max(1.0, deadline - time.monotonic()))
    firsts = [w.times[0] for w in longs if w.times]
    t_window_end = max(firsts) if firsts else None
    return {"t0": t0, "t_arrive": t_arrive, "t_window_end": t_window_end,
            "runner_times": [r.times for r in runners],
            "long_ttft_s": [round(w.times[0] - w.t_submit, 3) if w.times else None for w in longs],
            "runner_tokens": [len(r.times) for r in runners]}


def gaps_between(times_per_stream: list[list[float]], lo_idx: int, hi_idx: int | None) -> list[float]:
    """Gaps ending at token index in [lo_idx, hi_idx) of every stream."""
    out = []
    for ts in times_per_stream:
        end = len(ts) if hi_idx is None else min(hi_idx, len(ts))
        out.extend(ts[i] - ts[i - 1] for i in range(max(1, lo_idx), end))
    return out


def analyse(quiet: dict[str, Any], busy: dict[str, Any]) -> dict[str, Any]:
    # token index range of the arrival window, per running stream of the busy run
    window: list[float] = []
    idx_ranges = []
    after: list[float] = []
    for ts in busy["runner_times"]:
        lo = next((i for i, t in enumerate(ts) if t > busy["t_arrive"]), len(ts))
        end_t = busy["t_window_end"] or busy["t_arrive"]
        hi = next((i for i, t in enumerate(ts) if t > end_t), len(ts))
        hi = max(hi, lo + 1)  # include the first gap after the last prefill step
        idx_ranges.append((lo, hi))
        window.extend(ts[i] - ts[i - 1] for i in range(max(1, lo), min(hi + 1, len(ts))))
        after.extend(ts[i] - ts[i - 1] for i in range(min(hi + 1, len(ts)), len(ts)))
    ref: list[float] = []
    ref_after: list[float] = []
    for ts, (lo, hi) in zip(quiet["runner_times"], idx_ranges):
        ref.extend(ts[i] - ts[i - 1] for i in range(max(1, lo), min(hi + 1, len(ts))))
        ref_after.extend(ts[i] - ts[i - 1] for i in range(min(hi + 1, len(ts)), len(ts)))

    def stats(xs: list[float]) -> dict[str, float]:
        return {"n": len(xs), "p50_ms": round(1000 * percentile(xs, 50), 1),
                "p95_ms": round(1000 * percentile(xs, 95), 1),
                "max_ms": round(1000 * max(xs), 1) if xs else float("nan")}

    return {"window": {"arrivals": stats(window), "quiet": stats(ref)},
            "after_join": {"arrivals": stats(after), "quiet": stats(ref_after)},
            "whole_stream": {"arrivals": stats(gaps_between(busy["runner_times"], 1, None)),
                             "quiet": stats(gaps_between(quiet["runner_times"], 1, None))},
            "long_ttft_s": busy["long_ttft_s"],
            "arrival_window_s": round((busy["t_window_end"] or busy["t_arrive"]) - busy["t_arrive"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", default="64,256,4096", help="prefill_chunk values (>= prompt = unchunked)")
    ap.add_argument("--running", type=int, default=4)
    ap.add_argument("--arrivals", type=int, default=2)
    ap.add_argument("--long-tokens", type=int, default=1000)
    ap.add_argument("--long-new-tokens", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--warm-tokens", type=int, default=8)
    ap.add_argument("--spacing-s", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=1, help="quiet/arrivals pairs per chunk size")
    ap.add_argument("--timeout", type=float, default=300.0, help="bound on one run (s)")
    ap.add_argument("--quick", action="store_true", help="2 running, 1 arrival of ~300 tokens, 32 tokens")
    ap.add_argument("--out", default=str(HERE / "results" / "prefill_interference.json"))
    args = ap.parse_args()
    if args.quick:
        args.running, args.arrivals, args.long_tokens, args.max_new_tokens = 2, 1, 300, 32
    chunks = [int(c) for c in args.chunks.split(",") if c.strip()]
    load_before = loadavg()
    lm = csl.load_model(dtype="float32", progress=False)
    running_ids = [prompt_ids(lm, RUNNING_PROMPTS[i % len(RUNNING_PROMPTS)]) for i in range(args.running)]
    long_ids = [long_prompt(lm, args.long_tokens, i) for i in range(args.arrivals)]
    results: dict[str, Any] = {}
    for chunk in chunks:
        engine = Engine(lm, num_of_concurrent_executions=args.running + args.arrivals, max_queue_size=8,
                        prefill_chunk=chunk).start()
        try:
            one_run(engine, lm, args, running_ids[:1], None)  # warm-up
            per_round = []
            for _ in range(args.rounds):  # alternate, so drifting load hits both alike
                quiet = one_run(engine, lm, args, running_ids, None)
                busy = one_run(engine, lm, args, running_ids, long_ids)
                per_round.append(analyse(quiet, busy))
        finally:
            engine.close()
        res = per_round[0] if len(per_round) == 1 else {
            "rounds": per_round,
            "window": {k: {"p95_ms": median([r["window"][k]["p95_ms"] for r in per_round]),
                           "p50_ms": median([r["window"][k]["p50_ms"] for r in per_round]),
                           "max_ms": median([r["window"][k]["max_ms"] for r in per_round])}
                       for k in ("arrivals", "quiet")},
            "after_join": per_round[0]["after_join"], "whole_stream": per_round[0]["whole_stream"],
            "long_ttft_s": per_round[0]["long_ttft_s"], "arrival_window_s": per_round[0]["arrival_window_s"]}
        results[str(chunk)] = res
        w = res["window"]
        print(f"prefill_chunk={chunk:<5} window ITL p95 {w['arrivals']['p95_ms']:7.0f} ms (quiet "
              f"{w['quiet']['p95_ms']:5.0f}), max {w['arrivals']['max_ms']:6.0f} ms; long TTFT "
              f"{res['long_ttft_s']}", flush=True)
    load_after = loadavg()
    report = {"benchmark": "prefill_interference", **machine(), "loadavg_before": load_before,
              "loadavg_after": load_after, "model": lm.name, "dtype": "float32",
              "running": args.running, "arrivals": args.arrivals,
              "long_prompt_tokens": [len(x) for x in long_ids],
              "running_prompt_tokens": [len(x) for x in running_ids], "max_new_tokens": args.max_new_tokens,
              "spacing_s": args.spacing_s, "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))

    print()
    print(f"{args.running} running streams; {args.arrivals} prompts of {[len(x) for x in long_ids]} tokens "
          f"arrive {args.spacing_s}s apart")
    head = (f"{'chunk':>6} | {'window ITL p50/p95/max (ms)':>28} | {'quiet same tokens':>20} | "
            f"{'after join p95':>14} {'(quiet)':>7} | long TTFT (s)")
    print(head)
    print("-" * len(head))
    for chunk, r in results.items():
        wa, wq = r["window"]["arrivals"], r["window"]["quiet"]
        aa, aq = r["after_join"]["arrivals"], r["after_join"]["quiet"]
        print(f"{chunk:>6} | {wa['p50_ms']:>8.0f} {wa['p95_ms']:>8.0f} {wa['max_ms']:>8.0f}   | "
              f"{wq['p50_ms']:>6.0f} {wq['p95_ms']:>6.0f} {wq['max_ms']:>6.0f} | {aa['p95_ms']:>14.0f} "
              f"{aq['p95_ms']:>7.0f} | {r['long_ttft_s']}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; wrote {out}")


if __name__ == "__main__":
    main()
