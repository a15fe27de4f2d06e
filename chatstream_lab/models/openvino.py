"""Stage 0 for the OpenVINO backend: an OpenVINO IR of a model, exported once and cached.

OpenVINO GenAI runs an IR (``openvino_model.xml/.bin``), not HF weights. The IR is produced by
``optimum-cli export openvino`` from optimum-intel, which pins an older ``transformers`` than the
project runs, so it lives in its own virtualenv under the cache directory (the *exporter*,
installed once by :func:`install_exporter`, ~2 min) and is called as a subprocess. The IR is
written to ``<cache>/openvino/<source key>-<weights>/`` atomically; later loads read it (~1 s).

Which weights and compute precision a model runs in (:class:`~.precision.Precision`) is chosen
per machine by :mod:`.calibrate` (fastest that passes the correctness gate), or by the user
(``load_model(dtype="int8/f32")``); :class:`OpenVINOModel` carries it to the engine, whose compile
properties it sets (``INFERENCE_PRECISION_HINT``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .precision import Precision, Weights

log = logging.getLogger(__name__)

EXPORTER_ENV = "CHATSTREAM_LAB_OV_EXPORTER"  # python of an environment with optimum-intel
OPENVINO_VERSION = "2026.4.1"
# What the exporter environment gets: optimum-intel with the transformers it supports, the CPU
# torch build this project pins (no multi-GB CUDA wheel), the OpenVINO the runtime uses.
EXPORTER_REQUIREMENTS = (
    "torch==2.13.0", "optimum-intel==2.2.0", "transformers>=4.45,<5.6", "nncf>=3.0",
    f"openvino=={OPENVINO_VERSION}", f"openvino-tokenizers=={OPENVINO_VERSION}.0",
)
EXPORT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class OpenVINOModel:
    """What ``LoadedModel.model`` holds on the OpenVINO backend: where the IR is and how to run it.

    The pipeline itself is built by the engine, on its own thread (OpenVINO objects are owned by
    the thread that steps them); this value only names the files.
    """

    ir_dir: Path
    precision: Precision
    properties: tuple[tuple[str, str], ...] = field(default=())
    is_scripted: bool = False

    @property
    def weights(self) -> Weights:
        return self.precision.weights

    def compile_properties(self, threads: int | None = None) -> dict[str, Any]:
        """Properties for ``ContinuousBatchingPipeline``: threads, no CPU pinning, a blob cache, the
        compute precision.

        ``ENABLE_CPU_PINNING=NO``: with pinning, OpenVINO pins the threads it runs on, which
        then slows a torch model in the same process ~30x (measured); the compiled-blob cache
        makes a second load of the same IR ~2x faster.
        """
        props: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1,
                                 "ENABLE_CPU_PINNING": "NO",
                                 "CACHE_DIR": str(self.ir_dir / ".ov-cache")}
        props.update(self.precision.compile_properties)
        props.update(dict(self.properties))
        return props


def runtime_available() -> bool:
    """The OpenVINO GenAI runtime is importable (``pip install "chatstream-lab[openvino]"``)."""
    return importlib.util.find_spec("openvino_genai") is not None


def default_exporter_dir(cache_dir: Path) -> Path:
    return cache_dir / "openvino-exporter"


def exporter_python(cache_dir: Path) -> Path | None:
    """The exporter's python: ``$CHATSTREAM_LAB_OV_EXPORTER`` or the cached venv; None if absent."""
    env = os.environ.get(EXPORTER_ENV)
    if env:
        return Path(env)
    py = default_exporter_dir(cache_dir) / "bin" / "python"
    return py if (py.parent / "optimum-cli").is_file() and (py.parent / ".complete").is_file() else None


def install_exporter(cache_dir: Path, *, progress: bool = True) -> Path:
    """Create the exporter virtualenv (optimum-intel + CPU torch) once; returns its python.

    Takes ~2-3 min and ~1.5 GB (most of it torch); needs the package index. Written to a temporary
    folder and renamed, so an interrupted install leaves nothing half-made.
    """
    target = default_exporter_dir(cache_dir)
    if (target / "bin" / ".complete").is_file():
        return target / "bin" / "python"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    steps = [[_base_python(), "-m", "venv", str(tmp)],
             [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"],
             [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *EXPORTER_REQUIREMENTS],
             # optimum-intel pulls torchvision, whose PyPI build does not match CPU torch (import
             # fails with "operator torchvision::nms does not exist"); the export never needs it
             [str(tmp / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "torchvision"]]
    try:
        with _spinner("Installing the OpenVINO exporter (once, ~2-3 min)", progress):
            for cmd in steps:
                _run(cmd, "installing the OpenVINO exporter failed")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # venv scripts hard-code their folder in their shebang, so the exporter is run with python -m
    (target / "bin" / ".complete").write_text("ok\n")
    return target / "bin" / "python"


def ir_dir_for(source_key: str, weights: Weights, cache_dir: Path) -> Path:
    return cache_dir / "openvino" / f"{source_key}-{weights.value}"


def source_key(hf_dir: Path) -> str:
    """A cache key for an HF directory: its name plus a hash of its path, config and weight sizes."""
    parts = [str(hf_dir.resolve())]
    for f in sorted(hf_dir.glob("*")):
        if f.suffix in (".json", ".safetensors", ".bin"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return f"{hf_dir.name}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:12]}"


def export_ir(hf_dir: Path, weights: Weights, target: Path, *, cache_dir: Path, progress: bool = True,
              install: bool = True, label: str | None = None) -> Path:
    """The IR of ``hf_dir`` in ``weights`` at ``target`` (exported now if not cached).

    Raises:
        ModelLoadError: no exporter and ``install`` is false, or optimum-cli failed (its tail
            is in the message, e.g. an architecture optimum-intel cannot export).
    """
    if (target / "openvino_model.xml").is_file():
        return target
    py = exporter_python(cache_dir)
    if py is None:
        if not install:
            raise ModelLoadError("the OpenVINO exporter is not installed; run "
                                 "`python -m chatstream_lab.models.openvino --install` "
                                 f"(or set ${EXPORTER_ENV} to a python with optimum-intel)")
        py = install_exporter(cache_dir, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".ov-export-", dir=target.parent))
    try:
        out = work / "ir"
        cmd = [str(py), "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model",
               str(hf_dir), "--task", "text-generation-with-past", *weights.export_args, str(out)]
        with _spinner(f"Exporting {label or hf_dir.name} to OpenVINO ({weights}, once, ~1-2 min)", progress):
            _run(cmd, f"exporting {hf_dir} to OpenVINO failed", clean_env=True)
        if not (out / "openvino_model.xml").is_file():
            raise ModelLoadError(f"optimum-cli wrote no openvino_model.xml for {hf_dir}")
        with contextlib.suppress(OSError):
            out.rename(target)  # a concurrent export may have won the rename: theirs is as good
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _base_python() -> str:
    """The interpreter to make a venv from (the base one when running inside a venv)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _run(cmd: list[str], what: str, *, clean_env: bool = False) -> None:
    env = None
    if clean_env:  # the exporter must not see this environment's packages
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelLoadError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise ModelLoadError(f"{what} ({' '.join(cmd[:6])} ...):\n{tail}")


@contextlib.contextmanager
def _spinner(desc: str, enabled: bool) -> Any:
    """A tqdm bar that ticks elapsed seconds while a subprocess runs (no total is known)."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    done = threading.Event()
    bar = tqdm(desc=desc, unit="s", bar_format="{desc}: {elapsed}")

    def tick() -> None:
        while not done.wait(1.0):
            bar.update(1)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    t0 = time.monotonic()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        bar.set_description(f"{desc.split(' (')[0]}: done in {time.monotonic() - t0:.0f} s")
        bar.close()


def _main(argv: list[str] | None = None) -> int:
    """``python -m chatstream_lab.models.openvino [--install] [--calibrate-bundled [--precision auto]]
    [--export-bundled DTYPE ...]`` (the setup steps of ``make demo`` / ``make test``)."""
    import argparse

    from .loader import default_cache_dir, load_model

    ap = argparse.ArgumentParser(description=_main.__doc__)
    ap.add_argument("--install", action="store_true", help="create the exporter venv (cached)")
    ap.add_argument("--calibrate-bundled", action="store_true",
                    help="choose the bundled model's precision for this CPU (exports the candidates; cached)")
    ap.add_argument("--precision", choices=("auto",), default=None,
                    help="with --calibrate-bundled: measure again even if a choice is cached")
    ap.add_argument("--export-bundled", nargs="*", default=None, metavar="DTYPE",
                    help="also export the bundled model in these dtypes (e.g. float32)")
    args = ap.parse_args(argv)
    cache = default_cache_dir()
    if args.install:
        print(install_exporter(cache))
    if args.calibrate_bundled:
        lm = load_model(None, backend="openvino", precision=args.precision)
        print(lm.precision.label if lm.precision is not None else lm.dtype)
    for dtype in args.export_bundled or ():
        lm = load_model(None, backend="openvino", dtype=dtype)
        print(lm.model.ir_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
