"""A constraint as a GBNF grammar, for upstreams that take one (llama.cpp's ``llama-server``).

llama-server takes a JSON schema natively (``json_schema``) but no regex and no structural tag;
it does take a GBNF ``grammar``, optionally *lazy*: free text until a trigger word, the grammar
from the trigger on (how it constrains its own tool calls). This module writes that grammar from
xgrammar's EBNF of the same constraint, so a regex or a tool call means the same thing on
llama-server as on the engines that run xgrammar:

- xgrammar's EBNF -> GBNF: rule names lose ``_`` (GBNF names are letters, digits and ``-``),
  ``{m, -1}`` becomes ``{m,}``, ``\\0`` becomes ``\\x00``, lookahead assertions ``(= ...)`` are
  dropped (they only restate what the rule after them requires);
- a structural tag becomes rules of literal tag texts around each tag's content; ``triggered_tags``
  without ``at_least_one`` becomes a lazy grammar whose triggers are the tag triggers.

:func:`to_gbnf` returns a :class:`Gbnf`, or raises
:class:`~chatstream_lab.errors.InvalidParameter` for a form it cannot write.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..constraint import Constraint, ConstraintKind
from ..errors import InvalidParameter
from .grammar import xgrammar


@dataclass(frozen=True, slots=True)
class Gbnf:
    """A GBNF grammar; ``triggers`` non-empty: lazy (free text until one of them)."""

    grammar: str
    triggers: tuple[str, ...] = ()


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if text else '""'


def _skip_string(src: str, i: int, quote: str) -> int:
    """Index just past the literal or class starting at ``src[i]`` (``quote`` closes it)."""
    i += 1
    while src[i] != quote:
        i += 2 if src[i] == "\\" else 1
    return i + 1


def _regex_call(body: str, i: int, on_regex: Callable[[str], str]) -> tuple[str, int]:
    """``Regex("pattern", ...)`` at ``body[i]`` -> (a rule for it, the index after the call)."""
    start = body.index('"', i)
    end = _skip_string(body, start, '"')
    literal = body[start:end]
    try:
        pattern = json.loads(literal)
    except ValueError:
        pattern = literal[1:-1].encode().decode("unicode_escape")
    close = body.index(")", end)
    return on_regex(pattern), close + 1


def _repeat(lo: str, hi: str, plain: bool) -> str:
    """``{lo, hi}`` in the target spelling (``hi`` -1: unbounded)."""
    if hi != "-1":
        return f"{{{lo},{hi}}}"
    if plain and lo in ("0", "1"):
        return "*" if lo == "0" else "+"
    return f"{{{lo},}}"


def _convert_body(body: str, prefix: str, on_regex: Callable[[str], str] | None = None, *,
                  plain: bool = False) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if body.startswith("Regex(", i) and on_regex is not None:  # xgrammar's regex built-in
            rule, i = _regex_call(body, i, on_regex)
            out.append(rule)
        elif c == '"':
            end = _skip_string(body, i, '"')
            out.append(body[i:end])
            i = end
        elif c == "[":
            end = _skip_string(body, i, "]")
            out.append(body[i:end].replace("\\0", "\\x00"))
            i = end
        elif body.startswith("(=", i):  # lookahead: skip to its matching parenthesis
            depth, i = 1, i + 2
            while depth:
                if body[i] in "\"[":
                    i = _skip_string(body, i, '"' if body[i] == '"' else "]")
                    continue
                depth += {"(": 1, ")": -1}.get(body[i], 0)
                i += 1
        elif c == "{":
            end = body.index("}", i)
            lo, _, hi = body[i + 1:end].partition(",")
            hi = hi.strip()
            out.append(_repeat(lo.strip(), hi, plain) if hi else body[i:end + 1])
            i = end + 1
        elif c.isalpha() or c == "_":
            j = i
            while j < len(body) and (body[j].isalnum() or body[j] == "_"):
                j += 1
            out.append(prefix + (body[i:j] if plain else body[i:j].replace("_", "-")))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def ebnf_to_gbnf(ebnf: str, prefix: str, on_regex: Callable[[str], str] | None = None, *,
                 plain: bool = False) -> tuple[str, str]:
    """xgrammar EBNF -> (GBNF rules with ``prefix`` on every name, the prefixed root name);
    ``on_regex(pattern)`` writes a ``Regex(...)`` built-in as a rule and returns its name.
    ``plain``: write plain EBNF instead (names keep ``_``; ``*`` / ``+`` for unbounded repeats),
    which older xgrammar parsers read (OpenVINO GenAI's built-in one)."""
    lines = []
    for line in ebnf.strip().splitlines():
        name, sep, body = line.partition(" ::= ")
        if not sep:
            continue
        if "TagDispatch(" in body or "Repeat(" in body or ("Regex(" in body and on_regex is None):
            raise ValueError(f"unsupported construct in {name}")
        own = name.strip() if plain else name.strip().replace("_", "-")
        lines.append(f"{prefix}{own} ::= {_convert_body(body, prefix, on_regex, plain=plain)}")
    return "\n".join(lines), f"{prefix}root"


class _Writer:
    """Builds one grammar from nested formats, naming sub-grammars g0-, g1-, ... (g0_ in plain EBNF)."""

    def __init__(self, plain: bool = False) -> None:
        self.rules: list[str] = []
        self._n = 0
        self.plain = plain

    def _sub(self, grammar: Any) -> str:
        prefix = f"g{self._n}{'_' if self.plain else '-'}"
        self._n += 1
        rules, root = ebnf_to_gbnf(str(grammar), prefix, self._regex, plain=self.plain)
        self.rules.append(rules)
        return root

    def _regex(self, pattern: str) -> str:
        return self._sub(xgrammar().Grammar.from_regex(pattern))

    def rule(self, body: str) -> str:
        name = f"r{self._n}"
        self._n += 1
        self.rules.append(f"{name} ::= {body}")
        return name

    def format(self, fmt: dict[str, Any]) -> str:
        """A rule name matching structural-tag format ``fmt``."""
        xgr = xgrammar()
        kind = fmt.get("type")
        if kind == "json_schema":
            return self._sub(xgr.Grammar.from_json_schema(json.dumps(fmt["json_schema"]), any_whitespace=False))
        if kind == "regex":
            return self._sub(xgr.Grammar.from_regex(fmt["pattern"]))
        if kind == "const_string":
            return self.rule(_literal(fmt["value"]))
        if kind == "tag":
            end = fmt["end"] if isinstance(fmt["end"], str) else fmt["end"][0]
            return self.rule(f"{_literal(fmt['begin'])} {self.format(fmt['content'])} {_literal(end)}")
        if kind == "or":
            return self.rule(" | ".join(self.format(e) for e in fmt["elements"]))
        if kind == "sequence":
            return self.rule(" ".join(self.format(e) for e in fmt["elements"]))
        if kind in ("triggered_tags", "tags_with_separator"):
            one = self.rule(" | ".join(self.format(t) for t in fmt["tags"]))
            sep = _literal(fmt.get("separator", "\n")) + "?" if kind == "triggered_tags" else _literal(
                fmt.get("separator", ""))
            return one if fmt.get("stop_after_first") else self.rule(f"{one} ({sep} {one})*")
        raise ValueError(f"structural tag format {kind!r}")


def to_plain_ebnf(constraint: Constraint) -> str:
    """A JSON schema, JSON object or regex constraint as plain EBNF (no built-ins, no lookahead):
    the same compact grammar the torch engine uses, in the spelling OpenVINO's built-in xgrammar
    reads. Raises InvalidParameter for a structural tag (send those as JSON)."""
    if constraint.kind is ConstraintKind.STRUCTURAL_TAG:
        raise InvalidParameter("a structural tag has no plain EBNF form here", name="tools")
    grammar = to_gbnf(constraint, plain=True).grammar
    return grammar


def to_gbnf(constraint: Constraint, *, field: str = "response_format", plain: bool = False) -> Gbnf:
    """``constraint`` as GBNF (JSON schemas too, though llama-server takes those natively);
    ``plain``: as plain EBNF (see :func:`ebnf_to_gbnf`)."""
    xgr = xgrammar()
    writer = _Writer(plain)
    try:
        if constraint.kind is ConstraintKind.STRUCTURAL_TAG:
            fmt = (constraint.tag or {})["format"]
            lazy = fmt.get("type") == "triggered_tags" and not fmt.get("at_least_one")
            root = writer.format(fmt)
            triggers = tuple(fmt["triggers"]) if lazy else ()
        else:
            root = writer._sub(xgr.Grammar.from_regex(constraint.spec) if constraint.kind is ConstraintKind.REGEX
                               else xgr.Grammar.from_json_schema(
                                   constraint.spec if constraint.kind is ConstraintKind.JSON_SCHEMA
                                   else '{"type":"object"}', any_whitespace=False,
                                   strict_mode=constraint.kind is ConstraintKind.JSON_SCHEMA))
            triggers = ()
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise InvalidParameter(f"{field}: this constraint cannot be written as a GBNF grammar for "
                               f"llama-server ({exc})", name=field) from exc
    return Gbnf(f"root ::= {root}\n" + "\n".join(writer.rules) + "\n", triggers)
