"""Constrained decoding: throughput with and without a JSON schema, and the per-token mask cost.

For each in-process engine (torch, OpenVINO), at 1 and 16 concurrent requests, the same prompts run
free and with a JSON schema on every row (``SamplingParams.constraint``), interleaved round by
round so machine noise hits both alike. The schema lets a reply run to ``max_new_tokens`` (an
article: a title and a list of paragraphs), so both modes generate the same number of tokens and
tokens/s compare like for like. Reported: aggregate tokens/s (all completion tokens / wall time),
the schema/free ratio (the issue asks >= 0.9 at 16), and the torch engine's mask cost per token
(fill one row's bitmask + apply it to the logits + accept the sampled token), at 1 and 16 rows.

No timing assertion: it prints a table with the load average and writes
``benchmarks/results/structured.json``.

Usage::

    python benchmarks/structured.py [--engines torch,openvino] [--concurrency 1,16]
        [--max-new-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from _common import loadavg, machine, median, prompt_ids

RESULTS = Path(__file__).resolve().parent / "results"

ARTICLE = {"type": "object", "properties": {
    "title": {"type": "string"},
    "paragraphs": {"type": "array", "items": {"type": "string"}}}, "required": ["title", "paragraphs"]}

PROMPTS = [
    "Write a long article about lighthouses as JSON.",
    "Write a long article about steam engines as JSON.",
    "Write a long article about the printing press as JSON.",
    "Write a long article about sourdough bread as JSON.",
    "Write a long article about dragons as JSON.",
    "Write a long article about the immune system as JSON.",
    "Write a long article about sailing as JSON.",
    "Write a long article about the water cycle as JSON.",
]


def run_batch(service: Any, ids: list[list[int]], params: Any) -> tuple[int, float]:
    """Submit every prompt at once; (completion tokens, wall seconds) when all have finished."""
    gen = service.generator.start()
    done: list[int] = []
    lock = threading.Lock()

    def consume(stream: Any) -> None:
        fin = stream.result(600)
        with lock:
            done.append(fin.usage.completion_tokens)

    t0 = time.perf_counter()
    streams = [gen.submit(p, params) for p in ids]
    threads = [threading.Thread(target=consume, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done), time.perf_counter() - t0


def bench_engine(name: str, concurrency: list[int], max_new: int, rounds: int) -> dict[str, Any]:
    from chatstream_lab.config import Limits, SamplingParams
    from chatstream_lab.constraint import Constraint
    from chatstream_lab.models import load_model
    from chatstream_lab.service import Service

    lm = load_model(backend=name, progress=False)
    service = Service.build(lm, limits=Limits(max(concurrency), 64))
    free = SamplingParams(temperature=0, max_new_tokens=max_new)
    schema = free.replace(constraint=Constraint.json_schema(ARTICLE))
    all_ids = [prompt_ids(lm, p) for p in PROMPTS]
    run_batch(service, all_ids[:2], schema)  # warm up: compile, first forwards
    out: dict[str, Any] = {}
    for c in concurrency:
        ids = [all_ids[i % len(all_ids)] for i in range(c)]
        rates: dict[str, list[float]] = {"free": [], "schema": []}
        for _ in range(rounds):
            for mode, params in (("free", free), ("schema", schema)):
                tokens, wall = run_batch(service, ids, params)
                rates[mode].append(tokens / wall)
        f, s = median(rates["free"]), median(rates["schema"])
        out[str(c)] = {"free_tok_s": round(f, 1), "schema_tok_s": round(s, 1), "ratio": round(s / f, 3)}
        print(f"{name:9s} C={c:<3d} free {f:7.1f} tok/s   schema {s:7.1f} tok/s   ratio {s / f:5.3f}"
              f"   (load {loadavg()})", flush=True)
    service.close()
    return out


def mask_cost(rows_list: list[int], steps: int = 200) -> dict[str, float]:
    """Microseconds per token for fill + apply + accept on the bundled tokenizer (torch engine)."""
    import torch

    from chatstream_lab.constraint import Constraint
    from chatstream_lab.models import load_model
    from chatstream_lab.structured import TokenMasks, grammars_for

    lm = load_model(backend="torch", progress=False)
    grammars = grammars_for(lm.tokenizer, 49152, lm.stop_token_ids)
    constraint = Constraint.json_schema(ARTICLE)
    out = {}
    for rows in rows_list:
        masks = TokenMasks(49152)
        matchers = [grammars.matcher(constraint) for _ in range(rows)]
        logits = torch.randn(rows, 49152)
        t0 = time.perf_counter()
        for _ in range(steps):
            work = logits.clone()
            masks.apply(work, matchers)
            for i, m in enumerate(matchers):
                token = int(work[i].argmax())
                if not m.accept(token) or m.terminated:  # a finished reply: start another
                    matchers[i] = grammars.matcher(constraint)
        clone = time.perf_counter()
        for _ in range(steps):
            logits.clone()
        per_token = ((clone - t0) - (time.perf_counter() - clone)) / steps / rows * 1e6
        out[str(rows)] = round(per_token, 1)
        print(f"mask cost  rows={rows:<3d} {per_token:7.1f} us per token (fill + apply + accept)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="torch,openvino")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    concurrency = [int(c) for c in args.concurrency.split(",")]
    print(f"machine {machine()}  load {loadavg()}", flush=True)
    result: dict[str, Any] = {"machine": machine(), "max_new_tokens": args.max_new_tokens,
                              "mask_cost_us_per_token": mask_cost(sorted({1, *concurrency}))}
    for engine in args.engines.split(","):
        result[engine] = bench_engine(engine, concurrency, args.max_new_tokens, args.rounds)
    result["loadavg_end"] = loadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "structured.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
