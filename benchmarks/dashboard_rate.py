"""How often the notebook dashboard redraws while the endpoint is under load (issue 17: "about 1 Hz").

A Lab on the bundled model (OpenVINO by default) serves on loopback; ``ep.dashboard(interval=1.0)``
runs on this script's event loop (as it would on a kernel's) while ``ep.aload_test`` sends
``--requests`` greedy requests from ``--clients`` streaming clients. Prints the frames drawn, the
seconds the load test took, their ratio in Hz, the dashboard's mode and the load average before and
after. One run; no assertion (the redraw competes with the engine for the cores: on a busy 2-core
machine expect a frame every few seconds).

Usage::

    python benchmarks/dashboard_rate.py [--backend openvino|torch] [--clients 16] [--requests 96]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import chatstream_lab as csl


async def measure(backend: str, clients: int, requests: int, max_new_tokens: int) -> None:
    lab = csl.Lab(csl.load_model(backend=backend, progress=False), temperature=0, max_new_tokens=max_new_tokens)
    lab.generate("warm up", max_new_tokens=2)
    ep = lab.serve(port=0)
    try:
        dash = ep.dashboard(interval=1.0)
        before = os.getloadavg()
        dash.start()
        t0, f0 = time.perf_counter(), dash.frames
        result = await ep.aload_test(clients=clients, requests=requests, max_new_tokens=max_new_tokens,
                                     duration_limit=300)
        seconds, frames = time.perf_counter() - t0, dash.frames - f0
        print(f"{backend}: {clients} clients, {result.completed}/{requests} completed in {seconds:.1f} s; "
              f"dashboard ({dash.mode}) drew {frames} frames = {frames / seconds:.2f} Hz (target about 1)")
        print(f"load average before {before}, after {os.getloadavg()}")
    finally:
        ep.stop()
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="openvino", choices=("openvino", "torch"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(measure(args.backend, args.clients, args.requests, args.max_new_tokens))


if __name__ == "__main__":
    main()
