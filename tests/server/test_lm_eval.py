"""EleutherAI's lm-evaluation-harness, the real one, against a served Lab (issue 20).

``lm_eval[api]`` runs in its own cached virtualenv (``scripts/setup_lm_eval.sh``, built by ``make
lm-eval`` before pytest) as a researcher runs it: ``lm_eval --model local-completions`` on a local
task directory (``tests/server/lm_eval_tasks``: 10 multiple-choice facts, 5 generation questions,
``dataset_path: json``), ``--batch_size 4``, the converted copy of the bundled model as its
tokenizer, nothing downloaded (HF offline flags, and a dead proxy for anything not on loopback).

What it must get right: every per-choice loglikelihood equals ``csl.score``'s within 1e-3,
including " Earth", a choice after which the model would stop (EOS): the harness scores a choice
as ``sum(token_logprobs[ctxlen:-1])``, trusting that the arrays hold the prompt and *every*
generated token; each generation equals our own greedy reply; and ``num_concurrent=16`` runs end
to end with the queue setting the README documents.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import chatstream_lab as csl
from chatstream_lab.models.loader import converted_dir
from chatstream_lab.prompts import DeclarativeTemplate

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"
TOL = 1e-3
# /v1/completions applies no template: the harness's prompt is the text itself. csl.score and
# csl.stream see the same ids through a template that renders the content as it is.
RAW = DeclarativeTemplate(name="raw", system="{content}", user="{content}", assistant="{content}",
                          generation_prefix="")
# The setting the README documents for a harness: num_concurrent x batch_size places at least.
NUM_CONCURRENT, BATCH_SIZE = 16, 4


@pytest.fixture(scope="module")
def harness_python() -> Path:
    """The harness's venv (instant when cached; ``make lm-eval`` builds it before the suite)."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup_lm_eval.sh")], capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def endpoint(real_model) -> Iterator[Any]:
    lab = csl.Lab(real_model, temperature=0, num_of_concurrent_executions=4,
                  max_queue_size=NUM_CONCURRENT * BATCH_SIZE)
    try:
        yield lab.serve(port=0)
    finally:
        lab.close()


def run_harness(python: Path, url: str, tasks: list[str], out: Path, *, num_concurrent: int) -> dict[str, list[Any]]:
    """``lm_eval`` as the README shows it; returns each task's logged samples, by ``doc_id``."""
    model_args = (f"base_url={url}/v1/completions,tokenizer={converted_dir()},tokenizer_backend=huggingface,"
                  f"num_concurrent={num_concurrent},max_retries=1")
    cmd = [str(python), "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
           "--tasks", ",".join(tasks), "--include_path", str(TASKS), "--batch_size", str(BATCH_SIZE),
           "--output_path", str(out), "--log_samples"]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(out / "hf"),
               # anything that still tried the network would fail on this dead proxy; loopback is direct
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1,localhost",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=TASKS, env=env, timeout=800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    samples = {}
    for task in tasks:
        files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
        assert files, f"no samples logged for {task}: {proc.stderr[-2000:]}"
        rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
        samples[task] = sorted(rows, key=lambda r: r["doc_id"])
    return samples


@pytest.fixture(scope="module")
def batched(harness_python, endpoint, tmp_path_factory) -> dict[str, list[Any]]:
    """Both tasks, ``--batch_size 4``, one request at a time (the harness's default)."""
    return run_harness(harness_python, endpoint.url, ["csl_facts_mc", "csl_facts_gen"],
                       tmp_path_factory.mktemp("lm_eval_b4"), num_concurrent=1)


def _loglikelihoods(sample: dict[str, Any]) -> list[float]:
    return [float(resp[0][0]) for resp in sample["resps"]]


def _context(doc: dict[str, Any]) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def test_the_harness_scores_and_generates_what_our_own_api_does(batched, endpoint, real_model):
    mc, gen = batched["csl_facts_mc"], batched["csl_facts_gen"]
    assert len(mc) == 10 and len(gen) == 5

    # " Earth" is a choice the model would end with its stop token: the generated token the
    # harness asks for (max_tokens 1) is EOS, which makes no text
    earth = httpx.post(endpoint.url + "/v1/completions", timeout=120, json={
        "prompt": _context(mc[0]["doc"]) + " Earth", "max_tokens": 1, "temperature": 0}).json()
    assert earth["choices"][0]["text"] == "" and earth["choices"][0]["finish_reason"] == "stop"
    assert earth["usage"]["completion_tokens"] == 1

    for sample in mc:
        doc = sample["doc"]
        ours = [csl.score(real_model, _context(doc), " " + choice, template=RAW).logprob for choice in doc["choices"]]
        theirs = _loglikelihoods(sample)
        assert all(abs(a - b) < TOL for a, b in zip(theirs, ours)), (doc["question"], theirs, ours)
    assert mc[0]["doc"]["choices"][0] == "Earth" and abs(_loglikelihoods(mc[0])[0] - -2.064) < TOL  # issue 20

    for sample in gen:
        ours = "".join(ev.text for ev in csl.stream(real_model, _context(sample["doc"]), template=RAW, temperature=0,
                                                    max_new_tokens=24, stop=["\n"]) if isinstance(ev, csl.Delta))
        assert sample["resps"][0][0] == ours, sample["doc"]["question"]
    assert sum(bool(s["resps"][0][0]) for s in gen) >= 3  # most answers are text, one ends at once (EOS)


def test_sixteen_concurrent_batches_run_end_to_end_with_the_documented_queue(harness_python, batched, endpoint,
                                                                             tmp_path):
    """num_concurrent=16 x batch_size 4 = 64 prompts at once: served with max_queue_size=64, none
    is refused, and the scores equal the one-request-at-a-time run's."""
    before = endpoint.stats().rejected
    many = run_harness(harness_python, endpoint.url, ["csl_facts_mc"], tmp_path / "c16",
                       num_concurrent=NUM_CONCURRENT)
    assert endpoint.stats().rejected == before
    for a, b in zip(batched["csl_facts_mc"], many["csl_facts_mc"]):
        assert all(abs(x - y) < TOL for x, y in zip(_loglikelihoods(a), _loglikelihoods(b)))
