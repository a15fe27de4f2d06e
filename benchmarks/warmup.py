"""Engine builds never run on a caller's thread (issue 16, item 1): what a user sees, per backend.

1. ``health``: a fresh in-process server (a fresh Service; its startup starts the engine's build
   on the engine's thread) gets its first request at once, and ``/health`` is probed 20 times
   meanwhile: median and max latency, and what the probes said (target: median < 50 ms).
2. ``serve``: ``chatstream-lab serve`` in its own process (what a user runs): seconds until it
   prints its URL (it warms the engine first), then the first request after the URL, the second
   and a third (non-streamed, same length, other last words): first / second (target <= 1.2).
3. ``notebook``: a fresh ``Lab()`` + ``lab.preview(...)`` in a real kernel (nbclient): how long
   ``Lab()`` takes (it loads the model) and how long ``preview()`` blocks the cell (target < 0.2 s).

Backends: ``torch``, ``openvino``, ``remote`` (a loopback upstream that waits 0.3 s before every
answer). One run, with the load average; no timing assertion.

Usage::

    python benchmarks/warmup.py [--backends torch,openvino,remote] [--parts health,serve,notebook]

Writes ``benchmarks/results/warmup.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import ServeProcess, loadavg, median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "tests"))  # _engines.DelayedUpstream, notebook.test_warmup_kernel.CELLS

from _engines import DelayedUpstream, free_port  # noqa: E402

PARIS = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}
# serve: three requests of the same length that differ in their last words (an identical second
# request would find its whole prompt in the prefix caches, which says nothing about the build)
COUNTRIES = ("France", "Spain", "Italy")
UPSTREAM_DELAY_S = 0.3


def _model(backend: str, upstream: str | None) -> Any:
    from chatstream_lab.models import load_model, remote_model

    if backend == "remote":
        from chatstream_lab.models import ByteTokenizer

        return remote_model(upstream, tokenizer=ByteTokenizer())
    return load_model(backend=backend, progress=False)


def health_during_first_request(backend: str, upstream: str | None) -> dict[str, Any]:
    """Part 1: /health latencies while a fresh server's first request builds the engine."""
    from chatstream_lab.server import BackgroundServer, create_app
    from chatstream_lab.service import Service

    model = _model(backend, upstream)
    service = Service.build(model, template="chatml" if backend == "remote" else None)
    server = BackgroundServer(create_app(service, close_on_shutdown=True), port=0).start(timeout=30)
    try:
        replies: list[float] = []

        def first() -> None:
            t0 = time.perf_counter()
            httpx.post(server.url + "/v1/chat/completions", json=PARIS, timeout=300).raise_for_status()
            replies.append(time.perf_counter() - t0)

        thread = threading.Thread(target=first)
        thread.start()
        latencies, statuses = [], []
        with httpx.Client(base_url=server.url, timeout=30, trust_env=False) as client:
            for _ in range(20):
                t0 = time.perf_counter()
                statuses.append(client.get("/health").json()["status"])
                latencies.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.02)
        thread.join(300)
    finally:
        server.stop()
        service.close()
    return {"health_median_ms": round(median(latencies), 2), "health_max_ms": round(max(latencies), 2),
            "statuses": sorted(set(statuses)), "starting_probes": statuses.count("starting"),
            "first_request_s": round(replies[0], 3) if replies else None}


def serve_first_vs_second(backend: str, upstream: str | None) -> dict[str, Any]:
    """Part 2: ``chatstream-lab serve``: time to the URL, then the first and second request."""
    port = free_port()
    args = ["--upstream", upstream] if backend == "remote" else ["--backend", backend]
    log = RESULTS / f"warmup-serve-{backend}.log"
    t0 = time.perf_counter()
    proc = ServeProcess(args, port, log)
    try:
        while not re.search(r"Serving .* at http", log.read_text()):
            if proc.proc.poll() is not None:
                raise RuntimeError(f"serve exited; see {log}")
            time.sleep(0.05)
        url_s = time.perf_counter() - t0
        health = httpx.get(proc.url + "/health", timeout=10, trust_env=False).json()["status"]
        times = []
        for country in COUNTRIES:
            body = {**PARIS, "messages": [{"role": "user", "content": f"What is the capital of {country}?"}]}
            t1 = time.perf_counter()
            httpx.post(proc.url + "/v1/chat/completions", json=body, timeout=300, trust_env=False).raise_for_status()
            times.append(time.perf_counter() - t1)
    finally:
        proc.stop()
    return {"url_after_s": round(url_s, 2), "health_when_url_printed": health,
            "first_s": round(times[0], 3), "second_s": round(times[1], 3), "third_s": round(times[2], 3),
            "first_over_second": round(times[0] / times[1], 2)}


def notebook_preview() -> dict[str, Any]:
    """Part 3: a fresh ``Lab()`` + ``lab.preview()`` in a real kernel (the default backend)."""
    import nbclient
    import nbformat
    from notebook.test_warmup_kernel import CELLS

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in CELLS])
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    out = json.loads("".join(o.text for o in nb.cells[-1].outputs if o.output_type == "stream"))
    return {"backend": out["backend"], "lab_s": round(out["lab_s"], 2),
            "preview_ms": round(out["preview_s"] * 1000, 1), "engine_when_preview_returned": out["state"],
            "reply": out["text"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="torch,openvino,remote")
    ap.add_argument("--parts", default="health,serve,notebook")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    parts = args.parts.split(",")
    results: dict[str, Any] = {"loadavg_before": loadavg()}
    from chatstream_lab.server import BackgroundServer

    upstream = BackgroundServer(DelayedUpstream(UPSTREAM_DELAY_S), port=0).start(timeout=15)
    try:
        for backend in args.backends.split(","):
            url = upstream.url if backend == "remote" else None
            if "health" in parts:
                results[f"health/{backend}"] = health_during_first_request(backend, url)
                print(f"health/{backend}", results[f"health/{backend}"], flush=True)
            if "serve" in parts:
                results[f"serve/{backend}"] = serve_first_vs_second(backend, url)
                print(f"serve/{backend}", results[f"serve/{backend}"], flush=True)
    finally:
        upstream.stop()
    if "notebook" in parts:
        results["notebook"] = notebook_preview()
        print("notebook", results["notebook"], flush=True)
    results["loadavg_after"] = loadavg()
    print("load average before / after:", results["loadavg_before"], results["loadavg_after"])
    (RESULTS / "warmup.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
