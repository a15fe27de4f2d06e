"""The fast CPU backend through our whole front-end, against the same runtime called directly.

Systems, in ONE run, each in its own process (so no two runtimes share a process), same rendered
prompts (the bundled model's own template), greedy, ``--max-new-tokens`` tokens, loopback:

* ``openvino-http`` ``chatstream-lab serve --backend openvino`` (fp16 IR, the default), streamed
                    through ``POST /v1/chat/completions`` by C httpx clients at once;
* ``openvino-direct`` OpenVINO GenAI's ``ContinuousBatchingPipeline`` on the same IR and the same
                    compile properties, driven by its own batching API (``add_request`` + ``step``)
                    with C requests at once: no HTTP, no templates, no detokenizer;
* ``torch-http``    ``chatstream-lab serve --backend torch``, as the first, for "today's torch path".

At each concurrency C (default 1, 4, 16), systems interleaved round by round. Reported per system:
aggregate tok/s (completion tokens / wall time from the first send to the last byte), per-stream
tok/s (median over streams of tokens / that stream's time), TTFT p50/p95, inter-token latency p95
(gaps between a stream's chunks), the ratios against ``openvino-direct`` and ``torch-http``, and the
load average. Targets (issue 9): >= 0.9x direct at C=1 and >= 0.8x at C=16; >= 5x torch at C=1
and >= 3x at C=16. Writes ``benchmarks/results/fast_backend.json`` and ``.png``. No assertion.

    python benchmarks/fast_backend.py [--concurrency 1,4,16] [--rounds 2] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from _common import ServeProcess, loadavg, median, openai_stream, percentile

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "tests"))

from _engines import free_port  # noqa: E402
from throughput import PROMPTS  # noqa: E402

LIMIT = 16


def server(backend: str, max_new_tokens: int) -> ServeProcess:
    """``chatstream-lab serve --backend B`` in its own process."""
    return ServeProcess(["--backend", backend, "--num-of-concurrent-executions", str(LIMIT),
                         "--max-queue-size", str(LIMIT), "--max-new-tokens", str(max_new_tokens)],
                        free_port(), RESULTS / f"fast_backend-{backend}.log")


async def one_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return stream_result(*await openai_stream(client, url, body))


def stream_result(t0: float, arrivals: list[float], tokens: int) -> dict[str, Any]:
    end = arrivals[-1] if arrivals else time.perf_counter()
    return {"ttft_s": arrivals[0] - t0 if arrivals else None, "tokens": tokens, "end": end,
            "gaps": [b - a for a, b in zip(arrivals, arrivals[1:])],
            "stream_tok_s": tokens / (end - t0) if end > t0 else 0.0}


async def http_level(base: str, c: int, max_new_tokens: int) -> dict[str, Any]:
    body = {"max_tokens": max_new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64), trust_env=False) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(client, base + "/v1/chat/completions", {
            **body, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}) for i in range(c)))
    return level_result(t0, results)


def level_result(t0: float, results: list[dict[str, Any]]) -> dict[str, Any]:
    wall = max(r["end"] for r in results) - t0
    return {"tokens": sum(r["tokens"] for r in results), "wall_s": wall,
            "tok_s": sum(r["tokens"] for r in results) / wall,
            "stream_tok_s": [r["stream_tok_s"] for r in results],
            "ttfts": [r["ttft_s"] for r in results if r["ttft_s"] is not None],
            "gaps": [g for r in results for g in r["gaps"]]}


# -- OpenVINO called directly (a child process: python fast_backend.py --direct-worker) -----------
def direct_worker() -> None:
    """Reads "C MAX_NEW" lines on stdin, runs C requests at once on the pipeline, prints JSON."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    from chatstream_lab.models import load_model
    from chatstream_lab.prompts import encode_messages, resolve_template

    lm = load_model(backend="openvino", progress=False)
    template = resolve_template(None, lm.tokenizer)
    ids = [list(encode_messages(template, lm.tokenizer, p).ids) for p in PROMPTS]
    sc = ov_genai.SchedulerConfig()
    sc.cache_size, sc.max_num_seqs, sc.enable_prefix_caching = 1, LIMIT, True
    pipe = ov_genai.ContinuousBatchingPipeline(str(lm.model.ir_dir), sc, "CPU", lm.model.compile_properties())
    next_id = 0
    for line in sys.stdin:
        c, max_new = (int(x) for x in line.split())
        cfg = ov_genai.GenerationConfig()
        cfg.max_new_tokens, cfg.do_sample, cfg.stop_token_ids = max_new, False, set(lm.stop_token_ids)
        t0 = time.perf_counter()
        handles = []
        for i in range(c):
            next_id += 1
            handles.append(pipe.add_request(next_id, ov.Tensor(np.asarray([ids[i % len(ids)]], dtype=np.int64)), cfg))
        arrivals: list[list[float]] = [[] for _ in handles]
        counts = [0] * c
        while pipe.has_non_finished_requests():
            pipe.step()
            now = time.perf_counter()
            for k, h in enumerate(handles):
                if h.can_read():
                    n = sum(len(o.generated_ids) for o in h.read().values())
                    if n:
                        counts[k] += n
                        arrivals[k].append(now)
        results = [stream_result(t0, a, n) for a, n in zip(arrivals, counts)]
        print(json.dumps(level_result(t0, results)), flush=True)


class Direct:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--direct-worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=str(ROOT))

    def level(self, c: int, max_new_tokens: int) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{c} {max_new_tokens}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for system, rs in runs.items():
        ttfts = [t for r in rs for t in r["ttfts"]]
        gaps = [g for r in rs for g in r["gaps"]]
        out[system] = {"tok_s": median([r["tok_s"] for r in rs]), "tok_s_rounds": [r["tok_s"] for r in rs],
                       "stream_tok_s": median([s for r in rs for s in r["stream_tok_s"]]),
                       "ttft_p50_ms": 1000 * median(ttfts), "ttft_p95_ms": 1000 * percentile(ttfts, 95),
                       "itl_p95_ms": 1000 * percentile(gaps, 95) if gaps else None,
                       "tokens": [r["tokens"] for r in rs]}
    out["ours_vs_direct"] = out["openvino-http"]["tok_s"] / out["openvino-direct"]["tok_s"]
    out["ours_vs_torch"] = out["openvino-http"]["tok_s"] / out["torch-http"]["tok_s"]
    return out


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(out["levels"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for system in ("openvino-direct", "openvino-http", "torch-http"):
        axes[0].plot(levels, [out["levels"][c][system]["tok_s"] for c in levels], marker="o", label=system)
        axes[1].plot(levels, [out["levels"][c][system]["ttft_p50_ms"] for c in levels], marker="o", label=system)
    axes[0].set(title="aggregate tok/s", xlabel="concurrent clients")
    axes[1].set(title="TTFT p50 (ms)", xlabel="concurrent clients")
    axes[0].legend()
    fig.suptitle(f"SmolLM2-135M, {out['max_new_tokens']} new tokens, load {out['loadavg_before']}")
    fig.tight_layout()
    fig.savefig(path)


def report(out: dict[str, Any]) -> None:
    print(f"{'C':>3} {'system':>16} {'tok/s':>8} {'stream':>7} {'TTFT p50':>9} {'p95':>7} {'ITL p95':>8}")
    for c, lv in out["levels"].items():
        for s in ("openvino-direct", "openvino-http", "torch-http"):
            r = lv[s]
            print(f"{c:>3} {s:>16} {r['tok_s']:>8.1f} {r['stream_tok_s']:>7.1f} {r['ttft_p50_ms']:>7.0f}ms "
                  f"{r['ttft_p95_ms']:>5.0f}ms {r['itl_p95_ms'] or 0:>6.0f}ms")
        print(f"    ours/direct {lv['ours_vs_direct']:.2f}x   ours/torch {lv['ours_vs_torch']:.2f}x")
    print(f"load average before {out['loadavg_before']}, after {out['loadavg_after']} on {out['cpus']} CPUs")


def main() -> None:
    if "--direct-worker" in sys.argv:
        direct_worker()
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    RESULTS.mkdir(exist_ok=True)
    out: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "cpus": os.cpu_count(),
                           "loadavg_before": loadavg(), "levels": {}}
    servers = {"openvino-http": server("openvino", args.max_new_tokens),
               "torch-http": server("torch", args.max_new_tokens)}
    direct = Direct()
    try:
        for s in servers.values():
            s.wait_ready()
        for s in servers.values():  # warm-up: compile, connections
            asyncio.run(http_level(s.url, 2, 8))
        direct.level(2, 8)
        for c in levels:
            runs: dict[str, list[dict[str, Any]]] = {"openvino-direct": [], "openvino-http": [], "torch-http": []}
            for _ in range(args.rounds):
                runs["openvino-direct"].append(direct.level(c, args.max_new_tokens))
                for name, s in servers.items():
                    runs[name].append(asyncio.run(http_level(s.url, c, args.max_new_tokens)))
            out["levels"][str(c)] = summarize(runs)
            print(f"C={c} done: ours/direct {out['levels'][str(c)]['ours_vs_direct']:.2f}x", flush=True)
    finally:
        direct.stop()
        for s in servers.values():
            s.stop()
    out["loadavg_after"] = loadavg()
    report(out)
    (RESULTS / "fast_backend.json").write_text(json.dumps(out, indent=2))
    plot(out, RESULTS / "fast_backend.png")


if __name__ == "__main__":
    main()
