"""A prompt-experiment grid vs the same generations through HTTP (``ep.load_test``) and through
the engine directly, at the same concurrency, on the bundled model (default backend).

    python benchmarks/grid.py                         # 4 variants x 8 inputs x 3 seeds, 64 tokens, C=16
    python benchmarks/grid.py --concurrency 2,4,8,16  # the sweep behind the Lab's default limits
    python benchmarks/grid.py --backend torch

For each C, in one process and one window: (1) the grid, ``lab.grid(...)`` with C rows in flight
(96 sampled generations: each seed is its own generation); (2) the same 96 requests the load test
sends (its one message, the model's own template) as a grid; (3) ``ep.load_test(clients=C,
requests=96, max_new_tokens=64)`` against ``lab.serve()`` of the same Lab; (4) the engine's own
batched throughput: the grid's 96 requests submitted straight to the service, C in flight.
Tokens/s = tokens generated / wall time. Targets: grid >= 0.9x the load test on the same prompts
(2 vs 3), and grid ~1x the engine on the same prompts (1 vs 4). Prints the load average.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import loadavg  # noqa: E402

import chatstream_lab as csl  # noqa: E402

INPUTS = [f"Write a short story about {topic}." for topic in
          ("a lighthouse keeper", "a lost cat", "the first snow", "a robot gardener", "a night train",
           "an old map", "a quiet library", "a mountain village")]
VARIANTS = {"own": None, "chatml": "chatml", "own + storyteller": {"system_prompt": "You are a storyteller."},
            "chatml + storyteller": {"template": "chatml", "system_prompt": "You are a storyteller."}}
SEEDS = 3
TOKENS = 64
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": TOKENS}


def run_grid(lab: csl.Lab, concurrency: int, inputs: list[str] | None = None, variants: dict | None = None,
             seeds: int | None = None) -> tuple[float, int, float]:
    inputs, variants, seeds = inputs or INPUTS, variants or VARIANTS, seeds or SEEDS
    t0 = time.perf_counter()
    result = lab.grid(inputs, variants, seeds=seeds, reuse=False, concurrency=concurrency).wait(1200)
    wall = time.perf_counter() - t0
    tokens = sum(r.completion_tokens for r in result.rows)
    assert result.generated == len(inputs) * len(variants) * seeds, result
    return tokens / wall, tokens, wall


def run_grid_like_load_test(lab: csl.Lab, concurrency: int) -> tuple[float, int, float]:
    """The load test's requests as a grid: its one message, the model's own template, one seed each."""
    return run_grid(lab, concurrency, [INPUTS[0]], {"own": None}, len(INPUTS) * len(VARIANTS) * SEEDS)


def run_load_test(lab: csl.Lab, concurrency: int) -> tuple[float, int, float]:
    ep = lab.serve(num_of_concurrent_executions=concurrency, max_queue_size=concurrency)
    try:
        res = ep.run_load_test(clients=concurrency, requests=len(INPUTS) * len(VARIANTS) * SEEDS,
                               max_new_tokens=TOKENS, duration_limit=600, message=INPUTS[0], temperature=0.7)
    finally:
        ep.stop()
    assert res.completed == res.requests, res
    return res.throughput_tokens_per_s, res.tokens, res.wall_s


def run_engine(lab: csl.Lab, concurrency: int) -> tuple[float, int, float]:
    """The engine's own batched throughput: submit straight to the service, C in flight."""
    import threading

    configs = [lab.variant(spec).replace(seed=s) for spec in VARIANTS.values() for s in range(SEEDS)]
    jobs = [(text, config) for text in INPUTS for config in configs]
    slots = threading.Semaphore(concurrency)
    tokens = [0]
    lock = threading.Lock()
    threads = []
    t0 = time.perf_counter()

    def one(text: str, config: csl.lab.ServeConfig) -> None:
        try:
            fin = lab.submit(text, config).result(600)
            with lock:
                tokens[0] += fin.usage.completion_tokens
        finally:
            slots.release()

    for text, config in jobs:
        slots.acquire()
        t = threading.Thread(target=one, args=(text, config))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return tokens[0] / wall, tokens[0], wall


def main() -> int:
    global SEEDS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="16")
    ap.add_argument("--backend", default=None, help="torch or openvino (default: the default backend)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--grid-only", action="store_true", help="only the grid at each C (the limits sweep)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per C, the order reversed every other one")
    ap.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds per (variant, input) (default {SEEDS})")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    SEEDS = args.seeds
    lm = csl.load_model(backend=args.backend, progress=False)
    before = loadavg()
    print(f"model {lm.name} backend {lm.backend} dtype {lm.dtype}; {len(INPUTS)} inputs x {len(VARIANTS)} variants "
          f"x {SEEDS} seeds = {len(INPUTS) * len(VARIANTS) * SEEDS} generations of up to {TOKENS} tokens; "
          f"load before {before}", flush=True)
    rows = []
    for c in levels:
        lab = csl.Lab(lm, num_of_concurrent_executions=c, max_queue_size=c, **SAMPLING)
        try:
            lab.generate("Hi", timeout=300, max_new_tokens=4)  # build and warm the engine
            if args.grid_only:
                grid = run_grid(lab, c)
                rows.append({"concurrency": c, "grid_tok_s": round(grid[0], 1), "load": loadavg()})
                print(json.dumps(rows[-1]), flush=True)
                continue
            phases = {"grid": run_grid, "engine": run_engine, "same": run_grid_like_load_test,
                      "load": run_load_test}
            for rnd in range(args.rounds):  # alternate the order: the machine's load drifts
                order = list(phases) if rnd % 2 == 0 else list(phases)[::-1]
                got = {name: phases[name](lab, c) for name in order}
                grid, engine, same, load = got["grid"], got["engine"], got["same"], got["load"]
                row = {"concurrency": c, "round": rnd + 1, "grid_tok_s": round(grid[0], 1),
                       "engine_tok_s": round(engine[0], 1), "grid_over_engine": round(grid[0] / engine[0], 3),
                       "grid_same_prompts_tok_s": round(same[0], 1), "load_test_tok_s": round(load[0], 1),
                       "same_prompts_grid_over_load_test": round(same[0] / load[0], 3), "load": loadavg()}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            lab.close()

    print(f"load after {loadavg()}")
    print("| C | grid 4x8x3 tok/s | engine direct, same prompts | grid / engine | grid of the load test's prompts | "
          "load_test (HTTP) | grid / load_test |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        if "load_test_tok_s" not in r:
            continue
        print(f"| {r['concurrency']} (round {r['round']}) | {r['grid_tok_s']} | {r['engine_tok_s']} | "
              f"**{r['grid_over_engine']:.2f}x** | "
              f"{r['grid_same_prompts_tok_s']} | {r['load_test_tok_s']} | "
              f"**{r['same_prompts_grid_over_load_test']:.2f}x** |")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "before": before}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
