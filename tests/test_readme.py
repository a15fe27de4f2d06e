"""Every Python snippet in the README runs, in order, against the real model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


@pytest.mark.real_model
def test_readme_python_snippets_run(real_model, tmp_path) -> None:
    snippets = _snippets()
    assert len(snippets) >= 4
    script = tmp_path / "readme_snippets.py"
    script.write_text("\n\n".join(snippets), encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Paris" in proc.stdout
    assert "get_weather {'city': " in proc.stdout and "<tool_response>" in proc.stdout  # the tool loop ran
    assert "http://127.0.0.1:" in proc.stdout and " True" in proc.stdout  # served the previewed config
