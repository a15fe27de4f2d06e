"""Compare and chat results export as rows in the grid's row shape (issue 17: "exporting compare
and chat results as data")."""

from __future__ import annotations

import pytest

from chatstream_lab.notebook.records import ROW_COLUMNS


async def test_compare_exports_one_row_per_variant_in_the_grid_shape(make_lab):
    lab = make_lab()
    view = lab.compare({"own": None, "chatml": "chatml"}, "What is the capital of France?", reference="Paris.")
    await view.wait()
    records = view.to_records()
    assert [r["variant"] for r in records] == ["own", "chatml"]
    for r in records:
        assert set(ROW_COLUMNS) <= set(r)
        assert r["output"] == "The capital of France is Paris." and r["input"] == "What is the capital of France?"
        assert r["model"] == "scripted" and r["completion_tokens"] > 0 and r["latency_s"] > 0
        assert isinstance(r["reference_logprob"], float)
    df = view.to_pandas()
    assert list(df.columns[: len(ROW_COLUMNS)]) == list(ROW_COLUMNS) and len(df) == 2
    grid = lab.grid(["What is the capital of France?"], variants={"own": None, "chatml": "chatml"}).wait(60)
    pd = pytest.importorskip("pandas")
    both = pd.concat([df, grid.to_pandas()], ignore_index=True)  # the same shape: one table
    assert list(both["output"]) == ["The capital of France is Paris."] * 4


async def test_chat_exports_one_row_per_reply(make_lab):
    lab = make_lab()
    chat = lab.chat()
    chat.send("Hello?")
    await chat.wait()
    chat.send("And again?")
    await chat.wait()
    records = chat.to_records()
    assert [(r["input"], r["turn"]) for r in records] == [("Hello?", 0), ("And again?", 1)]
    assert all(r["output"] == "The capital of France is Paris." and r["completion_tokens"] > 0 for r in records)
    df = chat.to_pandas()
    assert list(df.columns[: len(ROW_COLUMNS)]) == list(ROW_COLUMNS) and len(df) == 2
    chat.clear()
    assert chat.to_records() == [] and list(chat.to_pandas().columns) == list(ROW_COLUMNS)
