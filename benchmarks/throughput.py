"""Throughput under concurrency, through HTTP: chatstream_lab vs the ceiling, a hand-written server
and the predecessor, all measured in ONE run on the same model (SmolLM2-135M-Instruct, fp32, greedy).

Systems (each in its own process, started and stopped here, loopback only, bounded in time):

* ``raw``   the ceiling: a padded batched greedy decode loop (attention mask + position ids + the
            HF DynamicCache), no server; batch size = concurrency (``_systems.py raw``).
* ``ours``  ``create_app(ChatStream(model=load_model(), num_of_concurrent_executions=max(C)))`` on a
            ``BackgroundServer``; ``POST /chat_stream`` (seed framing) (``_systems.py ours``).
* ``naive`` FastAPI + ``model.generate()`` on a thread per request + ``TextIteratorStreamer``
            (``_systems.py naive``).
* ``chatstream03``  ``chatstream==0.3.0`` from PyPI with a ChatML prompt class, uvicorn on the main
            thread of a process in ``benchmarks/.venv-chatstream03`` (make it with
            ``benchmarks/setup_chatstream03.sh``; skipped with a note if it is missing).

At each concurrency C, C httpx async streaming clients each send one request at once (prompt
``i % 16`` of a fixed set, the same ``max_new_tokens``), systems interleaved level by level so
machine noise hits them alike. Tokens are counted the same way for every system: the final reply
text re-tokenized with the model's tokenizer. Reported per system and C: aggregate tokens/s
(all tokens / wall time from the first send to the last byte), per-stream tokens/s (median of
tokens / the stream's own end-to-end time), TTFT p50/p95 (send -> first text), inter-token p95
(gaps between chunks that carried new text, pooled over streams; ``tok/chunk`` says how many
tokens a chunk carried: ~1 except for TextIteratorStreamer, which flushes whole words).

No timing assertion: it prints a table, the issue's ratios and the load average, and writes
``benchmarks/results/throughput.json`` and ``throughput.png``.

Usage::

    python benchmarks/throughput.py [--concurrency 1,2,4,8,16] [--max-new-tokens 64]
        [--systems raw,ours,naive,chatstream03] [--rounds-single 3] [--quick]
        [--wait-for-load 1.5]     # poll (up to --wait-max s) until the 1-min load average is below
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import loadavg, machine, median, percentile

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CS03_PYTHON = HERE / ".venv-chatstream03" / "bin" / "python"
SEED_DELIMITER = b"<::EOS::>"
ALL_SYSTEMS = ("raw", "ours", "naive", "chatstream03")

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works.",
    "Write a detailed essay about the history of the printing press.",
    "Describe, step by step, how to bake a loaf of sourdough bread.",
    "Write a long story about a dragon who is afraid of the dark.",
    "Explain how the human immune system fights a virus, in detail.",
    "Write a long letter from a sailor to his family back home.",
    "Describe the water cycle in detail for a school textbook.",
    "Write a long story about a robot learning to paint.",
    "Explain in detail how airplanes stay in the air.",
    "Write a detailed travel guide for a week in Kyoto.",
    "Describe the life cycle of a star, from nebula to remnant.",
    "Write a long story about two friends lost in a forest.",
    "Explain in detail how a computer executes a program.",
    "Write a long description of a busy market on a Saturday morning.",
    "Explain the causes and effects of the French Revolution in detail.",
]


# -- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A system's process: READY handshake on stdout, stderr to a log file, stopped by its pid."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                  text=True, bufsize=1, cwd=str(HERE), env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port: int | None = None

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def readline(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no answer in {timeout:.0f} s (see {self.log_path})") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited (code {self.p.poll()}); see {self.log_path}")
        return line

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.1, deadline - time.monotonic()))
            if line.startswith("READY"):
                self.port = int(line.split()[1])
                return

    def send(self, obj: dict[str, Any]) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(obj) + "\n")
        self.p.stdin.flush()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        if self.p.stdin is not None:
            try:
                self.p.stdin.close()
            except OSError:
                pass
        self._log.close()


def converted_model_dir() -> Path:
    """The plain-HF copy of the bundled model that load_model() keeps (made here if missing)."""
    from chatstream_lab.models import loader

    def find() -> Path | None:
        try:
            d = loader.default_cache_dir() / "converted" / loader._gguf_cache_key(loader.bundled_model_path())
        except Exception:
            return None
        return d if (d / "model.safetensors").is_file() else None

    found = find()
    if found is None:
        print("converting the bundled GGUF once (load_model) ...", flush=True)
        subprocess.run([sys.executable, "-c", "import chatstream_lab as c; c.load_model(progress=False)"],
                       check=True, timeout=900)
        found = find()
    if found is None:
        raise SystemExit("could not find the converted model; pass --model-dir")
    return found


def start_system(name: str, args: argparse.Namespace, model_dir: Path, log_dir: Path) -> Proc:
    py = sys.executable
    common = ["--max-new-tokens", str(args.max_new_tokens)]
    limit = max(args.concurrency)
    if name in ("raw", "ours", "naive"):  # the predecessor's server stays float32 (its own loader)
        common += ["--dtype", args.dtype]
    if name == "raw":
        argv = [py, str(HERE / "_systems.py"), "raw", "--model", str(model_dir), *common]
    elif name == "ours":
        argv = [py, str(HERE / "_systems.py"), "ours", "--port", str(free_port()), "--limit", str(limit),
                "--max-queue-size", str(4 * limit), *common]
    elif name == "naive":
        argv = [py, str(HERE / "_systems.py"), "naive", "--port", str(free_port()),
                "--model", str(model_dir), *common]
    elif name == "chatstream03":
        argv = [str(CS03_PYTHON), str(HERE / "_chatstream03_server.py"), "--port", str(free_port()),
                "--model", str(model_dir), "--limit", str(limit), "--max-queue-size", str(4 * limit), *common]
    else:
        raise ValueError(name)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:  # torch reads it at start-up: the same intra-op thread count for every system
        env["OMP_NUM_THREADS"] = str(args.threads)
    return Proc(name, argv, log_dir, env)


# -- clients ------------------------------------------------------------------------------------
async def one_request(client: Any, url: str, prompt: str, cumulative: bool, t_zero: float) -> dict[str, Any]:
    """POST one chat request and time its stream; ``cumulative``: seed framing (whole text + delimiter)."""
    rec: dict[str, Any] = {"t_send": time.perf_counter() - t_zero, "t_first": None, "t_end": None,
                           "chunk_times": [], "text": "", "status": None, "error": None}
    buf = b""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        async with client.stream("POST", url + "/chat_stream", json={"user_input": prompt}) as r:
            rec["status"] = r.status_code
            if r.status_code != 200:
                rec["error"] = (await r.aread()).decode(errors="replace")[:300]
            else:
                async for chunk in r.aiter_raw():
                    now = time.perf_counter() - t_zero
                    new = False
                    if cumulative:
                        buf += chunk
                        if SEED_DELIMITER in buf:
                            *records, buf = buf.split(SEED_DELIMITER)
                            text = records[-1].decode("utf-8", errors="replace")
                            new = len(text) > len(rec["text"])
                            rec["text"] = text
                    else:
                        piece = decoder.decode(chunk)
                        new = bool(piece)
                        rec["text"] += piece
                    if new:
                        rec["chunk_times"].append(now)
                        if rec["t_first"] is None:
                            rec["t_first"] = now
                if not cumulative:
                    rec["text"] += decoder.decode(b"", final=True)
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["t_end"] = time.perf_counter() - t_zero
    return rec


async def http_level(url: str, prompts: list[str], cumulative: bool, timeout_s: float) -> list[dict[str, Any]]:
    import httpx

    limits = httpx.Limits(max_connections=len(prompts) + 4, max_keepalive_connections=0)
    timeout = httpx.Timeout(connect=10.0, read=120.0, write=10.0, pool=10.0)
    # one client per stream: its own connection and its own (new) session cookie
    clients = [httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) for _ in prompts]
    t_zero = time.perf_counter()
    try:
        tasks = [asyncio.ensure_future(one_request(c, url, p, cumulative, t_zero)) for c, p in zip(clients, prompts)]
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        out = []
        for t in tasks:
            if t in done:
                out.append(t.result())
            else:
                out.append({"t_send": 0.0, "t_first": None, "t_end": timeout_s, "chunk_times": [], "text": "",
                            "status": None, "error": f"level timeout after {timeout_s:.0f} s"})
        return out
    finally:
        for c in clients:
            await c.aclose()


def run_level(proc: Proc, name: str, prompts: list[str], max_new_tokens: int) -> list[dict[str, Any]]:
    timeout_s = 60.0 + len(prompts) * max_new_tokens * 0.5
    if name == "raw":
        proc.send({"prompts": prompts, "max_new_tokens": max_new_tokens})
        result = json.loads(proc.readline(timeout_s))
        if "error" in result:
            raise RuntimeError(f"raw: {result['error']}")
        return list(result["streams"])
    cumulative = name in ("ours", "chatstream03")
    return asyncio.run(http_level(proc.url, prompts, cumulative, timeout_s))


# -- metrics ------------------------------------------------------------------------------------
def level_metrics(records: list[dict[str, Any]], count_tokens: Any) -> dict[str, Any]:
    ok = [r for r in records if r["error"] is None and r["t_first"] is not None]
    tokens = [count_tokens(r["text"]) for r in ok]
    gaps: list[float] = []
    chunks = 0
    for r in ok:
        ts = r["chunk_times"]
        chunks += len(ts)
        gaps.extend(b - a for a, b in zip(ts, ts[1:]))
    wall = (max(r["t_end"] for r in records) - min(r["t_send"] for r in records)) if records else float("nan")
    per_stream = [n / (r["t_end"] - r["t_send"]) for n, r in zip(tokens, ok) if r["t_end"] > r["t_send"]]
    ttft = [r["t_first"] - r["t_send"] for r in ok]
    return {
        "streams": len(records), "ok": len(ok),
        "errors": sorted({str(r["error"])[:120] for r in records if r["error"] is not None}),
        "tokens_total": sum(tokens), "tokens_min": min(tokens, default=0), "tokens_max": max(tokens, default=0),
        "wall_s": round(wall, 3),
        "aggregate_tok_s": round(sum(tokens) / wall, 2) if wall > 0 else float("nan"),
        "per_stream_tok_s_median": round(median(per_stream), 2),
        "ttft_p50_s": round(percentile(ttft, 50), 3), "ttft_p95_s": round(percentile(ttft, 95), 3),
        "itl_p50_ms": round(1000 * percentile(gaps, 50), 1), "itl_p95_ms": round(1000 * percentile(gaps, 95), 1),
        "tokens_per_chunk": round(sum(tokens) / chunks, 2) if chunks else float("nan"),
    }


def combine_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of every number (one round: itself)."""
    if len(rounds) == 1:
        return {**rounds[0], "rounds": 1}
    out: dict[str, Any] = {"rounds": len(rounds)}
    for k, v in rounds[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = round(median([r[k] for r in rounds]), 3)
        elif k == "errors":
            out[k] = sorted({e for r in rounds for e in r[k]})
    out["aggregate_tok_s_rounds"] = [r["aggregate_tok_s"] for r in rounds]
    return out


# -- report -------------------------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or a != a or b != b:
        return None
    return round(a / b, 3)


def ratios(results: dict[str, dict[int, dict[str, Any]]], concurrency: list[int]) -> dict[str, Any]:
    def agg(system: str, c: int) -> float | None:
        m = results.get(system, {}).get(c)
        return None if m is None or not m["ok"] else m["aggregate_tok_s"]

    top = 16 if 16 in concurrency else max(concurrency)
    return {
        "at_concurrency": top,
        "ours_top_vs_ours_single": {"value": ratio(agg("ours", top), agg("ours", 1)), "target": ">= 8",
                                    "what": f"aggregate tok/s at {top} concurrent / our single stream"},
        "ours_top_vs_chatstream03_top": {"value": ratio(agg("ours", top), agg("chatstream03", top)),
                                         "target": ">= 6",
                                         "what": f"aggregate tok/s at {top} concurrent, ours / chatstream 0.3.0"},
        "ours_single_vs_raw_single": {"value": ratio(agg("ours", 1), agg("raw", 1)), "target": ">= 0.9",
                                      "what": "single stream through HTTP / raw loop at batch 1"},
        "ours_vs_raw_by_concurrency": {c: ratio(agg("ours", c), agg("raw", c)) for c in concurrency},
        "ours_vs_naive_by_concurrency": {c: ratio(agg("ours", c), agg("naive", c)) for c in concurrency},
    }


def print_table(results: dict[str, dict[int, dict[str, Any]]]) -> None:
    head = (f"{'system':<13}{'C':>3} {'agg tok/s':>10} {'stream tok/s':>13} {'TTFT p50':>9} {'TTFT p95':>9} "
            f"{'ITL p95':>9} {'tok/chunk':>9} {'tokens':>7} {'ok':>6}")
    print(head)
    print("-" * len(head))
    for system, levels in results.items():
        for c, m in sorted(levels.items()):
            print(f"{system:<13}{c:>3} {m['aggregate_tok_s']:>10.1f} {m['per_stream_tok_s_median']:>13.2f} "
                  f"{m['ttft_p50_s']:>8.2f}s {m['ttft_p95_s']:>8.2f}s {m['itl_p95_ms']:>7.0f}ms "
                  f"{m['tokens_per_chunk']:>9.2f} {m['tokens_total']:>7} {m['ok']:>3}/{m['streams']:<2}")
            if m.get("errors"):
                print(f"{'':16}errors: {m['errors']}")


def plot(results: dict[str, dict[int, dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, levels in results.items():
        cs = sorted(levels)
        ax1.plot(cs, [levels[c]["aggregate_tok_s"] for c in cs], marker="o", label=system)
        ax2.plot(cs, [levels[c]["ttft_p95_s"] for c in cs], marker="o", label=system)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({c for lv in results.values() for c in lv}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent streams")
        ax.grid(True, alpha=0.3)
    ax1.set_ylabel("aggregate tokens/s")
    ax1.set_title("aggregate throughput")
    ax2.set_ylabel("TTFT p95 (s)")
    ax2.set_yscale("log")
    ax2.set_title("time to first token, p95")
    ax1.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def wait_for_load(limit: float, max_wait: float) -> None:
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_wait:
        print(f"  load average {loadavg()} >= {limit}; waiting ...", flush=True)
        time.sleep(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,2,4,8,16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    ap.add_argument("--rounds", type=int, default=1, help="rounds per level (C > 1)")
    ap.add_argument("--rounds-single", type=int, default=3, help="rounds at C = 1 (cheap, and the base of two ratios)")
    ap.add_argument("--quick", action="store_true", help="C = 1,4, 16 tokens, one round: to check the plumbing")
    ap.add_argument("--model-dir", default=None,
                    help="plain HF copy of the model (default: load_model's converted copy)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weights of ours, raw and naive (chatstream 0.3.0 always loads float32)")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP_NUM_THREADS for every system (default: torch's own choice, one per core)")
    ap.add_argument("--out", default=str(RESULTS / "throughput.json"))
    ap.add_argument("--wait-for-load", type=float, default=0.0, help="wait until the 1-min load average is below this")
    ap.add_argument("--wait-max", type=float, default=600.0)
    args = ap.parse_args()
    if args.quick:
        args.concurrency, args.max_new_tokens, args.rounds, args.rounds_single = "1,4", 16, 1, 1
    args.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(ALL_SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {', '.join(ALL_SYSTEMS)}")
    notes: list[str] = []
    if "chatstream03" in systems and not CS03_PYTHON.exists():
        systems.remove("chatstream03")
        notes.append("chatstream03 skipped: run benchmarks/setup_chatstream03.sh to make its virtualenv")
        print(notes[-1])

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / "logs"
    log_dir.mkdir(exist_ok=True)
    if args.wait_for_load:
        wait_for_load(args.wait_for_load, args.wait_max)
    load_before = loadavg()
    model_dir = Path(args.model_dir) if args.model_dir else converted_model_dir()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def count_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False)) if text else 0

    procs: dict[str, Proc] = {}
    results: dict[str, dict[int, dict[str, Any]]] = {s: {} for s in systems}
    raw_records: dict[str, dict[int, list[list[dict[str, Any]]]]] = {s: {} for s in systems}
    failed: set[str] = set()
    t_start = time.time()
    try:
        print(f"starting {', '.join(systems)} (model {model_dir.name}, {args.max_new_tokens} new tokens) ...",
              flush=True)
        for s in systems:  # start all first (loading overlaps), then wait for each
            procs[s] = start_system(s, args, model_dir, log_dir)
        for s in systems:
            procs[s].wait_ready()
        for s in systems:  # warm-up, not measured (after every model has loaded)
            run_level(procs[s], s, PROMPTS[:2], 8 if s == "raw" else args.max_new_tokens)
        load_measure = loadavg()
        print(f"load average before: {load_before} (after startup {load_measure})", flush=True)
        for c in args.concurrency:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(c)]
            n_rounds = args.rounds_single if c == 1 else args.rounds
            per_round: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
            for _ in range(n_rounds):
                for s in systems:  # interleaved: noise hits every system alike
                    if s in failed:
                        continue
                    try:
                        records = run_level(procs[s], s, prompts, args.max_new_tokens)
                    except (TimeoutError, RuntimeError) as exc:  # a system that died or hung: drop it
                        failed.add(s)
                        notes.append(f"{s} failed at C={c}: {exc}")
                        print(notes[-1], flush=True)
                        continue
                    raw_records[s].setdefault(c, []).append(records)
                    per_round[s].append(level_metrics(records, count_tokens))
            for s in systems:
                if not per_round[s]:
                    continue
                results[s][c] = combine_rounds(per_round[s])
                m = results[s][c]
                print(f"  C={c:<3} {s:<13} agg {m['aggregate_tok_s']:7.1f} tok/s  TTFT p95 {m['ttft_p95_s']:6.2f}s"
                      f"  ITL p95 {m['itl_p95_ms']:6.0f}ms  ok {m['ok']}/{m['streams']}", flush=True)
    finally:
        for p in procs.values():
            p.stop()
    load_after = loadavg()

    rat = ratios(results, args.concurrency)
    report = {
        "benchmark": "throughput", "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_start)),
        "duration_s": round(time.time() - t_start, 1), **machine(),
        "loadavg_before": load_before, "loadavg_after": load_after,
        "model_dir": str(model_dir), "dtype": args.dtype, "sampling": "greedy",
        "omp_num_threads": args.threads or None,
        "max_new_tokens": args.max_new_tokens, "concurrency": args.concurrency, "systems": systems,
        "prompts": PROMPTS, "token_counting": "final reply text re-tokenized (add_special_tokens=False)",
        "notes": notes, "ratios": rat,
        "results": {s: {str(c): m for c, m in lv.items()} for s, lv in results.items()},
        "records": {s: {str(c): rs for c, rs in lv.items()} for s, lv in raw_records.items()},
    }
    out.write_text(json.dumps(report, indent=1))
    png = out.with_suffix(".png")
    title = (f"SmolLM2-135M fp32 greedy, {args.max_new_tokens} new tokens, {os.cpu_count()} CPUs; "
             f"load average before {load_before[0]}, after {load_after[0]}")
    plot(results, png, title)

    print()
    print_table(results)
    print()
    for key in ("ours_top_vs_ours_single", "ours_top_vs_chatstream03_top", "ours_single_vs_raw_single"):
        r = rat[key]
        shown = "n/a" if r["value"] is None else f"{r['value']:.2f}x"
        print(f"{r['what']:<62} {shown:>8}   (issue target {r['target']})")
    print(f"ours / raw by concurrency:   {rat['ours_vs_raw_by_concurrency']}")
    print(f"ours / naive by concurrency: {rat['ours_vs_naive_by_concurrency']}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
