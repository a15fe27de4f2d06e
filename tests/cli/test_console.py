from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from chatstream_lab.console import run_chat


def test_multi_turn_commands(scripted) -> None:
    lm = scripted()  # echoes the last user message
    out = io.StringIO()
    convo = run_chat(lm, ["hello", "/regenerate", "second", "/system Be brief.", "/bogus", "/clear",
                          "third", "/quit", "never"], out, temperature=0)
    text = out.getvalue()
    assert text.count("You said: hello.") == 2  # answered, then regenerated
    assert "You said: second." in text and "[history cleared]" in text
    assert "unknown command /bogus" in text
    assert [m["content"] for m in convo.turns] == ["third", "You said: third. This is a scripted reply."]
    assert convo.system == "Be brief."
    assert "never" not in text


def test_error_reply_leaves_history_consistent(scripted) -> None:
    out = io.StringIO()
    convo = run_chat(scripted("boom", fail_after=2), ["hi"], out, temperature=0)
    assert "[error:" in out.getvalue() and convo.turns == []


@pytest.mark.real_model
def test_cli_chat_answers_with_the_bundled_model(real_model) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "chatstream_lab.cli", "chat", "--temperature", "0",
                           "--ask", "What is the capital of France?"],
                          input="", capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
