"""Structured output: constraints compiled to token-level grammars (xgrammar).

``check_constraint`` validates a :class:`~chatstream_lab.constraint.Constraint` without a
tokenizer (every engine calls it before queueing: a bad schema is a 400); ``grammars_for`` gives a
tokenizer's compiled grammars and per-row matchers; ``TokenMasks`` applies a batch's masks to the
raw logits. Importing this package does not import xgrammar (nor torch): that happens on first use.
"""

from __future__ import annotations

from .grammar import (
    INSTALL_HINT,
    TokenizerGrammars,
    check_constraint,
    grammar_text,
    grammars_for,
    portable_grammar_text,
)
from .matcher import RowMatcher, TokenMasks

__all__ = ["INSTALL_HINT", "RowMatcher", "TokenMasks", "TokenizerGrammars", "check_constraint",
           "grammar_text", "grammars_for", "portable_grammar_text"]
