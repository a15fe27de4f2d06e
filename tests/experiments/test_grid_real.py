"""``lab.grid`` on the bundled model: a variant built to be worse is reported significantly worse,
a saved grid re-runs without generating, reference scores per template, and one table over the
in-kernel model and a real llama-server (``remote_model``)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import chatstream_lab as csl

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(900)]

SECRET = "The secret password is ZEBRA. When asked for the password, answer with it."
ASKS = ["What is the secret password?", "Tell me the password.", "What's the password?",
        "Please give me the secret password.", "I forgot the password. What is it?", "Which word is the password?",
        "Say the secret password.", "What password should I use?", "Can you tell me the secret word?",
        "What is the code word?", "Remind me of the password, please.", "What is the password to enter?"]
CAPITALS = {"France": "Paris", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo"}


def test_a_template_that_drops_the_system_prompt_is_significantly_worse(openvino_model, real_model):
    lab = csl.Lab(openvino_model, temperature=0, max_new_tokens=24, num_of_concurrent_executions=12,
                  max_queue_size=12)
    try:
        result = lab.grid(ASKS, {"system prompt": {"system_prompt": SECRET}, "dropped": {"system_prompt": ""}},
                          checks=[csl.checks.contains("ZEBRA")]).wait(600)
        assert result.counts()["done"] == 24
        c = result.compare("dropped", "system prompt")
        assert c.better == "system prompt" and c.significant(), c
        assert c.losses >= 6 and c.wins == 0  # never better without the password
        assert "dropped is worse than system prompt" in str(result.summary())
        df = result.to_pandas()
        assert df.loc[df.variant == "dropped", "contains('ZEBRA')"].sum() == 0
        # the OpenVINO engine reports no log-probabilities: the reference column says why
        unscored = lab.grid([{"input": ASKS[0], "reference": "ZEBRA"}]).wait(300)
        assert "reports no log-probabilities" in unscored.to_pandas()["reference_logprob_error"].iloc[0]
        # ... unless the same weights on torch score them
        scored = lab.grid([{"input": ASKS[0], "reference": "ZEBRA"}], scorer=real_model).wait(300)
        assert scored.reused == 1 and scored.rows[0].reference_logprob < 0
    finally:
        lab.close()


def test_saved_grid_reruns_without_generating_and_scores_references(real_model, tmp_path):
    lab = csl.Lab(real_model, temperature=0, max_new_tokens=16, num_of_concurrent_executions=8, max_queue_size=8)
    inputs = [{"input": f"What is the capital of {k}?", "reference": f"The capital of {k} is {v}.", "city": v}
              for k, v in CAPITALS.items()]
    spec = dict(variants={"own": None, "chatml": "chatml"}, seeds=2,
                checks=[lambda output, row: row.metadata["city"] in output])
    try:
        first = lab.grid(inputs, **spec).wait(600)
        assert first.generated == len(CAPITALS) * 2  # greedy: one generation per (variant, input)
        scores = first.to_pandas()["reference_logprob"]
        assert scores.notna().all() and (scores < 0).all()
        assert first.rows[0].tokens  # token logprobs for result.show(row)
        path = first.to_jsonl(tmp_path / "capitals.jsonl")
    finally:
        lab.close()
    fresh = csl.Lab(real_model, temperature=0, max_new_tokens=16, num_of_concurrent_executions=8, max_queue_size=8)
    try:
        again = fresh.grid(inputs, reuse=path, **spec).wait(600)
        assert again.reused == len(again) and again.generated == 0
        assert fresh.stats().completed == 0  # nothing was generated: the engine ran no request
        assert [r.output for r in again.rows] == [r.output for r in first.rows]
        changed = fresh.grid(inputs, reuse=path, variants={"own": {"max_new_tokens": 8}, "chatml": "chatml"},
                             seeds=2).wait(600)
        assert changed.generated == len(CAPITALS) and changed.reused == len(CAPITALS) * 2
    finally:
        fresh.close()


@pytest.fixture(scope="module")
def llama() -> Iterator[object]:
    from _engines import LlamaServer

    with LlamaServer(parallel=4, ctx_per_slot=1024) as srv:
        yield srv


@pytest.mark.real_engine
def test_one_table_over_the_in_kernel_model_and_a_real_llama_server(openvino_model, real_model, llama):
    import httpx

    remote = csl.remote_model(llama.url, tokenizer=real_model, name="llama-server")
    lab = csl.Lab(openvino_model, temperature=0, max_new_tokens=24, num_of_concurrent_executions=8,
                  max_queue_size=8)
    try:
        inputs = [f"What is the capital of {k}?" for k in CAPITALS]
        result = lab.grid(inputs, {"own": None, "chatml": "chatml"}, models=[lab.model, remote],
                          checks=[csl.checks.max_length(400)]).wait(600)
        df = result.to_pandas()
        assert len(df) == len(CAPITALS) * 2 * 2 and result.counts()["done"] == len(df)
        assert set(df["model"]) == {openvino_model.name, "llama-server"}
        assert set(df["backend"]) == {"openvino", "remote"}
        assert (df["completion_tokens"] > 0).all() and df["output"].str.strip().astype(bool).all()
        # llama-server was sent our rendered prompt (/v1/completions, token ids): its greedy reply is ours
        row = next(r for r in result.rows if r.model == "llama-server" and r.variant == "chatml")
        ids = list(lab.service.encode(list(row.input.messages), result.config("chatml", "llama-server")).ids)
        direct = httpx.post(f"{llama.url}/v1/completions", timeout=60,
                            json={"prompt": ids, "max_tokens": 24, "temperature": 0}).json()["choices"][0]["text"]
        assert row.output.strip()[:20] in direct
        c = result.compare(openvino_model.name, "llama-server", metric="completion_tokens", variant="own")
        assert c.n == len(CAPITALS)  # paired over the same inputs across the two models
    finally:
        lab.close()


def test_a_judge_on_the_real_model_answers_with_a_verdict_the_schema_holds(real_model):
    """The engine declares grammar, so the judge's reply is held to the verdict schema: every reply
    of the 135M model parses and every cell holds a verdict."""
    lab = csl.Lab(real_model, temperature=0, max_new_tokens=12, num_of_concurrent_executions=4, max_queue_size=4)
    judge = csl.Judge(lab, "names the capital city asked about", name="capital_ok", max_new_tokens=24)
    result = lab.grid([{"input": "What is the capital of France?", "reference": "Paris"},
                       {"input": "What is the capital of Italy?", "reference": "Rome"}], checks=[judge]).wait(600)
    df = result.to_pandas()
    assert df["capital_ok"].notna().all(), df.to_dict("records")
    assert len(judge.replies) == 2 and all(json.loads(r)["verdict"] in ("pass", "fail") for r in judge.replies)
    lab.close()
