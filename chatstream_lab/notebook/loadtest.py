"""A bounded loopback load generator: N clients, a fixed number of requests, a hard time limit.

Each client posts streaming ``/v1/chat/completions`` requests to the endpoint (with usage in the
last chunk) one after another, measuring time to first token client-side. HTTP 429 counts as a
rejection (that client then waits 0.2 s before its next request). It only talks to loopback
addresses, and it cannot run unbounded: ``clients``,
``requests`` and ``duration_limit`` have hard caps, and when the time is up the requests still
open are cancelled (the server then cancels their generations).

From a notebook cell:

* ``ep.load_test(...)`` returns a :class:`LoadTest` at once; it runs on its own thread and loop,
  shows "running…" and then its results table in the cell; ``await test`` or ``test.result()``.
* ``await ep.aload_test(...)`` runs on the kernel's loop and returns the :class:`LoadTestResult`.
* ``ep.run_load_test(...)`` blocks the cell until done (the dashboard keeps updating).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import threading
import time
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..stats import percentile

MAX_CLIENTS = 64
MAX_REQUESTS = 2000
MAX_DURATION_S = 600.0
MAX_NEW_TOKENS = 1024
REJECT_BACKOFF_S = 0.2  # a client waits this long after a 429 before its next request
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class RequestResult:
    """One request as the client saw it."""

    status: int  # HTTP status (0: connection failed or cancelled at the time limit)
    ttft_s: float | None = None
    total_s: float = 0.0
    tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    started_s: float = 0.0  # since the test began

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.finish_reason is not None


@dataclass(frozen=True)
class LoadTestResult:
    """Results of a load test; ``summary()`` is the table, ``plot()`` a figure."""

    url: str
    clients: int
    requests: int
    wall_s: float
    timed_out: bool
    results: tuple[RequestResult, ...] = field(default=())

    @property
    def completed(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def rejected(self) -> int:
        return sum(r.status == 429 for r in self.results)

    @property
    def cut_off(self) -> int:
        """Requests still open when the time limit passed (cancelled)."""
        return sum(r.error == "cancelled at the time limit" for r in self.results)

    @property
    def errors(self) -> int:
        return len(self.results) - self.completed - self.rejected - self.cut_off

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)

    @property
    def throughput_tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def ttft(self, q: float) -> float | None:
        return percentile([r.ttft_s for r in self.results if r.ttft_s is not None], q)

    def summary(self) -> dict[str, Any]:
        return {"clients": self.clients, "requests sent": len(self.results), "completed": self.completed,
                "rejected (429)": self.rejected, "errors": self.errors,
                "cut off at the time limit": self.cut_off, "tokens": self.tokens,
                "wall time (s)": round(self.wall_s, 2),
                "throughput (tokens/s)": round(self.throughput_tokens_per_s, 1),
                "requests/s": round(len(self.results) / self.wall_s, 2) if self.wall_s > 0 else 0.0,
                "TTFT p50 (s)": _round(self.ttft(50)), "TTFT p95 (s)": _round(self.ttft(95)),
                "stopped at time limit": self.timed_out}

    def plot(self) -> Any:
        """A figure: TTFT of each request over time (rejections marked) and a TTFT histogram."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.2), dpi=90)
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2)
        ok = [r for r in self.results if r.ttft_s is not None]
        ax1.scatter([r.started_s for r in ok], [r.ttft_s for r in ok], s=12, label="TTFT")
        rej = [r.started_s for r in self.results if r.status == 429]
        if rej:
            ax1.scatter(rej, [0] * len(rej), marker="x", color="red", label="rejected (429)")
        ax1.set(xlabel="request start (s)", ylabel="TTFT (s)", title="time to first token")
        ax1.legend(fontsize=8)
        ax2.hist([r.ttft_s for r in ok] or [0], bins=20)
        ax2.set(xlabel="TTFT (s)", ylabel="requests",
                title=f"{self.throughput_tokens_per_s:.1f} tokens/s, {self.completed} completed")
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{escape(k)}</th>"
                       f"<td style='text-align:left'>{escape(str(v))}</td></tr>"
                       for k, v in self.summary().items())
        buf = io.BytesIO()
        self.plot().savefig(buf, format="png")
        img = base64.b64encode(buf.getvalue()).decode()
        return (f"<div><b>load test</b> against {escape(self.url)}<table>{rows}</table>"
                f"<img src='data:image/png;base64,{img}'/></div>")

    def __repr__(self) -> str:
        s = self.summary()
        return (f"<LoadTestResult {s['completed']}/{s['requests sent']} completed, {s['rejected (429)']} "
                f"rejected, {s['throughput (tokens/s)']} tok/s, TTFT p50 {s['TTFT p50 (s)']} s>")


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def check_args(url: str, clients: int, requests: int, max_new_tokens: int, duration_limit: float) -> None:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise ConfigError(f"load tests only run against loopback addresses ({sorted(LOOPBACK)}), not "
                          f"{host!r}", name="url")
    for name, value, hi in (("clients", clients, MAX_CLIENTS), ("requests", requests, MAX_REQUESTS),
                            ("max_new_tokens", max_new_tokens, MAX_NEW_TOKENS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
            raise ConfigError(f"{name} must be an integer in [1, {hi}], got {value!r}", name=name)
    if isinstance(duration_limit, bool) or not isinstance(duration_limit, (int, float)) or \
            not 0 < duration_limit <= MAX_DURATION_S:
        raise ConfigError(f"duration_limit must be in (0, {MAX_DURATION_S}] seconds, got {duration_limit!r}",
                          name="duration_limit")


async def _one(client: Any, url: str, body: dict[str, Any], t0: float) -> RequestResult:
    start = time.perf_counter()
    ttft = None
    tokens, reason = 0, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return RequestResult(resp.status_code, total_s=time.perf_counter() - start,
                                 error=resp.text[:200], started_s=start - t0)
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                return RequestResult(200, ttft, time.perf_counter() - start, tokens, "error",
                                     str(chunk["error"])[:200], start - t0)
            for choice in chunk.get("choices") or ():
                if (choice.get("delta") or {}).get("content") and ttft is None:
                    ttft = time.perf_counter() - start
                reason = choice.get("finish_reason") or reason
            if chunk.get("usage"):
                tokens = int(chunk["usage"].get("completion_tokens", 0))
    return RequestResult(200, ttft, time.perf_counter() - start, tokens, reason, None, start - t0)


async def run_load_test(url: str, *, clients: int = 8, requests: int = 32, max_new_tokens: int = 32,
                        duration_limit: float = 60.0, message: str = "Write one sentence about the sea.",
                        temperature: float = 0.0, token: str | None = None) -> LoadTestResult:
    """Run the load test on the current loop and return its results (see module doc)."""
    import httpx

    check_args(url, clients, requests, max_new_tokens, duration_limit)
    url = url.rstrip("/")
    body = {"messages": [{"role": "user", "content": message}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": max_new_tokens,
            "temperature": temperature}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    results: list[RequestResult] = []
    remaining = [requests]
    t0 = time.perf_counter()

    async def client_loop(client: Any) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter() - t0
            try:
                result = await _one(client, url, body, t0)
                results.append(result)
                if result.status == 429:  # back off a little, as a polite client would
                    await asyncio.sleep(REJECT_BACKOFF_S)
            except httpx.HTTPError as exc:
                results.append(RequestResult(0, error=f"{type(exc).__name__}: {exc}"[:200], started_s=started))
            except asyncio.CancelledError:
                results.append(RequestResult(0, total_s=time.perf_counter() - t0 - started,
                                             error="cancelled at the time limit", started_s=started))
                raise

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timed_out = False
    async with httpx.AsyncClient(timeout=httpx.Timeout(duration_limit), limits=limits, headers=headers,
                                 trust_env=False) as client:
        tasks = [asyncio.ensure_future(client_loop(client)) for _ in range(min(clients, requests))]
        done, pending = await asyncio.wait(tasks, timeout=duration_limit)
        if pending:
            timed_out = True
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()
    return LoadTestResult(url, clients, requests, time.perf_counter() - t0, timed_out, tuple(results))


class LoadTest:
    """A load test running on its own thread and loop; awaitable, and shown in its cell when done."""

    def __init__(self, url: str, **options: Any) -> None:
        check_args(url, options.get("clients", 8), options.get("requests", 32),
                   options.get("max_new_tokens", 32), options.get("duration_limit", 60.0))
        self.url = url
        self.future: concurrent.futures.Future[LoadTestResult] = concurrent.futures.Future()
        self._handle: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, args=(options,), name="chatstream-load-test",
                                        daemon=True)

    def start(self) -> LoadTest:
        from ._loop import running_loop

        self._loop = running_loop()
        self._thread.start()
        return self

    def _run(self, options: dict[str, Any]) -> None:
        try:
            result = asyncio.run(run_load_test(self.url, **options))
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)
        if self._loop is not None and self._handle is not None:  # show the result on the kernel loop
            try:
                self._loop.call_soon_threadsafe(self._show)
            except RuntimeError:
                pass

    def _show(self) -> None:
        """Replace "running…" in the cell with the outcome (on the kernel's thread).

        Called from the worker's callback *and* by whoever awaits the test: the kernel stamps an
        update with the parent of the code running it, and a headless runner (nbclient) keeps only
        those of the cell it is executing, so the awaiting cell's own update is the one that counts
        there; a live frontend applies either (the same content twice is harmless).
        """
        from IPython.display import HTML

        if self._handle is not None and self.future.done():
            self._handle.update(HTML(self._html()))

    def _html(self) -> str:
        if not self.future.done():
            return f"<small>load test against {escape(self.url)} running…</small>"
        exc = self.future.exception()
        if exc is not None:
            return f"<pre>load test failed: {escape(repr(exc))}</pre>"
        return self.future.result()._repr_html_()

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        self._handle = display(HTML(self._html()), display_id=True)
        if self.future.done():
            self._show()

    @property
    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> LoadTestResult:
        """Block until done (bounded by the test's own duration limit) and return the results."""
        try:
            result = self.future.result(timeout)
        finally:
            self._show()
        self._thread.join(5)
        return result

    def __await__(self) -> Any:
        return self._wait().__await__()

    async def _wait(self) -> LoadTestResult:
        # The display is updated before ``await test`` returns, in the awaiting cell (see _show).
        try:
            return await asyncio.wrap_future(self.future)
        finally:
            self._show()

    def __repr__(self) -> str:
        return f"<LoadTest {'done' if self.done else 'running'} against {self.url}>"
