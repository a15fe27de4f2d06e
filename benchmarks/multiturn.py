"""Multi-turn chat: per-session KV reuse on vs off (time to first token per turn).

One conversation of ``--turns`` turns with long user messages (about ``--user-tokens`` tokens
each, so the last prompt is about 1,500 tokens) runs through the engine with
``session_kv_budget_mb`` on and off (a fresh engine each, same settings; ``--rounds`` pairs,
alternating which goes first, so a drifting machine load hits both alike; per turn the mean of
the rounds is reported), while ``--others`` other streams (short prompts,
``--other-new-tokens`` tokens, resubmitted as they finish) keep decoding in the same batch. For
each turn it records the conversation's time to first token (submit -> first token, as
``Finished.usage.ttft_s``) and the prompt size; for the other streams, their inter-token gaps
while the conversation runs (p50 / p95 / max). Greedy decoding throughout: the replies of all
runs are compared (they must be identical; the turn-N prompts are then the same too).

In-process (no HTTP): this is about the engine. No timing assertion; prints a table, the ratios
of the same run and the load average, and writes ``benchmarks/results/multiturn.json``.

Usage: ``python benchmarks/multiturn.py [--turns 10] [--user-tokens 130] [--others 8] [--rounds 2]
[--threads 1] [--wait-for-load 1.5] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from _common import loadavg, machine, percentile

import chatstream_lab as csl
from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.service import Service
from chatstream_lab.types import Delta

HERE = Path(__file__).resolve().parent
TOPICS = ["a lighthouse", "the harbour", "a winter market", "the old railway", "a mountain village",
          "the river delta", "a desert town", "the night train", "an island school", "the city library"]
FILLER = ("I have been reading about {topic} and I keep wondering how people lived there a century ago, "
          "what they ate, how they travelled, what they did in the long evenings, and which of their "
          "habits survive today in the way the place looks and sounds. ")
OTHER_PROMPTS = ["Write a long story about a dragon who is afraid of the dark.",
                 "Write a long story about a robot learning to paint.",
                 "Write a long letter from a sailor to his family back home.",
                 "Write a detailed travel guide for a week in Kyoto.",
                 "Write a long description of a busy market on a Saturday morning.",
                 "Write a detailed essay about the history of the printing press.",
                 "Write a long story about two friends lost in a forest.",
                 "Write a long story about a lighthouse keeper who finds a message in a bottle."]


def user_message(lm: Any, turn: int, n_tokens: int) -> str:
    """A user turn of about ``n_tokens`` tokens (distinct per turn)."""
    unit = FILLER.format(topic=TOPICS[turn % len(TOPICS)])
    per = len(lm.tokenizer.encode(unit, add_special_tokens=False))
    return f"Question {turn + 1}. " + unit * max(1, round(n_tokens / per)) + "Answer in one sentence."


class Others:
    """``n`` streams that keep decoding (each resubmits when it finishes) and record token times."""

    def __init__(self, svc: Service, n: int) -> None:
        self._svc = svc
        self._stop = threading.Event()
        self.times: list[list[float]] = []  # one list per request
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> Others:
        for t in self._threads:
            t.start()
        return self

    def _loop(self, i: int) -> None:
        while not self._stop.is_set():
            stream = self._svc.submit(OTHER_PROMPTS[i % len(OTHER_PROMPTS)])
            ts: list[float] = []
            with self._lock:
                self.times.append(ts)
            for ev in stream:
                if isinstance(ev, Delta) and ev.token_ids:
                    ts.append(time.perf_counter())
                if self._stop.is_set():
                    stream.cancel()

    def running(self) -> int:
        with self._lock:
            return sum(1 for ts in self.times if ts)

    def gaps(self, lo: float, hi: float) -> list[float]:
        with self._lock:
            return [b - a for ts in self.times for a, b in zip(ts, ts[1:]) if lo <= a and b <= hi]

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def run(lm: Any, args: argparse.Namespace, budget_mb: float) -> dict[str, Any]:
    params = SamplingParams(temperature=0, max_new_tokens=args.reply_tokens)
    svc = Service.build(lm, params=params, limits=Limits(args.others + 1, 8), session_kv_budget_mb=budget_mb)
    other_config = svc.config.replace(max_new_tokens=args.other_new_tokens)
    try:
        svc.submit("Hello!").result(120)  # warm-up (oneDNN packing, first forwards)
        others = Others(svc.with_config(other_config), args.others).start()
        deadline = time.monotonic() + 60
        while others.running() < args.others and time.monotonic() < deadline:
            time.sleep(0.01)
        msgs: list[dict[str, str]] = []
        turns = []
        t_start = time.perf_counter()
        for turn in range(args.turns):
            msgs.append({"role": "user", "content": user_message(lm, turn, args.user_tokens)})
            fin = svc.submit(msgs, session_key="bench").result(600)
            msgs.append({"role": "assistant", "content": fin.text})
            turns.append({"turn": turn + 1, "prompt_tokens": fin.usage.prompt_tokens,
                          "ttft_s": round(fin.usage.ttft_s or float("nan"), 3), "reply": fin.text})
            print(f"  {'reuse' if budget_mb else 'off  '} turn {turn + 1:>2}: prompt {fin.usage.prompt_tokens:>5} "
                  f"tokens, TTFT {fin.usage.ttft_s:6.3f} s", flush=True)
        t_end = time.perf_counter()
        gaps = others.gaps(t_start, t_end)
        others.stop()
        kv = svc.stats().kv_cache
    finally:
        svc.close()
    return {"session_kv_budget_mb": budget_mb, "turns": turns,
            "others_itl_ms": {"n": len(gaps), "p50": round(1000 * percentile(gaps, 50), 1),
                              "p95": round(1000 * percentile(gaps, 95), 1),
                              "max": round(1000 * max(gaps), 1) if gaps else None},
            "kv_cache": None if kv is None else kv.as_dict(), "wall_s": round(t_end - t_start, 1)}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one mode: TTFT per turn averaged, the other streams' gaps pooled."""
    turns = [{**t, "ttft_s": round(sum(r["turns"][i]["ttft_s"] for r in runs) / len(runs), 3),
              "ttft_s_rounds": [r["turns"][i]["ttft_s"] for r in runs]} for i, t in enumerate(runs[0]["turns"])]
    itl = [r["others_itl_ms"] for r in runs]
    return {"session_kv_budget_mb": runs[0]["session_kv_budget_mb"], "turns": turns,
            "others_itl_ms": {"n": sum(x["n"] for x in itl),
                              "p50": round(sum(x["p50"] for x in itl) / len(itl), 1),
                              "p95": round(sum(x["p95"] for x in itl) / len(itl), 1),
                              "max": max((x["max"] or 0.0) for x in itl),
                              "p95_rounds": [x["p95"] for x in itl]},
            "kv_cache": runs[-1]["kv_cache"], "wall_s": [r["wall_s"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--user-tokens", type=int, default=130, help="tokens per user message (about)")
    ap.add_argument("--reply-tokens", type=int, default=16, help="max_new_tokens of the conversation")
    ap.add_argument("--others", type=int, default=8, help="other streams decoding meanwhile")
    ap.add_argument("--other-new-tokens", type=int, default=64)
    ap.add_argument("--budget-mb", type=float, default=512.0, help="session_kv_budget_mb of the reuse run")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--wait-for-load", type=float, default=0.0, help="wait until the 1-min load average is below this")
    ap.add_argument("--wait-max", type=float, default=600.0)
    ap.add_argument("--rounds", type=int, default=2, help="on/off pairs (the order alternates)")
    ap.add_argument("--quick", action="store_true", help="3 turns, 2 other streams, 1 round")
    ap.add_argument("--out", default=str(HERE / "results" / "multiturn.json"))
    args = ap.parse_args()
    if args.quick:
        args.turns, args.others, args.rounds = 3, 2, 1
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    while args.wait_for_load and os.getloadavg()[0] >= args.wait_for_load and time.monotonic() - t0 < args.wait_max:
        print(f"  load average {loadavg()} >= {args.wait_for_load}; waiting ...", flush=True)
        time.sleep(20)
    load_before = loadavg()
    lm = csl.load_model(dtype="float32", progress=False)
    runs: dict[str, list[dict[str, Any]]] = {"reuse": [], "off": []}
    for r in range(args.rounds):
        for name in (("reuse", "off") if r % 2 == 0 else ("off", "reuse")):
            runs[name].append(run(lm, args, args.budget_mb if name == "reuse" else 0.0))
    load_after = loadavg()
    on, off = combine(runs["reuse"]), combine(runs["off"])
    replies = {tuple(t["reply"] for t in x["turns"]) for x in runs["reuse"] + runs["off"]}
    identical = len(replies) == 1
    last_on, last_off = on["turns"][-1], off["turns"][-1]
    report = {"benchmark": "multiturn", **machine(), "loadavg_before": load_before, "loadavg_after": load_after,
              "model": lm.name, "dtype": "float32", "args": vars(args), "greedy_replies_identical": identical,
              "last_turn": {"prompt_tokens": last_on["prompt_tokens"], "ttft_reuse_s": last_on["ttft_s"],
                            "ttft_off_s": last_off["ttft_s"],
                            "ttft_ratio_off_over_reuse": round(last_off["ttft_s"] / last_on["ttft_s"], 2)},
              "others_itl_p95_ratio_off_over_reuse": round(off["others_itl_ms"]["p95"] / on["others_itl_ms"]["p95"], 2),
              "reuse": on, "off": off}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))

    print()
    print(f"{args.rounds} round(s); {args.turns} turns, {args.others} other streams decoding meanwhile; "
          f"greedy replies identical on/off: {identical}")
    head = f"{'turn':>4} | {'prompt':>6} | {'TTFT reuse (s)':>14} | {'TTFT off (s)':>12} | off/reuse"
    print(head)
    print("-" * len(head))
    for a, b in zip(on["turns"], off["turns"]):
        print(f"{a['turn']:>4} | {a['prompt_tokens']:>6} | {a['ttft_s']:>14.3f} | {b['ttft_s']:>12.3f} | "
              f"{b['ttft_s'] / a['ttft_s']:>8.2f}   rounds: reuse {a['ttft_s_rounds']}, off {b['ttft_s_rounds']}")
    for name, r in (("reuse", on), ("off", off)):
        itl = r["others_itl_ms"]
        print(f"other streams' inter-token gaps while the conversation ran ({name}): p50 {itl['p50']} ms, "
              f"p95 {itl['p95']} ms (rounds {itl['p95_rounds']}), max {itl['max']} ms ({itl['n']} gaps); "
              f"conversation wall {r['wall_s']} s")
    print(f"session KV (reuse run): {on['kv_cache']}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}; wrote {out}")


if __name__ == "__main__":
    main()
