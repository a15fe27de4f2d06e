"""The example notebooks run top to bottom on the real model (nbclient + the venv's kernel), and
their outputs show what they claim: replies with the right answer, a served URL that answered, a
dashboard figure that was drawn, a load-test table, a freed port. After *Run All* their Labs are
still open (what a researcher does next, a cell appended after the last one, still works), and the
last cell, explained above it, is the one that would close them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# The machines are shared and noisy: a notebook that takes ~20-40 s alone may take minutes under load.
pytestmark = [pytest.mark.notebook, pytest.mark.real_model, pytest.mark.timeout(900)]


AFTER_RUN_ALL = "# after Run All: the researcher's next cell\n"


def _run(name: str, *after: str):
    """Run notebook ``name``, then the ``after`` cells in the same kernel (a researcher's next cells)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    _check_the_last_cell_closes_nothing(nb)
    nb.cells += [nbformat.v4.new_code_cell(AFTER_RUN_ALL + code) for code in after]
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def _check_the_last_cell_closes_nothing(nb) -> None:
    """The Lab is closed by nobody but the last cell, commented out, under a "When you are done" text."""
    *body, explained, last = nb.cells
    assert explained.cell_type == "markdown" and "When you are done" in explained.source
    assert "lab.close()" in explained.source and "Run All" in explained.source
    assert last.cell_type == "code" and "lab.close()" in last.source
    assert all(line.lstrip().startswith("#") for line in last.source.splitlines() if line.strip())
    for cell in body:
        if cell.cell_type == "code":
            assert "lab.close()" not in cell.source, cell.source


def _after(nb, n: int = 0):
    """The ``n``-th cell appended after the notebook's own cells."""
    return [c for c in nb.cells if c.source.startswith(AFTER_RUN_ALL)][n]


def _cell(nb, needle: str):
    matches = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(matches) == 1, f"{len(matches)} cells contain {needle!r}"
    return matches[0]


def _text(cell) -> str:
    """Everything the cell printed or returned as text (stream text, text/plain and text/html)."""
    parts = []
    for out in cell.outputs:
        assert out.output_type != "error", out
        if out.output_type == "stream":
            parts.append(out.text)
        else:
            data = out.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/html", "")]
    return "".join(parts)


def _mimes(cell) -> set[str]:
    return {m for out in cell.outputs for m in out.get("data", {})}


def test_01_quickstart():
    nb = _run("01_quickstart.ipynb",
              "chat.send('Name a red fruit.')\nawait chat.wait()\nprint('chat after Run All:', chat.messages[-1])")
    assert "chatstream_lab.Lab" in _text(_cell(nb, "lab = csl.Lab("))  # the Lab's HTML repr
    inline = _text(_cell(nb, "csl.stream(lab.model"))
    assert "The capital of France is Paris." in inline and "[stop," in inline
    assert "application/vnd.jupyter.widget-view+json" in _mimes(_cell(nb, "preview = lab.preview("))
    streamed = _text(_cell(nb, "await preview.wait()"))
    assert "Paris" in streamed
    assert re.search(r"stop · \d+ tokens · TTFT \d+\.\d+ s · \d+\.\d tok/s", streamed)
    assert "Paris" in _text(_cell(nb, "await chat.wait()\nprint(chat.messages[-1]"))
    # the chat widget still answers after Run All (it was dead: the last cell closed the Lab)
    after = _text(_after(nb))
    assert "chat after Run All: {'role': 'assistant'" in after, after


def test_02_prompt_formats():
    nb = _run("02_prompt_formats.ipynb", "print('after Run All:', pg.preview().result(120).text)")
    assert "chatml" in _text(_cell(nb, "presets.names()"))
    own = _text(_cell(nb, "inspect_prompt(None,"))
    assert "tokens" in own and "&lt;|im_start|&gt;assistant" in own
    assert "USER: What is the capital of France? ASSISTANT:" in _text(_cell(nb, 'inspect_prompt("vicuna"'))
    assert "You are a geography tutor." in _text(_cell(nb, "print(brief.render(messages))"))
    table = _text(_cell(nb, "rows = await cmp.wait()")).splitlines()
    assert table[0].split()[:3] == ["variant", "config", "finish"]
    rows = {line.split()[0]: line for line in table[1:] if line.strip()}
    assert set(rows) >= {"model's", "chatml", "chatml-brief", "vicuna"}
    assert "Paris" in rows["model's"] and "Paris" in rows["chatml-brief"]
    final = _text(_cell(nb, "pg.preset.value ="))
    assert "template='chatml'" in final and "max_new_tokens': 32" in final and "Paris" in final
    assert "after Run All: " in _text(_after(nb)) and "Paris" in _text(_after(nb))


def test_03_demo_endpoint():
    nb = _run("03_demo_endpoint.ipynb", "print('after Run All:', http.get(f'{ep.url}/health').json()['status'],"
              " lab.generate('What is the capital of France?'))")
    served = _text(_cell(nb, "ep = lab.serve(num_of"))
    url = re.search(r"http://127\.0\.0\.1:\d+", served).group(0)
    assert "serving" in served
    http = _text(_cell(nb, "http.post("))
    assert http.startswith("200 ") and "Paris" in http
    assert "Paris" in _text(_cell(nb, "OpenAI(base_url"))
    stats = _text(_cell(nb, "/stats\").json()"))
    served_id, lab_id = re.findall(r"config: (\w+)", stats)
    assert served_id == lab_id
    remote = _text(_cell(nb, "remote = csl.remote_model(ep.url)"))
    assert "Paris" in remote and "backend: remote" in remote and "'status': 'ok'" in remote
    dash = _cell(nb, "dash = ep.dashboard()")
    assert "image/png" in _mimes(dash)  # the drawn figure (updated in place through its display id)
    load = _text(_cell(nb, "test = ep.load_test("))
    assert "throughput (tokens/s)" in load and "data:image/png;base64," in load
    result = _text(_cell(nb, "result = await test"))
    m = re.search(r"<LoadTestResult (\d+)/(\d+) completed", result)
    assert m and int(m.group(1)) >= 1
    frames = int(re.search(r"(\d+) frames", result).group(1))
    assert frames >= 2  # the dashboard redrew while the load test ran
    assert "Paris" in _text(_cell(nb, "preview = lab.preview("))
    stopped = _text(_cell(nb, "port = ep.port"))
    assert "stopped: True" in stopped
    assert f"serving again on the same port: {url}" in stopped
    after = _text(_after(nb))
    assert "after Run All: ok" in after and "Paris" in after  # the endpoint serves on, the Lab answers


def test_04_token_probabilities():
    nb = _run("04_token_probabilities.ipynb",
              "print('first widget shows:', repr(preview.text), '| columns:', len(preview.columns.children))")
    assert "application/vnd.jupyter.widget-view+json" in _mimes(_cell(nb, "preview = lab.preview(question)"))
    tokens = _text(_cell(nb, "preview.tokens_panel.colour.value = True"))
    assert "'Paris'" in tokens or "'␣Paris'" in tokens
    assert re.search(r"next best: '.+' \d+%", tokens)
    assert re.search(r"^ +\(end\) +\d+\.\d%", tokens.splitlines()[-2])  # the EOS, last, with its probability
    spans = int(re.search(r"coloured spans: (\d+)", tokens).group(1))
    assert spans >= 5
    branch = _text(_cell(nb, "preview.branch(i, alt.token_id)"))
    original = re.search(r"original: (.*)", branch).group(1)
    branched = re.search(r"branch: +(.*)", branch).group(1)
    assert "Paris" in original and branched != original
    # after Run All the first widget shows the original answer, the branch in a column beside it
    first = _text(_after(nb))
    assert "first widget shows: 'The capital of France is Paris.'" in first and "columns: 2" in first, first
    scores = _text(_cell(nb, "for template in"))
    values = dict(re.findall(r"^(\S+).*mean logprob +(-?\d+\.\d+)", scores, re.M))
    assert set(values) == {"model's", "chatml", "vicuna", "alpaca"}
    assert all(float(v) < 0 for v in values.values()) and len(set(values.values())) > 1  # formats differ
    assert re.search(r"Paris:-?\d\.\d\d", _text(_cell(nb, "csl.score(lab.model")))


def test_05_structured_output():
    nb = _run("05_structured_output.ipynb")
    assert "City(name=" in _text(_cell(nb, "city = lab.extract("))
    assert _text(_cell(nb, "csl.Constraint.regex")).strip() in ("'yes'", "'no'")
    assert "application/vnd.jupyter.widget-view+json" in _mimes(_cell(nb, "preview = lab.preview("))
    glass = _text(_cell(nb, "await preview.wait()"))
    assert "grammar allowed" in glass and "finish: stop" in glass
    assert "<tools>" in _text(_cell(nb, "csl.inspect_prompt(None"))
    assert "get_weather" in _text(_cell(nb, "reply = lab.generate(messages, tools="))
    assert _text(_cell(nb, "call.result(result)")).strip()
    http = _text(_cell(nb, "client.chat.completions.parse("))
    assert "parsed: City(" in http and "call 0: get_weather (id call_" in http
    fragments = re.search(r"argument fragments: (\[.*\])", http)
    assert fragments and fragments.group(1).count("', '") >= 2  # arguments streamed in pieces
    streamed = _text(_cell(nb, "for ev in csl.stream(lab.model"))
    assert re.search(r'\{"colour": "(red|green|blue)"\}', streamed)


def test_06_prompt_experiments():
    nb = _run("06_prompt_experiments.ipynb")
    assert "application/vnd.jupyter.widget-view+json" in _mimes(_cell(nb, "result = lab.grid(inputs"))
    free = _text(_cell(nb, "kernel answered in"))
    m = re.search(r"kernel answered in ([\d.]+) ms while the grid ran: (\d+)/36 rows finished, done=(\w+)", free)
    assert m and m.group(3) == "False" and int(m.group(2)) < 36  # the kernel ran a cell mid-grid
    summary = _text(_cell(nb, "result.wait()"))
    assert "<GridResult done: 36 rows (36 done" in summary
    assert "names_the_city" in summary and "reference_logprob" in summary and "McNemar" in summary
    compared = _text(_cell(nb, 'result.compare("chatml", "vicuna")'))
    assert compared.count("<Comparison") == 2 and "nats/token" in compared
    assert "image/png" in _mimes(_cell(nb, 'result.compare("chatml", "vicuna")'))  # the plot
    rerun = _text(_cell(nb, "again = lab.grid("))
    assert "re-run: 36 of 36 rows re-used, 0 generated" in rerun
    assert "application/vnd.jupyter.widget-view+json" in _mimes(_cell(nb, "result.show("))
    served = _text(_cell(nb, "lab.configure(result.config(best))"))
    assert re.search(r"served config (\w+) == grid config \1: True", served)
    assert "Paris" in served and "winner.json" in served
