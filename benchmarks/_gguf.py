"""An F16 GGUF of the bundled model's weights, for llama-server beside our OpenVINO precisions.

The converted HF copy in the cache (the bundled Q4_1 GGUF dequantized to fp32 by the first
``load_model()``) is converted back with llama.cpp's own ``convert_hf_to_gguf.py``, taken from the
``llama-cpp-python`` sdist that ``scripts/build_llama_server.sh`` downloads and keeps (``--sdist``).
Needs ``sentencepiece`` (the converter tries a SentencePiece vocabulary first). Cached as
``<cache>/gguf/<converted dir>-F16.gguf`` (~270 MB, ~20 s once).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build_llama_server.sh"
NEEDED = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/")


def f16_gguf(hf_dir: Path, cache_dir: Path) -> Path:
    """The F16 GGUF of ``hf_dir`` (converted once, then cached)."""
    out = cache_dir / "gguf" / f"{hf_dir.name}-F16.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    sdist = Path(subprocess.run(["bash", str(BUILD_SCRIPT), "--sdist"], capture_output=True, text=True,
                                check=True).stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if any(n in m.name for n in NEEDED)]
            tar.extractall(tmp, members=members, filter="data")
        converter = next(Path(tmp).glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))
        partial = Path(tmp) / out.name
        env = {**os.environ, "PYTHONPATH": str(converter.parent / "gguf-py")}
        proc = subprocess.run([sys.executable, str(converter), str(hf_dir), "--outtype", "f16", "--outfile",
                               str(partial)], env=env, cwd=converter.parent, capture_output=True, text=True)
        if proc.returncode != 0:
            hint = " (pip install sentencepiece)" if "sentencepiece" in proc.stderr else ""
            raise RuntimeError(f"convert_hf_to_gguf.py failed{hint}:\n{proc.stderr[-2000:]}")
        os.replace(partial, out)
    return out
