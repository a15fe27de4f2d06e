"""A constraint in each upstream's own request fields (what the remote engine sends).

One body goes to any OpenAI-compatible upstream, so it carries the constraint in the fields of
every upstream we serve from, and each ignores the others' (as with ``repeat_penalty`` /
``repetition_penalty``):

- JSON schema / JSON object: llama-server ``json_schema`` (its own GBNF converter); vLLM
  ``structured_outputs.grammar``: our compact grammar as plain EBNF (vLLM's own JSON conversion
  lets whitespace run free unless the *server* was started with ``disable_any_whitespace``, and a
  small model then pads a reply with blank lines until ``max_tokens``).
- regex: ``grammar`` (GBNF, :mod:`.gbnf`); ``structured_outputs.regex``.
- structural tag (tool calls): ``grammar`` (+ ``grammar_lazy`` and ``grammar_triggers`` for
  ``tool_choice: auto``); ``structured_outputs.structural_tag``.

An upstream that cannot enforce a form answers 4xx, which ends the request as refused by it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ..constraint import Constraint, ConstraintKind
from .gbnf import to_gbnf, to_plain_ebnf

_WORD_TRIGGER = 1  # llama.cpp's COMMON_GRAMMAR_TRIGGER_TYPE_WORD


@functools.lru_cache(maxsize=256)
def upstream_fields(constraint: Constraint) -> dict[str, Any]:
    """The request fields that carry ``constraint`` to llama-server and vLLM (cached: the GBNF is
    written once per constraint; callers copy the fields into their body and never mutate them)."""
    kind = constraint.kind
    out: dict[str, Any] = {}
    if kind in (ConstraintKind.JSON_SCHEMA, ConstraintKind.JSON_OBJECT):
        out["json_schema"] = constraint.schema if kind is ConstraintKind.JSON_SCHEMA else {"type": "object"}
        out["structured_outputs"] = {"grammar": to_plain_ebnf(constraint)}
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
