"""``Judge``: a check that asks a model (another Lab, or a variant of this one) to grade an output
with a rubric, and parses its verdict.

The judge is asked for a small JSON object, ``{"verdict": "pass" | "fail", "reason": "..."}``
(:data:`VERDICT_SCHEMA`). Where the judge's engine declares grammar support
(``capabilities.grammar``: torch, OpenVINO, remote upstreams) the reply is constrained to that
schema, so even a small model answers with a parseable verdict; elsewhere the verdict is parsed
from free text: the first JSON object in the reply, else a bare PASS / FAIL. A reply with no
verdict gives the cell a :class:`~chatstream_lab.experiments.rows.CheckError` with the reply, never
a guess.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from ..config import ServeConfig
from ..constraint import Constraint
from ..errors import ConfigError, QueueFull

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"enum": ["pass", "fail"]}, "reason": {"type": "string"}},
    "required": ["verdict"],
}

PROMPT = """You grade the answer of an assistant.
Rubric: {rubric}
Question: {question}
{reference}Answer: {output}

Reply with JSON only: {{"verdict": "pass" or "fail", "reason": "<one sentence>"}}"""

_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_WORD = re.compile(r"\b(pass|fail)\b", re.I)


def parse_verdict(text: str) -> bool:
    """True for pass, False for fail; ValueError when the reply holds no verdict."""
    for match in _OBJECT.finditer(text):
        try:
            data = json.loads(match.group(0))
        except ValueError:
            continue
        verdict = str(data.get("verdict", "")).strip().lower() if isinstance(data, dict) else ""
        if verdict in ("pass", "fail"):
            return verdict == "pass"
    words = {w.lower() for w in _WORD.findall(text)}
    if len(words) == 1:
        return words.pop() == "pass"
    raise ValueError(f"no verdict in the judge's reply {text[:200]!r}")


def judge_config(lab: Any, variant: Any, max_new_tokens: int) -> ServeConfig:
    """The judge's configuration: ``variant`` of the judge Lab, greedy, and constrained to
    :data:`VERDICT_SCHEMA` where its engine declares grammar support."""
    config = lab.config if variant is None else lab.variant(variant)
    changes: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": max_new_tokens}
    if lab.service.capabilities.grammar:
        changes["constraint"] = Constraint.json_schema(VERDICT_SCHEMA, name="verdict")
    return config.replace(**changes)


class Judge:
    """A check ``(output, row) -> bool``: the judge model's verdict on ``output`` under ``rubric``.

    Args:
        lab: the Lab whose model judges (another Lab for another model; the grid's own Lab to
            let a variant of the same model judge). Its requests share that Lab's gate.
        rubric: what a passing answer does ("names the capital city of the country asked about").
        variant: a variant of the judge Lab (template, system prompt, sampling); None: its config.
        name: the column name.
    """

    def __init__(self, lab: Any, rubric: str, *, variant: Any = None, name: str = "judge",
                 max_new_tokens: int = 64, timeout: float = 300.0) -> None:
        if not isinstance(rubric, str) or not rubric.strip():
            raise ConfigError("the judge needs a rubric: what a passing answer does", name="rubric")
        self.lab = lab
        self.rubric = rubric
        self.config = judge_config(lab, variant, max_new_tokens)
        self.timeout = timeout
        self.__name__ = name
        self.replies: list[str] = []  # the judge's raw replies, for inspection

    def messages(self, output: str, row: Any) -> list[dict[str, str]]:
        reference = getattr(row, "reference", None)
        text = PROMPT.format(rubric=self.rubric, question=getattr(row, "text", ""), output=output.strip(),
                             reference=f"Reference answer: {reference}\n" if reference else "")
        return [{"role": "user", "content": text}]

    def __call__(self, output: str, row: Any) -> bool:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                stream = self.lab.submit(self.messages(output, row), self.config)
                break
            except QueueFull:  # the grid (or HTTP clients) fill the judge's gate: wait for room
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        reply = stream.text(max(1.0, deadline - time.monotonic()))
        self.replies.append(reply)
        return parse_verdict(reply)

    def __repr__(self) -> str:
        return f"<Judge {self.__name__}: {self.rubric[:60]!r} config={self.config.config_id}>"


__all__ = ["PROMPT", "VERDICT_SCHEMA", "Judge", "judge_config", "parse_verdict"]
