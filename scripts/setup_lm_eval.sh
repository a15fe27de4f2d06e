#!/usr/bin/env bash
# Build (once) a separate venv with EleutherAI's lm-evaluation-harness (`lm_eval[api]`), for
# tests/server/test_lm_eval.py and for evaluating a served Lab from the command line.
# Idempotent: a second run only re-checks the venv and prints its python.
#
#   scripts/setup_lm_eval.sh            # prints the venv's python as the last line
#   PYTHON=python3.11 scripts/setup_lm_eval.sh
#
# Its own venv because the harness pulls datasets / evaluate / scikit-learn / sacrebleu and their
# pins, none of which the project needs. It needs no torch: the `local-completions` model sends
# HTTP requests and only tokenizes (transformers' AutoTokenizer on the converted copy of the bundled
# model, `tokenizer=<cache>/converted/<key>`). Nothing is downloaded at run time when the task is a
# local directory (`--include_path`, `dataset_path: json`) and HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# are set (see README "Evaluating with lm-evaluation-harness").
set -euo pipefail

LM_EVAL_VERSION=0.4.13
TRANSFORMERS_SPEC="transformers>=4.45"

CACHE="${CHATSTREAM_LAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chatstream_lab}"
VENV="${LM_EVAL_VENV:-$CACHE/lm-eval-venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.chatstream_lab-lm-eval-$LM_EVAL_VERSION"

check() {
    "$PY" - <<'EOF'
import importlib.metadata as md, sys
import aiohttp, tenacity, transformers  # noqa: F401  (the api extra + the tokenizer)
import lm_eval.models.openai_completions  # noqa: F401  (registers local-completions)
bad = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith(("torch", "nvidia-"))]
assert not bad, f"unwanted packages in the lm-eval venv: {bad}"
print(f"lm_eval {md.version('lm_eval')}, transformers {transformers.__version__}", file=sys.stderr)
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
"$PY" -m pip install --quiet "lm_eval[api]==$LM_EVAL_VERSION" "$TRANSFORMERS_SPEC"
check
touch "$STAMP"
echo "$PY"
