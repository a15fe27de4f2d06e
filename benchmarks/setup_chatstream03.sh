#!/usr/bin/env bash
# Make benchmarks/.venv-chatstream03: the predecessor, chatstream==0.3.0 from PyPI, for throughput.py.
# Its own virtualenv, so nothing of it (fastsession, tokflow, its pins) reaches the project's.
# torch==2.13.0 takes the CPU build from this machine's wheel cache; a plain `torch` may pull CUDA.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-chatstream03"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0
# chatstream 0.3.0 declares few of its runtime imports: list them explicitly
"$venv/bin/pip" install -q chatstream==0.3.0 fastsession tokflow loadtime psutil uvicorn fastapi \
    transformers gguf accelerate
"$venv/bin/python" -c "import chatstream, torch, transformers; print('chatstream', chatstream.__name__, \
'torch', torch.__version__, 'transformers', transformers.__version__)"
