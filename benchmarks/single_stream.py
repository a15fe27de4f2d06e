"""Single-stream speed: chatstream_lab's streaming vs a raw ``model(...)`` KV-cache decode loop.

Both generate the same greedy tokens for the same prompt (prefill included), runs alternate
so machine noise hits both alike, and the script prints the median ratio (target >= 0.95),
for the inline ``stream()`` and for the engine thread (``Engine.submit``), with the load
average. Usage: ``python benchmarks/single_stream.py [--runs 5] [--tokens 128] [--dtype float32]``
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import machine, median, prompt_ids

import chatstream_lab as csl
from chatstream_lab.config import SamplingParams
from chatstream_lab.engine import Engine
from chatstream_lab.engine.generate import InlineStream

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def raw_loop(lm, ids: list[int], n_tokens: int) -> float:
    """Prefill + greedy decode of exactly n_tokens with the HF cache; returns seconds."""
    from transformers import DynamicCache

    model = lm.model
    cache = DynamicCache(config=model.config)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
        tok = int(out.logits[0, -1].argmax())
        for _ in range(n_tokens - 1):
            out = model(input_ids=torch.tensor([[tok]]), cache=cache, use_cache=True)
            tok = int(out.logits[0, -1].argmax())
    return time.perf_counter() - t0


def library_inline(lm, ids: list[int], n_tokens: int) -> tuple[float, int]:
    params = SamplingParams(temperature=0, max_new_tokens=n_tokens)
    t0 = time.perf_counter()
    s = InlineStream(lm, ids, params)
    for _ in s:
        pass
    return time.perf_counter() - t0, s.finished.usage.completion_tokens


def library_engine(engine: Engine, ids: list[int], n_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    stream = engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=n_tokens))
    for _ in stream:
        pass
    return time.perf_counter() - t0, stream.finished.usage.completion_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    lm = csl.load_model(dtype=args.dtype, progress=False)
    ids = prompt_ids(lm, PROMPT)
    engine = Engine(lm, num_of_concurrent_executions=1, max_queue_size=0).start()
    engine.wait_ready()  # built on its own thread: not inside the timed runs
    # warm-up, and the token count the library really produces (it stops at EOS)
    _, n = library_inline(lm, ids, args.tokens)
    raw_loop(lm, ids, n)
    raw_tps, inline_tps, engine_tps = [], [], []
    for _ in range(args.runs):
        raw_tps.append(n / raw_loop(lm, ids, n))
        dt, got = library_inline(lm, ids, n)
        inline_tps.append(got / dt)
        dt, got = library_engine(engine, ids, n)
        engine_tps.append(got / dt)
    engine.close()
    ratios_inline = [a / b for a, b in zip(inline_tps, raw_tps)]
    ratios_engine = [a / b for a, b in zip(engine_tps, raw_tps)]
    result = {
        "model": lm.name, "dtype": args.dtype, "tokens": n, "runs": args.runs, **machine(),
        "raw_tok_s_median": round(median(raw_tps), 2),
        "stream_tok_s_median": round(median(inline_tps), 2),
        "engine_tok_s_median": round(median(engine_tps), 2),
        "ratio_stream_vs_raw_median": round(median(ratios_inline), 3),
        "ratio_engine_vs_raw_median": round(median(ratios_engine), 3),
    }
    print(json.dumps(result, indent=2))
    print(f"stream()/raw = {result['ratio_stream_vs_raw_median']:.3f}   "
          f"Engine/raw = {result['ratio_engine_vs_raw_median']:.3f}   (target >= 0.95; "
          f"load average {result['loadavg_1m']})")


if __name__ == "__main__":
    main()
