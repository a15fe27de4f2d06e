"""Every Python snippet in the README runs as a newcomer runs it: each pasted whole into one cell of a
fresh notebook, in order, on the real model (nbclient + this virtualenv's kernel). A snippet followed
by a ``text`` block (``prints:``) must print exactly that, where a number with decimals stands for
any number with as many decimals (a measured speed) and ``…`` for any text; integers are literal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
WIDGET = "application/vnd.jupyter.widget-view+json"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
_BETWEEN = re.compile(r"\s*(?:[^\n`]*:\s*)?")  # nothing, or one short line ending in ":" ("prints:")


def readme_snippets(text: str) -> list[tuple[str, str | None]]:
    """Each ``python`` block with the ``text`` block that follows it as its output (or None)."""
    blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in _FENCE.finditer(text)]
    snippets = []
    for i, (lang, body, _start, end) in enumerate(blocks):
        if lang != "python":
            continue
        output = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text" and \
                _BETWEEN.fullmatch(text[end:blocks[i + 1][2]]):
            output = blocks[i + 1][1]
        snippets.append((body, output))
    return snippets


def output_pattern(expected: str) -> re.Pattern[str]:
    """``expected`` as a regex: ``12.3`` matches any number with one decimal, ``…`` any text."""
    parts = re.split(r"(\d+\.\d+|…)", expected.rstrip("\n"))
    regex = "".join(
        ".*?" if part == "…" else
        rf"\d+\.\d{{{len(part.split('.')[1])}}}" if re.fullmatch(r"\d+\.\d+", part) else re.escape(part)
        for part in parts)
    return re.compile(regex + r"\n?", re.S)


def test_output_patterns():
    assert output_pattern("stop · 8 tokens · 52.3 tok/s\n").fullmatch("stop · 8 tokens · 40.6 tok/s\n")
    assert not output_pattern("stop · 8 tokens · 52.3 tok/s").fullmatch("stop · 8 tokens · 40.64440897542118 tok/s")
    assert not output_pattern("stop · 8 tokens").fullmatch("stop · 9 tokens")  # integers are literal
    assert output_pattern("http://127.0.0.1:… True").fullmatch("http://127.0.0.1:35123 True\n")
    assert not output_pattern("Paris.").fullmatch("Paris.Paris.")


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_snippets_say_what_they_print() -> None:
    snippets = readme_snippets(README.read_text(encoding="utf-8"))
    assert len(snippets) >= 8
    assert sum(output is not None for _code, output in snippets) >= 4


def _visible(cell) -> tuple[str, str, set[str]]:
    """(stdout + text/plain results, stderr, mime types) of a run cell."""
    out, err, mimes = [], [], set()
    for o in cell.outputs:
        if o.output_type == "stream":
            (out if o.name == "stdout" else err).append(o.text)
        elif o.output_type == "error":
            err.append("\n".join(o.traceback))
        else:
            mimes |= set(o.get("data", {}))
            if o.output_type == "execute_result" and "text/plain" in o.data and WIDGET not in o.data:
                out.append(o.data["text/plain"] + "\n")
    return "".join(out), "".join(err), mimes


@pytest.mark.real_model
@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_readme_snippets_run_one_per_cell_and_print_what_the_readme_says(tmp_path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    snippets = readme_snippets(README.read_text(encoding="utf-8"))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code, _output in snippets])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    for cell, (code, expected) in zip(nb.cells, snippets):
        out, err, mimes = _visible(cell)
        where = f"README snippet starting {code.splitlines()[0]!r}"
        assert "Traceback" not in err and "Error" not in err, f"{where} failed:\n{err[-3000:]}"
        if expected is not None:
            assert output_pattern(expected).fullmatch(out), f"{where} printed\n{out}\nthe README says\n{expected}"
        if "lab.preview(" in code:  # the notebook workflow: its widgets show when pasted as one cell
            assert sum(o.get("data", {}).get(WIDGET) is not None for o in cell.outputs) >= 2, where
            assert WIDGET in mimes
