"""A constraint in each upstream's own request fields (what the remote engine sends).

One body goes to any OpenAI-compatible upstream, so it carries the constraint in the fields of
every upstream we serve from, and each ignores the others' (as with ``repeat_penalty`` /
``repetition_penalty``):

- JSON schema: llama-server ``json_schema`` (its own GBNF converter); vLLM
  ``structured_outputs.json`` with ``disable_any_whitespace`` (else a small model pads with blank
  lines until ``max_tokens``).
- JSON object: ``json_schema: {"type": "object"}``; ``structured_outputs.json_object``.
- regex: ``grammar`` (GBNF, :mod:`.gbnf`); ``structured_outputs.regex``.
- structural tag (tool calls): ``grammar`` (+ ``grammar_lazy`` and ``grammar_triggers`` for
  ``tool_choice: auto``); ``structured_outputs.structural_tag``.

On ``/v1/chat/completions`` (a remote model without a local tokenizer) a JSON schema also goes as
OpenAI's ``response_format``, which both read. An upstream that cannot enforce a form answers 400,
which the remote engine reports by name.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ..constraint import Constraint, ConstraintKind
from .gbnf import to_gbnf

_WORD_TRIGGER = 1  # llama.cpp's COMMON_GRAMMAR_TRIGGER_TYPE_WORD


@functools.lru_cache(maxsize=256)
def upstream_fields(constraint: Constraint, *, chat: bool = False) -> dict[str, Any]:
    """The request fields that carry ``constraint`` to llama-server and vLLM (cached: the GBNF is
    written once per constraint; callers copy the fields into their body and never mutate them)."""
    kind = constraint.kind
    out: dict[str, Any] = {}
    if kind is ConstraintKind.JSON_SCHEMA:
        schema = constraint.schema
        out["json_schema"] = schema
        out["structured_outputs"] = {"json": schema, "disable_any_whitespace": True}
        if chat:
            out["response_format"] = {"type": "json_schema",
                                      "json_schema": {"name": constraint.name, "schema": schema, "strict": True}}
        return out
    if kind is ConstraintKind.JSON_OBJECT:
        out["json_schema"] = {"type": "object"}
        out["structured_outputs"] = {"json_object": True, "disable_any_whitespace": True}
        if chat:
            out["response_format"] = {"type": "json_object"}
        return out
    gbnf = to_gbnf(constraint, field="tools" if kind is ConstraintKind.STRUCTURAL_TAG else "regex")
    out["grammar"] = gbnf.grammar
    if gbnf.triggers:
        out["grammar_lazy"] = True
        out["grammar_triggers"] = [{"type": _WORD_TRIGGER, "value": t} for t in gbnf.triggers]
    if kind is ConstraintKind.REGEX:
        out["structured_outputs"] = {"regex": constraint.spec}
    else:
        out["structured_outputs"] = {"structural_tag": json.dumps(constraint.tag)}
    return out
