"""Constraints -> xgrammar grammars: checked without a tokenizer, compiled once per tokenizer.

Why xgrammar: a manylinux wheel with a CPU path (~5 us to fill one row's mask on SmolLM2's
49,152-token vocabulary, ~6-11 ms to compile a schema, then cached), JSON schema / regex /
structural tags (what tool calls need), and the same library vLLM, SGLang and OpenVINO GenAI use,
so a constraint means the same thing on every engine here. It is installed with ``--no-deps`` plus
``apache-tvm-ffi`` (its metadata pulls triton, which only its CUDA kernels import).

Two entry points:

- :func:`check_constraint` compiles the constraint to a tokenizer-free grammar (cached per
  constraint) and raises :class:`~chatstream_lab.errors.InvalidParameter` naming the request
  field: every engine calls it before queueing, so a bad schema is a 400 and nothing runs.
- :func:`grammars_for` gives the :class:`TokenizerGrammars` of one tokenizer (its
  ``TokenizerInfo`` is built once, ~0.2 s, and kept while the tokenizer lives): compiled grammars
  cached per constraint, and a fresh :class:`~chatstream_lab.structured.matcher.RowMatcher` per
  request row.
"""

from __future__ import annotations

import functools
import re
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from ..constraint import Constraint, ConstraintKind
from ..errors import InvalidParameter

INSTALL_HINT = ('structured output needs xgrammar: pip install --no-deps "xgrammar>=0.2.8" apache-tvm-ffi '
                "(make setup does it)")
_CPP_PREFIX = re.compile(r"^\s*\[[0-9:]+\]\s+\S+:\d+:\s*")
_JSON_OBJECT_SCHEMA = '{"type":"object"}'


def xgrammar() -> Any:
    """The xgrammar module, imported on first use (it imports torch); a clear error without it."""
    try:
        import xgrammar as xgr
    except ImportError as exc:  # pragma: no cover - the project installs it
        raise InvalidParameter(INSTALL_HINT, name="response_format") from exc
    return xgr


def field_of(constraint: Constraint) -> str:
    """The request field a constraint came from, for error messages."""
    if constraint.kind is ConstraintKind.STRUCTURAL_TAG:
        return "tools"
    if constraint.kind is ConstraintKind.REGEX:
        return "regex"
    return "response_format"


def _clean(exc: BaseException) -> str:
    """xgrammar's C++ message without its ``[time] file.cc:line:`` prefix."""
    text = str(exc).strip()
    return _CPP_PREFIX.sub("", text.splitlines()[0] if text else type(exc).__name__)


def _refused(constraint: Constraint, exc: BaseException, field: str | None = None) -> InvalidParameter:
    name = field or field_of(constraint)
    what = {ConstraintKind.JSON_SCHEMA: "JSON schema", ConstraintKind.REGEX: "regex",
            ConstraintKind.STRUCTURAL_TAG: "structural tag", ConstraintKind.JSON_OBJECT: "JSON object"}[constraint.kind]
    return InvalidParameter(f"{name}: this {what} cannot be compiled to a grammar: {_clean(exc)}", name=name)


@functools.lru_cache(maxsize=256)
def _grammar(constraint: Constraint) -> Any:
    xgr = xgrammar()
    if constraint.kind is ConstraintKind.JSON_SCHEMA:
        return xgr.Grammar.from_json_schema(constraint.spec, any_whitespace=False, strict_mode=True)
    if constraint.kind is ConstraintKind.JSON_OBJECT:
        return xgr.Grammar.from_json_schema(_JSON_OBJECT_SCHEMA, any_whitespace=False, strict_mode=False)
    if constraint.kind is ConstraintKind.REGEX:
        return xgr.Grammar.from_regex(constraint.spec)
    return xgr.Grammar.from_structural_tag(constraint.spec)


def check_constraint(constraint: Constraint, *, field: str | None = None) -> None:
    """Raise InvalidParameter (naming ``field``, default the constraint's own field) when
    ``constraint`` cannot be compiled; cheap after the first call for the same constraint."""
    try:
        _grammar(constraint)
    except InvalidParameter:
        raise
    except Exception as exc:  # xgrammar raises RuntimeError / ValueError / pydantic errors
        raise _refused(constraint, exc, field) from exc


_UNBOUNDED = re.compile(r"\{(\d+),\s*-1\}")


def grammar_text(constraint: Constraint) -> str:
    """The constraint as xgrammar's EBNF, in the spelling older xgrammar parsers read too (the one
    built into OpenVINO GenAI 2026.4: ``x*`` / ``x+`` / ``x{m,}`` for unbounded repeats)."""
    check_constraint(constraint)
    return _UNBOUNDED.sub(_unbounded, str(_grammar(constraint)))


def portable_grammar_text(constraint: Constraint) -> str:
    """A JSON schema, JSON object or regex as plain EBNF that older xgrammar parsers read too
    (OpenVINO GenAI 2026.4's built-in one): the torch engine's compact grammar, with xgrammar's
    ``Regex(...)`` built-ins written out as rules."""
    from .gbnf import to_plain_ebnf

    check_constraint(constraint)
    return to_plain_ebnf(constraint)


def _unbounded(match: re.Match[str]) -> str:
    low = int(match.group(1))
    return "*" if low == 0 else "+" if low == 1 else f"{{{low},}}"


class TokenizerGrammars:
    """Compiled grammars for one tokenizer and vocabulary width (thread-safe, built lazily).

    ``vocab_size`` is the width of the model's logits (it may exceed the tokenizer's vocabulary:
    the extra ids are never allowed); ``stop_token_ids`` are the ids that end a reply, allowed
    exactly where the grammar may end.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self.stop_token_ids = tuple(int(i) for i in stop_token_ids)
        self._compiler: Any = None
        self._compiled: dict[Constraint, Any] = {}
        self._lock = threading.Lock()

    def _xgr_compiler(self) -> Any:
        if self._compiler is None:
            self._compiler = xgrammar().GrammarCompiler(self._tokenizer_info(), max_threads=1)
        return self._compiler

    def _tokenizer_info(self) -> Any:
        xgr = xgrammar()
        stops = list(self.stop_token_ids) or None
        token_bytes = getattr(self._tokenizer, "token_bytes", None)
        if callable(token_bytes) and not hasattr(self._tokenizer, "backend_tokenizer"):
            # a raw byte vocabulary (the scripted model's ByteTokenizer): special tokens never match text
            vocab = [token_bytes(i) or b"" for i in range(len(self._tokenizer))]
            return xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=self.vocab_size, stop_token_ids=stops)
        return xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self.vocab_size, stop_token_ids=stops)

    def compiled(self, constraint: Constraint) -> Any:
        """The xgrammar ``CompiledGrammar`` (compiled once per constraint, ~10 ms; then cached)."""
        check_constraint(constraint)
        with self._lock:
            found = self._compiled.get(constraint)
            if found is not None:
                return found
            compiler = self._xgr_compiler()
            try:
                if constraint.kind is ConstraintKind.JSON_SCHEMA:
                    out = compiler.compile_json_schema(constraint.spec, any_whitespace=False, strict_mode=True)
                elif constraint.kind is ConstraintKind.JSON_OBJECT:
                    out = compiler.compile_json_schema(_JSON_OBJECT_SCHEMA, any_whitespace=False, strict_mode=False)
                elif constraint.kind is ConstraintKind.REGEX:
                    out = compiler.compile_regex(constraint.spec)
                else:
                    out = compiler.compile_structural_tag(constraint.spec)
            except Exception as exc:
                raise _refused(constraint, exc) from exc
            if len(self._compiled) >= 256:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[constraint] = out
            return out

    def matcher(self, constraint: Constraint) -> Any:
        """A fresh per-row matcher for ``constraint`` (compiles it first if needed)."""
        from .matcher import RowMatcher

        return RowMatcher(self.compiled(constraint), self.vocab_size)


_BY_TOKENIZER: weakref.WeakKeyDictionary[Any, dict[tuple[int, tuple[int, ...]], TokenizerGrammars]] = (
    weakref.WeakKeyDictionary())
_BY_TOKENIZER_LOCK = threading.Lock()


def grammars_for(tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> TokenizerGrammars:
    """The one :class:`TokenizerGrammars` of ``tokenizer`` for this vocabulary width and stop ids
    (a cache, not state: it lives as long as the tokenizer, so its TokenizerInfo is built once
    however many engines and inline ``stream()`` calls share the model)."""
    key = (int(vocab_size), tuple(int(i) for i in stop_token_ids))
    with _BY_TOKENIZER_LOCK:
        try:
            per = _BY_TOKENIZER.setdefault(tokenizer, {})
        except TypeError:  # a tokenizer that cannot be weakly referenced: no sharing
            return TokenizerGrammars(tokenizer, vocab_size, stop_token_ids)
        found = per.get(key)
        if found is None:
            found = per[key] = TokenizerGrammars(tokenizer, vocab_size, stop_token_ids)
        return found
