"""Where does a batched engine step spend its time? (a diagnostic, not a pass/fail benchmark)

For each batch size B it runs, alternated in one process on the same prompts (greedy, the same
number of steps):

* ``raw``     the padded batched decode loop of ``_systems.raw_batch`` (the ceiling);
* ``decoder`` chatstream_lab's ``BatchDecoder`` driven inline on this thread (the engine's step
              without the engine thread, queues or HTTP);
* ``engine``  ``Engine.submit`` x B with one consumer thread per stream (the engine thread, the
              stream hand-off, no HTTP).

and reports tokens/s of each, then one cProfile of the decoder run at the largest B, split into
the model forward, sampling, detokenization / text filtering, event hand-off and the rest.

Usage: ``python benchmarks/profile_engine.py [--batch 1,16] [--tokens 64] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import threading
import time
from pathlib import Path
from typing import Any

import torch
from _common import loadavg, machine, median
from _systems import raw_batch
from throughput import PROMPTS

import chatstream_lab as csl
from chatstream_lab.config import SamplingParams
from chatstream_lab.engine import Engine
from chatstream_lab.engine.batching.backends import for_model
from chatstream_lab.engine.batching.decoder import BatchDecoder
from chatstream_lab.engine.core.stream import RequestStream
from chatstream_lab.prompts import encode_messages, resolve_template
from chatstream_lab.types import RequestId

HERE = Path(__file__).resolve().parent


def _ids(model, messages) -> list[int]:
    """The prompt ids of ``messages`` with the model's own chat template."""
    return list(encode_messages(resolve_template(None, model.tokenizer), model.tokenizer, messages).ids)


def decoder_run(lm: Any, ids: list[list[int]], n: int) -> tuple[float, int]:
    """All rows admitted at once, stepped until every row is done; (seconds, tokens)."""
    done: list[Any] = []
    dec = BatchDecoder(lm, for_model(lm), on_retire=done.append, prefill_chunk=256)
    params = SamplingParams(temperature=0, max_new_tokens=n)
    rows = []
    for i, p in enumerate(ids):
        stream = RequestStream(RequestId(f"p{i}"), lambda _rid: None)
        rows.append(dec.make_row(stream, p, params))
    t0 = time.perf_counter()
    for r in rows:
        dec.add(r)
    while dec.has_work:
        dec.step()
    dt = time.perf_counter() - t0
    return dt, sum(len(r.generated) for r in rows)


def engine_run(engine: Engine, ids: list[list[int]], n: int) -> tuple[float, int]:
    params = SamplingParams(temperature=0, max_new_tokens=n)
    t0 = time.perf_counter()
    streams = [engine.submit(p, params) for p in ids]
    threads = [threading.Thread(target=lambda s=s: [None for _ in s]) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    dt = time.perf_counter() - t0
    return dt, sum(s.finished.usage.completion_tokens for s in streams if s.finished)


def raw_run(lm: Any, prompts: list[str], n: int) -> tuple[float, int]:
    res = raw_batch(lm.model, lm.tokenizer, prompts, n)
    return res["wall_s"], sum(s["generated_tokens"] for s in res["streams"])


def categorize(stats: pstats.Stats) -> dict[str, float]:
    """Inclusive time of a few functions that partition a step (cumulative seconds)."""
    want = {
        "model forward (HFBackend._forward)": ("backends.py", "_forward"),
        "cache join (HFBackend.join)": ("backends.py", "join"),
        "cache leave (HFBackend.leave)": ("backends.py", "leave"),
        "sampling (sample_token)": ("sampling.py", "sample_token"),
        "repetition seen-tensor (Row.seen/record)": ("decoder.py", "seen"),
        "detokenize (Detokenizer.add)": ("detokenize.py", "add"),
        "stop-string filter (TextFilter.push)": ("textfilter.py", "push"),
        "event hand-off (RequestStream._push)": ("stream.py", "_push"),
        "whole step (BatchDecoder.step)": ("decoder.py", "step"),
    }
    out = {}
    for label, (file, fn) in want.items():
        total = 0.0
        for (f, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if f.endswith(file) and name == fn:
                total += ct
        out[label] = round(total, 3)
    rec = sum(ct for (f, _l, name), (_a, _b, _c, ct, _d) in stats.stats.items()  # type: ignore[attr-defined]
              if f.endswith("decoder.py") and name == "record")
    out["repetition seen-tensor (Row.seen/record)"] = round(out["repetition seen-tensor (Row.seen/record)"] + rec, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "profile_engine.json"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    load_before = loadavg()
    lm = csl.load_model(dtype="float32", progress=False)
    engine = Engine(lm, num_of_concurrent_executions=max(batches), max_queue_size=max(batches)).start()
    engine.wait_ready()  # built on its own thread: not inside the timed runs
    table: dict[int, dict[str, Any]] = {}
    for b in batches:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
        ids = [_ids(lm, p) for p in prompts]
        raw_run(lm, prompts[:2], 4)  # warm-up
        decoder_run(lm, ids[:2], 4)
        got: dict[str, list[float]] = {"raw": [], "decoder": [], "engine": []}
        for _ in range(args.rounds):
            for name in ("raw", "decoder", "engine"):
                if name == "raw":
                    dt, n = raw_run(lm, prompts, args.tokens)
                elif name == "decoder":
                    dt, n = decoder_run(lm, ids, args.tokens)
                else:
                    dt, n = engine_run(engine, ids, args.tokens)
                got[name].append(n / dt)
        table[b] = {k: round(median(v), 2) for k, v in got.items()}
        table[b]["decoder_vs_raw"] = round(table[b]["decoder"] / table[b]["raw"], 3)
        table[b]["engine_vs_raw"] = round(table[b]["engine"] / table[b]["raw"], 3)
        print(f"B={b:<3} tok/s raw {table[b]['raw']:7.1f}  decoder {table[b]['decoder']:7.1f}  "
              f"engine {table[b]['engine']:7.1f}   decoder/raw {table[b]['decoder_vs_raw']:.3f}  "
              f"engine/raw {table[b]['engine_vs_raw']:.3f}", flush=True)
    engine.close()

    b = max(batches)
    ids = [encode_messages(lm, PROMPTS[i % len(PROMPTS)])[0] for i in range(b)]
    prof = cProfile.Profile()
    prof.enable()
    dt, n = decoder_run(lm, ids, args.tokens)
    prof.disable()
    stats = pstats.Stats(prof)
    parts = categorize(stats)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    print(f"\ncProfile of the decoder at B={b}, {n} tokens in {dt:.2f} s (profiler overhead included):")
    for k, v in parts.items():
        print(f"  {k:<45} {v:8.3f} s  {100 * v / dt:5.1f} %")
    print(f"torch threads {torch.get_num_threads()}; load average before {load_before}, after {loadavg()}")
    report = {"benchmark": "profile_engine", **machine(), "loadavg_before": load_before, "loadavg_after": loadavg(),
              "tokens": args.tokens, "tok_s": table, "profile_batch": b, "profile_wall_s": round(dt, 3),
              "profile_parts_s": parts, "profile_top_tottime": buf.getvalue()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
