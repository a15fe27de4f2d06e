"""Each batching speed-up of the HF backend on and off, alternated in one process (a diagnostic).

* prefix cache: one grouped prefill of the 16 benchmark prompts (they share SmolLM2's system
  prompt) with and without :class:`~chatstream_lab.engine.batching.prefix_cache.PrefixCache`;
* packed linears: the median decode step of those 16 rows with and without
  :class:`~chatstream_lab.engine.batching.onednn.PackedLinears`.

Prints medians and the on/off ratios with the load average. No assertion.
Usage: ``python benchmarks/engine_speedups.py [--rounds 4] [--steps 20]``
"""

from __future__ import annotations

import argparse
import time

from _common import loadavg, median
from throughput import PROMPTS

import chatstream_lab as csl
from chatstream_lab.engine.batching.backends import HFBackend
from chatstream_lab.prompts import encode_messages, resolve_template


def prefill_s(backend: HFBackend, ids: list[list[int]]) -> float:
    t0 = time.perf_counter()
    backend.prefill_group(ids)
    return time.perf_counter() - t0


def decode_step_ms(backend: HFBackend, ids: list[list[int]], steps: int) -> float:
    backend.reset()
    pf, logits = backend.prefill_group(ids)
    backend.join(list(range(len(ids))), pf)
    tokens = logits.argmax(-1).tolist()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        tokens = backend.decode(tokens).argmax(-1).tolist()
        times.append(time.perf_counter() - t0)
    return median(times[2:]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    before = loadavg()
    lm = csl.load_model(progress=False)
    template = resolve_template(None, lm.tokenizer)
    ids = [list(encode_messages(template, lm.tokenizer, p).ids) for p in PROMPTS]
    plain, cached = HFBackend(lm.model, prefix_cache_bytes=0), HFBackend(lm.model)
    cached.prefill_group(ids[:2])  # stores the shared start, as any earlier request would
    mode = cached._linears
    pre: dict[str, list[float]] = {"off": [], "on": []}
    step: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        pre["off"].append(prefill_s(plain, ids))
        pre["on"].append(prefill_s(cached, ids))
        for state in ("off", "on"):
            cached._linears = mode if state == "on" else None
            step[state].append(decode_step_ms(cached, ids, args.steps))
    p_off, p_on = median(pre["off"]), median(pre["on"])
    s_off, s_on = median(step["off"]), median(step["on"])
    print(f"prefill of {len(ids)} prompts: prefix cache off {p_off:.3f} s, on {p_on:.3f} s  -> {p_off / p_on:.2f}x")
    if mode is None:
        print("packed linears: not available in this torch build")
    else:
        print(f"decode step at {len(ids)} rows: packed linears off {s_off:.1f} ms, on {s_on:.1f} ms"
              f"  -> {s_off / s_on:.2f}x")
    print(f"medians of {args.rounds} rounds; load average before {before}, after {loadavg()}")


if __name__ == "__main__":
    main()
