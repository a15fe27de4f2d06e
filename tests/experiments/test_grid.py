"""``lab.grid`` on the scripted model: the rows, the public names, checks, re-use by key, saving,
Stop, and the admission gate (never overflowed, HTTP clients keep their share)."""

from __future__ import annotations

import math
import threading
import time

import pytest

import chatstream_lab as csl
from chatstream_lab.experiments import CheckError, RowOrigin, RowStatus

QUESTIONS = ["What is the capital of France?", "Name a red fruit.", "What is 2 + 2?"]


def _secret_reply(prompt: str) -> str:
    """Knows the password only when the system prompt (in the rendered prompt) told it."""
    return "The password is ZEBRA." if "ZEBRA" in prompt else "I do not know the password."


def test_rows_columns_and_the_public_names(make_lab):
    lab = make_lab()
    result = lab.grid(QUESTIONS, variants={"own": None, "chatml": "chatml"}, seeds=2,
                      checks=[csl.checks.contains("Paris"), csl.checks.max_length(10)])
    assert isinstance(result, csl.GridResult)
    assert result.wait(60) is result and result.done
    df = result.to_pandas()
    assert len(df) == len(QUESTIONS) * 2 * 2  # inputs x variants x seeds
    for column in ("model", "variant", "input", "seed", "output", "completion_tokens", "ttft_s", "latency_s",
                   "contains('Paris')", "max_length(10)", "config_id", "model_fingerprint", "backend",
                   "sampling", "versions"):
        assert column in df.columns, column
    assert set(df["variant"]) == {"own", "chatml"} and set(df["seed"]) == {0, 1}
    assert df["contains('Paris')"].all() and not df["max_length(10)"].any()
    assert (df["completion_tokens"] > 0).all() and (df["latency_s"] > 0).all()
    assert df["versions"].iloc[0]["chatstream_lab"] == csl.__version__
    # greedy: the seed does not change the output, so each (variant, input) was generated once
    assert result.generated == len(QUESTIONS) * 2 and result.reused == 0
    assert sum(r.origin is RowOrigin.SAME_KEY for r in result.rows) == len(QUESTIONS) * 2
    assert len(df["config_id"].unique()) == 2


def test_a_variant_that_drops_the_system_prompt_is_reported_significantly_worse(make_lab):
    lab = make_lab(_secret_reply, system_prompt="The secret password is ZEBRA.")
    inputs = [f"What is the password? (try {i})" for i in range(8)]
    result = lab.grid(inputs, variants={"with system prompt": None, "dropped": {"system_prompt": ""}},
                      checks=[csl.checks.contains("ZEBRA")]).wait(60)
    c = result.compare("dropped", "with system prompt")
    assert c.p_value == pytest.approx(2 / 2**8) and c.significant() and c.better == "with system prompt"
    assert c.effect == pytest.approx(-1.0)
    summary = result.summary()
    assert "dropped is worse than with system prompt on 8/8 inputs" in str(summary)
    assert "McNemar" in str(summary)
    assert summary.table[0].metrics[0].interval.estimate == 1.0
    fig = result.plot()
    assert fig.axes and fig.axes[0].get_title() == "contains('ZEBRA')"
    assert fig._repr_png_().startswith(b"\x89PNG")  # a notebook shows it without pyplot


def test_checks_that_fail_say_why_and_user_callables_name_their_column(make_lab):
    lab = make_lab()

    def words(output, row):
        return float(len(output.split()))

    def broken(output, row):
        raise RuntimeError("no such thing")

    result = lab.grid(["Hi", {"input": "Capital of France?", "reference": "Paris", "topic": "geo"}],
                      checks=[words, broken, csl.checks.contains()]).wait(60)
    df = result.to_pandas()
    assert list(df["words"]) == [6.0, 6.0]
    assert df["broken"].isna().all() and df["broken_error"].str.contains("no such thing").all()
    assert df["contains_reference"].iloc[1] == True  # noqa: E712 (a numpy bool)
    assert "compares with the input's reference" in df["contains_reference_error"].iloc[0]
    assert df["topic"].iloc[1] == "geo"  # metadata becomes columns
    assert isinstance(result.rows[0].checks["broken"], CheckError)


def test_reference_scores_and_a_clear_reason_where_the_engine_cannot_score(make_lab):
    lab = make_lab()
    result = lab.grid([{"input": "Capital of France?", "reference": "Paris."}]).wait(60)
    score = result.rows[0].reference_logprob
    assert isinstance(score, float) and score < 0  # the scripted model scores too (teacher-forced)
    remote = csl.remote_model("http://127.0.0.1:9", tokenizer=lab.model, name="nowhere")
    from chatstream_lab.experiments.capabilities import why_not_scored

    assert "remote engine reports no log-probabilities" in why_not_scored(remote)


def test_rerun_reuses_every_greedy_row_and_a_changed_configuration_regenerates(make_lab, tmp_path):
    lab = make_lab()
    spec = dict(variants={"own": None, "chatml": "chatml"}, seeds=2, checks=[csl.checks.contains("Paris")])
    first = lab.grid(QUESTIONS, **spec).wait(60)
    path = first.to_jsonl(tmp_path / "grid.jsonl")
    again = lab.grid(QUESTIONS, **spec).wait(60)  # this Lab remembers its rows
    assert again.reused == len(again) and again.generated == 0
    # a fresh Lab re-uses the saved file
    other = make_lab()
    saved = csl.GridResult.load(path)
    rerun = other.grid(QUESTIONS, reuse=path, **spec).wait(60)
    assert rerun.reused == len(rerun) == len(saved) and rerun.generated == 0
    assert [r.output for r in rerun.rows] == [r.output for r in first.rows]
    assert first.diff(rerun).shared == len(QUESTIONS) * 2 and not first.diff(rerun).changed
    # a changed configuration (max_new_tokens) gets new keys: regenerated, none reused
    changed = other.grid(QUESTIONS, reuse=path, variants={"own": {"max_new_tokens": 5}, "chatml": "chatml"},
                         seeds=2).wait(60)
    assert changed.reused == len(QUESTIONS) * 2 and changed.generated == len(QUESTIONS)
    assert not lab.grid(QUESTIONS, reuse=False, **spec).wait(60).reused


def test_unseeded_sampled_rows_are_never_reused_and_seeded_ones_are(make_lab):
    lab = make_lab(temperature=0.7)
    first = lab.grid(QUESTIONS, seeds=None).wait(60)
    assert all(r.key is None for r in first.rows)
    assert lab.grid(QUESTIONS, seeds=None).wait(60).reused == 0
    seeded = lab.grid(QUESTIONS, seeds=[3, 4]).wait(60)
    assert seeded.generated == len(QUESTIONS) * 2  # a sampled row's seed is part of its key
    assert {r.sampling["seed"] for r in seeded.rows} == {3, 4}
    assert lab.grid(QUESTIONS, seeds=[3, 4]).wait(60).reused == len(QUESTIONS) * 2


def test_saved_grid_round_trip_and_winner_config(make_lab, tmp_path):
    lab = make_lab()
    result = lab.grid(QUESTIONS, variants={"own": None, "chatml": "chatml"},
                      checks=[csl.checks.regex(r"Paris")]).wait(60)
    loaded = csl.GridResult.load(result.to_jsonl(tmp_path / "g.jsonl"))
    assert loaded.done and len(loaded) == len(result)
    assert loaded.to_records() == result.to_records()
    assert loaded.config("chatml").config_id == result.config("chatml").config_id
    config = lab.configure(loaded.config("chatml"))
    assert config.config_id == result.config("chatml").config_id == lab.config.config_id
    assert lab.config.template_name == "chatml"


def test_stop_cancels_what_runs_and_submits_nothing_more(make_lab):
    lab = make_lab("word " * 200, token_delay=0.01, max_new_tokens=400, num_of_concurrent_executions=2)
    result = lab.grid([f"q{i}" for i in range(10)])
    deadline = time.monotonic() + 20
    while not any(r.status is RowStatus.RUNNING for r in result.rows) and time.monotonic() < deadline:
        time.sleep(0.01)
    result.stop()
    result.wait(30)
    counts = result.counts()
    assert counts["cancelled"] == 10 - counts["done"] and counts["cancelled"] >= 8
    assert lab.service.gate.snapshot().running == 0  # no slot leaked


def test_the_grid_never_overflows_the_gate_and_http_clients_get_a_slot(make_lab):
    import httpx

    lab = make_lab("word " * 30, token_delay=0.005, num_of_concurrent_executions=3, max_queue_size=1)
    ep = lab.serve()
    peak = {"running": 0, "waiting": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            snap = lab.service.gate.snapshot()
            peak["running"] = max(peak["running"], snap.running)
            peak["waiting"] = max(peak["waiting"], snap.waiting)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = lab.grid([f"question {i}" for i in range(12)])
    try:
        r = httpx.post(ep.url + "/v1/chat/completions", timeout=30,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        assert r.status_code == 200  # a slot was kept for the endpoint's clients
        result.wait(60)
    finally:
        stop.set()
        watcher.join()
    assert result.counts()["done"] == 12
    assert lab.service.gate.snapshot().rejected_total == 0  # nobody was refused, the grid neither
    assert peak["running"] <= 3


def test_bad_arguments_fail_at_once_with_the_name(make_lab):
    lab = make_lab()
    for kwargs, name in (({"inputs": "just a string"}, "inputs"), ({"inputs": [], }, "inputs"),
                         ({"inputs": ["a"], "seeds": 0}, "seeds"), ({"inputs": ["a"], "variants": {}}, "variants"),
                         ({"inputs": ["a"], "variants": {"x": "no-such-preset"}}, "variants"),
                         ({"inputs": [{"reference": "x"}]}, "inputs"), ({"inputs": ["a"], "checks": ["x"]}, "checks")):
        with pytest.raises(csl.ConfigError) as info:
            lab.grid(**kwargs)
        assert info.value.name == name, kwargs


def test_judge_parses_a_verdict_and_says_why_when_there_is_none(make_lab):
    from chatstream_lab.experiments.judge import parse_verdict

    assert parse_verdict('Sure. {"verdict": "pass", "reason": "names Paris"}') is True
    assert parse_verdict("FAIL: it does not") is False
    with pytest.raises(ValueError):
        parse_verdict("maybe")
    judge_lab = make_lab('{"verdict": "fail", "reason": "not Paris"}')
    lab = make_lab()
    judge = csl.Judge(judge_lab, "names the capital city asked about", name="capital_ok")
    # the engine declares grammar support: the verdict is constrained to the schema, so even a model
    # that would babble answers with one; without the constraint its free text holds no verdict
    held = csl.Judge(make_lab("I cannot decide."), "names the capital", name="held")
    assert held.config.params.constraint is not None and judge.config.params.constraint is not None
    babbler = csl.Judge(make_lab("I cannot decide."), "names the capital", name="undecided")
    babbler.config = babbler.config.replace(constraint=None)
    result = lab.grid(QUESTIONS[:2], checks=[judge, babbler, held]).wait(60)
    df = result.to_pandas()
    assert list(df["capital_ok"]) == [False, False]
    assert df["undecided"].isna().all() and df["undecided_error"].str.contains("no verdict").all()
    assert df["held"].notna().all() and all('"verdict"' in reply for reply in held.replies)
    assert "Rubric: names the capital city asked about" in judge.messages("Paris", result.rows[0])[0]["content"]
    assert judge_lab.stats().completed == 2


def test_missing_pandas_names_the_extra(make_lab, monkeypatch):
    import sys

    lab = make_lab()
    result = lab.grid(["Hi"]).wait(60)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(csl.MissingExtra, match=r"chatstream_lab\[notebook\]"):
        result.to_pandas()
    assert result.to_records()[0]["output"]  # the rows are there without pandas


def test_show_opens_a_row_with_its_token_colours(make_lab):
    lab = make_lab()
    result = lab.grid(["Hi"]).wait(60)
    view = result.show(0)
    assert view.tokens_panel.colour.value and "csl-tok" in view.reply.value
    assert result.show(result.to_pandas().iloc[0]).reply.value == view.reply.value
    assert not math.isnan(result.rows[0].ttft_s)


def test_a_scorer_must_be_the_same_model_and_able_to_score(make_lab):
    from chatstream_lab.experiments.grid import _scorer_service
    from chatstream_lab.experiments.spec import ModelEntry
    from chatstream_lab.models import scripted_model

    lab = make_lab()
    remote = csl.remote_model("http://127.0.0.1:9", tokenizer=lab.model, name="scripted")
    with pytest.raises(csl.ConfigError, match="cannot score either"):
        _scorer_service(remote, ModelEntry("scripted", lab.model))
    with pytest.raises(csl.ConfigError, match="not the same model"):
        _scorer_service(scripted_model("x"), ModelEntry("remote", csl.remote_model("http://127.0.0.1:9", name="other")))
    service = _scorer_service(lab, ModelEntry("remote", remote))  # a Lab works too
    assert service.model is lab.model and service.limits.num_of_concurrent_executions == 1
    service.close()
