"""Every OpenVINO precision through our HTTP front-end, beside llama-server on an F16 GGUF of the
same weights, in ONE run: speed at 1 and 16 clients, greedy agreement with torch, the auto choice.

Systems, each in its own process, all started before the first measurement and interleaved round
by round (so load from other work on the machine hits them alike), greedy, loopback:

* ``ours <precision>``  ``chatstream-lab serve --dtype <precision>`` for float16/bf16, float16/f32,
                        int8/f32, int8/bf16, int4/f32 (``/v1/chat/completions``, streamed);
* ``ours auto``         ``chatstream-lab serve`` with no precision flag: the precision calibration
                        chose for this machine (read back from its ``/v1/models`` and ``/stats``);
* ``llama F16``         llama.cpp's ``llama-server --parallel 16 -t 2`` on an F16 GGUF converted from
                        the same converted HF copy (``_gguf.py``), sent our rendered prompt ids on
                        ``/v1/completions``; with OMP_WAIT_POLICY=PASSIVE (the harness default,
                        polite to other work) and, with ``--llama-active``, also as built (spinning).

Per system and level C (1, 16): aggregate tok/s (completion tokens / wall time from the first send
to the last byte), median over rounds, and the best round; TTFT p50. Greedy agreement: each
system's replies to the correctness gate's prompts (``chatstream_lab.models.gate``, 32 tokens),
re-tokenized and judged against the torch fp32 reference exactly as calibration does. Reported:
the ratios of ``ours auto`` to the faster llama configuration (targets: >= 0.9x at one client,
>= 1.5x at 16), the CPU, whether it computes bf16 natively, and the load average before and after.
Writes ``benchmarks/results/precision.json``. No assertion.

    python benchmarks/precision.py [--rounds 3] [--max-new-tokens 64] [--llama-active]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from _common import ServeProcess, loadavg, median, openai_stream

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "tests"))

from _engines import LlamaServer, free_port  # noqa: E402
from _gguf import f16_gguf  # noqa: E402
from throughput import PROMPTS  # noqa: E402

CANDIDATES = ("float16/bf16", "float16/f32", "int8/f32", "int8/bf16", "int4/f32")
LEVELS = (1, 16)
LIMIT = 16


@dataclass(frozen=True)
class Prompts:
    """The same prompts as our server gets them (texts) and as llama-server gets them (rendered ids)."""

    texts: list[str]
    ids: list[list[int]]


@dataclass
class System:
    name: str
    url: str
    kind: str  # "ours" (chat completions, messages) or "llama" (completions, token ids)
    stop: Any  # the process handle: .stop()


def start_systems(args: argparse.Namespace, gguf: Path) -> dict[str, System]:
    systems: dict[str, System] = {}
    limits = ["--num-of-concurrent-executions", str(LIMIT), "--max-queue-size", str(LIMIT),
              "--max-new-tokens", str(args.max_new_tokens)]
    procs: list[tuple[str, ServeProcess]] = []
    for name, extra in [("ours auto", [])] + [(f"ours {c}", ["--dtype", c]) for c in CANDIDATES]:
        procs.append((name, ServeProcess([*extra, *limits], free_port(), _log(name))))
    llamas = [("llama F16", True)] + ([("llama F16 (OMP active)", False)] if args.llama_active else [])
    for name, passive in llamas:
        srv = LlamaServer(gguf, parallel=LIMIT, ctx_per_slot=512, threads=os.cpu_count() or 2, omp_passive=passive,
                          log_path=_log(name)).start()
        systems[name] = System(name, srv.url, "llama", srv)
    for name, proc in procs:
        proc.wait_ready(600)
        systems[name] = System(name, proc.url, "ours", proc)
    return systems


def _log(name: str) -> Path:
    return RESULTS / f"precision-{name.replace(' ', '_').replace('/', '_').replace('(', '').replace(')', '')}.log"


def request(system: System, prompts: Prompts, i: int, max_tokens: int, *, stream: bool) -> tuple[str, dict]:
    body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if system.kind == "llama":
        return system.url + "/v1/completions", {**body, "prompt": prompts.ids[i]}
    return system.url + "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompts.texts[i]}]}


async def level(system: System, c: int, prompts: Prompts, max_tokens: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
                                 trust_env=False) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(openai_stream(client, *request(system, prompts, i % len(prompts.ids),
                                                                       max_tokens, stream=True)) for i in range(c)))
    end = time.perf_counter()
    tokens = sum(r[2] for r in results)
    return {"tokens": tokens, "wall_s": end - t0, "tok_s": tokens / (end - t0),
            "ttfts": [r[1][0] - r[0] for r in results if r[1]]}


def greedy_replies(system: System, prompts: Prompts, max_tokens: int) -> list[tuple[str, str]]:
    """(text, finish_reason) of each gate prompt, one request at a time."""
    out = []
    with httpx.Client(timeout=120, trust_env=False) as client:
        for i in range(len(prompts.ids)):
            url, body = request(system, prompts, i, max_tokens, stream=False)
            choice = client.post(url, json=body).raise_for_status().json()["choices"][0]
            out.append((choice.get("text") if system.kind == "llama" else choice["message"]["content"],
                        choice.get("finish_reason")))
    return out


def agreement(replies: list[tuple[str, str]], reference: Any, tokenizer: Any) -> dict[str, Any]:
    """The gate's verdict on replies given as text (re-tokenized; a "stop" finish adds the stop id)."""
    from chatstream_lab.models.gate import judge

    ids = [list(tokenizer.encode(text, add_special_tokens=False)) + ([reference.stop_ids[0]] if fin == "stop" else [])
           for text, fin in replies]
    result = judge(reference, ids)
    return {"gate": result.summary, "passed": result.passed, "agreed_tokens": result.agreed_tokens,
            "reference_tokens": result.reference_tokens, "capital_of_france": replies[0][0]}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["tok_s"] for r in runs]
    return {"tok_s": median(rates), "best_tok_s": max(rates), "rounds": [round(x, 1) for x in rates],
            "ttft_p50_ms": 1000 * median([t for r in runs for t in r["ttfts"]])}


def report(out: dict[str, Any]) -> None:
    print(f"\n{out['cpu']} ({out['cores']} cores), bf16 compute native: {out['bf16_native']}; "
          f"{out['max_new_tokens']} new tokens, {out['rounds']} rounds")
    print(f"{'system':<24} {'1 client tok/s (med/best)':>26} {'16 clients (med/best)':>22} {'TTFT1':>6}  greedy gate")
    for name, r in out["systems"].items():
        one, many = r["levels"]["1"], r["levels"]["16"]
        print(f"{name:<24} {one['tok_s']:>17.1f} / {one['best_tok_s']:<6.1f} {many['tok_s']:>13.0f} / "
              f"{many['best_tok_s']:<6.0f} {one['ttft_p50_ms']:>5.0f}ms  {r['agreement']['gate']}")
    print(f"auto choice: {out['auto']['precision']} ({out['auto']['source']}); calibration measured "
          f"{out['auto'].get('measured_at')} at load {out['auto'].get('loadavg')}")
    for k, v in out["ratios"].items():
        print(f"{k}: {v:.2f}x")
    print(f"load average before {out['loadavg_before']}, after {out['loadavg_after']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--llama-active", action="store_true",
                    help="also run llama-server with spinning OpenMP threads (its own default; faster on an idle "
                         "machine, much slower on a shared one)")
    args = ap.parse_args()
    from chatstream_lab.models.calibrate import available_computes, load_reference
    from chatstream_lab.models.cpu import current_signature
    from chatstream_lab.models.loader import calibration_target
    from chatstream_lab.prompts import encode_messages, resolve_template

    RESULTS.mkdir(exist_ok=True)
    target = calibration_target(progress=False)
    reference = load_reference(target)
    template = resolve_template(None, target.tokenizer)
    timing = Prompts(list(PROMPTS), [list(encode_messages(template, target.tokenizer, p).ids) for p in PROMPTS])
    gate = Prompts(list(reference.prompts), [list(p) for p in reference.prompt_ids])
    ours_gate_ids = [list(encode_messages(template, target.tokenizer, p).ids) for p in reference.prompts]
    signature = current_signature()
    out: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "cpu": signature.cpu,
                           "cores": signature.cores, "bf16_native": "bf16" in map(str, available_computes()),
                           "gate_prompts_render_alike": gate.ids == ours_gate_ids, "loadavg_before": loadavg(),
                           "systems": {}}
    systems = start_systems(args, f16_gguf(target.hf_dir, target.cache_dir))
    try:
        names = list(systems)
        for s in systems.values():  # warm-up: compile, connections
            asyncio.run(level(s, 2, timing, 8))
        out["loadavg_start"] = loadavg()
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {n: {c: [] for c in LEVELS} for n in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                for c in LEVELS:
                    runs[name][c].append(asyncio.run(level(systems[name], c, timing, args.max_new_tokens)))
            print(f"round {r + 1}/{args.rounds} done, load {loadavg()}", flush=True)
        for name, s in systems.items():
            out["systems"][name] = {
                "levels": {str(c): summarize(runs[name][c]) for c in LEVELS},
                "agreement": agreement(greedy_replies(s, gate, reference.reply_tokens), reference,
                                       target.tokenizer)}
        with httpx.Client(base_url=systems["ours auto"].url, timeout=30, trust_env=False) as client:
            out["auto"] = client.get("/stats").json()["precision"]
            out["auto_v1_models"] = client.get("/v1/models").json()["data"][0]
    finally:
        for s in systems.values():
            s.stop.stop()
    out["loadavg_after"] = loadavg()
    auto = out["systems"]["ours auto"]["levels"]
    llama = {c: max(v["levels"][c]["tok_s"] for k, v in out["systems"].items() if k.startswith("llama"))
             for c in ("1", "16")}  # the faster llama configuration at each level
    out["ratios"] = {"ours auto / llama F16, 1 client (target >= 0.9)": auto["1"]["tok_s"] / llama["1"],
                     "ours auto / llama F16, 16 clients (target >= 1.5)": auto["16"]["tok_s"] / llama["16"]}
    report(out)
    (RESULTS / "precision.json").write_text(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
