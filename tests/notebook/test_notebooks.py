"""The example notebooks run top to bottom on the real model (nbclient + the venv's kernel), and
their outputs show what they claim: replies with the right answer, a served URL that answered, a
dashboard figure that was drawn, a load-test table, a freed port."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# The machines are shared and noisy: a notebook that takes ~20-40 s alone may take minutes under load.
pytestmark = [pytest.mark.notebook, pytest.mark.real_model, pytest.mark.timeout(900)]


def _run(name: str):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


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
    nb = _run("01_quickstart.ipynb")
    assert "chatstream_lab.Lab" in _text(_cell(nb, "lab = csl.Lab("))  # the Lab's HTML repr
    inline = _text(_cell(nb, "csl.stream(lab.model"))
    assert "The capital of France is Paris." in inline and "[stop," in inline
    assert "application/vnd.jupyter.widget-view+json" in _mimes(_cell(nb, "preview = lab.preview("))
    streamed = _text(_cell(nb, "await preview.wait()"))
    assert "Paris" in streamed
    assert re.search(r"stop · \d+ tokens · TTFT \d+\.\d+ s · \d+\.\d tok/s", streamed)
    assert "Paris" in _text(_cell(nb, "await chat.wait()"))


def test_02_prompt_formats():
    nb = _run("02_prompt_formats.ipynb")
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


def test_03_demo_endpoint():
    nb = _run("03_demo_endpoint.ipynb")
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


def test_04_token_probabilities():
    nb = _run("04_token_probabilities.ipynb")
    assert "application/vnd.jupyter.widget-view+json" in _mimes(_cell(nb, "preview = lab.preview(question)"))
    tokens = _text(_cell(nb, "preview.tokens_panel.colour.value = True"))
    assert "'Paris'" in tokens or "'␣Paris'" in tokens
    assert re.search(r"next best: '.+' \d+%", tokens)
    spans = int(re.search(r"coloured spans: (\d+)", tokens).group(1))
    assert spans >= 5
    branch = _text(_cell(nb, "preview.branch(i, alt.token_id)"))
    before = re.search(r"before: (.*)", branch).group(1)
    after = re.search(r"after: +(.*)", branch).group(1)
    assert "Paris" in before and after != before
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
