"""Checks: callables ``(output, row) -> bool | float`` whose ``__name__`` names their column.

Built in: :func:`contains`, :func:`equals`, :func:`regex`, :func:`json_valid`,
:func:`json_schema_valid`, :func:`max_length`; any function of the same shape works, and
:class:`~chatstream_lab.experiments.judge.Judge` asks a model. ``contains()`` and ``equals()``
without a text compare with the row's reference answer.

A check that raises gives its cell a :class:`~chatstream_lab.experiments.rows.CheckError` with
the reason (shown in the table; NaN plus a ``<name>_error`` column in ``to_pandas()``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError, MissingExtra
from .rows import CheckError, CheckValue

Check = Callable[[str, Any], Any]


def _named(fn: Check, name: str) -> Check:
    fn.__name__ = name
    fn.__qualname__ = name
    return fn


def _expected(text: str | None, row: Any, check: str) -> str:
    if text is not None:
        return text
    reference = getattr(row, "reference", None)
    if reference is None:
        raise ValueError(f"{check}() compares with the input's reference answer, and this input has none")
    return str(reference)


def contains(text: str | None = None, *, case_sensitive: bool = False) -> Check:
    """True when the output contains ``text`` (None: the row's reference answer)."""
    def check(output: str, row: Any) -> bool:
        needle = _expected(text, row, "contains")
        return needle in output if case_sensitive else needle.casefold() in output.casefold()

    return _named(check, "contains_reference" if text is None else f"contains({text!r})")


def equals(text: str | None = None, *, strip: bool = True, case_sensitive: bool = True) -> Check:
    """True when the output equals ``text`` (None: the row's reference), after stripping spaces."""
    def norm(s: str) -> str:
        s = s.strip() if strip else s
        return s if case_sensitive else s.casefold()

    def check(output: str, row: Any) -> bool:
        return norm(output) == norm(_expected(text, row, "equals"))

    return _named(check, "equals_reference" if text is None else f"equals({text!r})")


def regex(pattern: str, flags: int = 0) -> Check:
    """True when ``pattern`` matches somewhere in the output (``re.search``)."""
    compiled = re.compile(pattern, flags)

    def check(output: str, row: Any) -> bool:
        return compiled.search(output) is not None

    return _named(check, f"regex({pattern!r})")


_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.S)


def parse_json(output: str) -> Any:
    """The output as JSON (a surrounding ```json fence is allowed); raises ValueError."""
    text = output.strip()
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text)


def json_valid() -> Check:
    """True when the whole output (optionally in a ```json fence) parses as JSON."""
    def check(output: str, row: Any) -> bool:
        try:
            parse_json(output)
        except ValueError:
            return False
        return True

    return _named(check, "json_valid")


def _validator(schema: Mapping[str, Any]) -> Any:
    try:
        import jsonschema
    except ImportError as exc:
        raise MissingExtra("json_schema_valid() needs jsonschema: pip install 'chatstream_lab[notebook]'",
                           extra="notebook") from exc
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"not a valid JSON schema: {exc.message}", name="schema") from exc
    return cls(schema)


def json_schema_valid(schema: Mapping[str, Any], name: str = "json_schema_valid") -> Check:
    """True when the output parses as JSON and satisfies ``schema`` (JSON Schema, via jsonschema)."""
    validator = _validator(schema)

    def check(output: str, row: Any) -> bool:
        try:
            value = parse_json(output)
        except ValueError:
            return False
        return bool(validator.is_valid(value))

    return _named(check, name)


def max_length(limit: int, *, unit: str = "chars") -> Check:
    """True when the output has at most ``limit`` characters (``unit="tokens"``: completion tokens)."""
    if unit not in ("chars", "tokens"):
        raise ConfigError(f"unit must be 'chars' or 'tokens', got {unit!r}", name="unit")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit must be an integer >= 0, got {limit!r}", name="limit")

    def check(output: str, row: Any) -> bool:
        size = len(output) if unit == "chars" else int(getattr(row, "completion_tokens", 0))
        return size <= limit

    return _named(check, f"max_length({limit}{'' if unit == 'chars' else ', tokens'})")


def check_names(checks: Sequence[Check]) -> list[str]:
    """The column name of each check (``__name__``; a repeated name gets ``_2``, ``_3``...)."""
    names: list[str] = []
    for check in checks:
        if not callable(check):
            raise ConfigError(f"a check must be a callable (output, row) -> bool | float, got {check!r}",
                              name="checks")
        base = str(getattr(check, "__name__", type(check).__name__))
        name, n = base, 2
        while name in names or name in RESERVED:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


RESERVED = frozenset({"model", "variant", "input", "seed", "output", "completion_tokens", "ttft_s", "latency_s",
                      "reference_logprob", "row", "status"})


def run_check(check: Check, output: str, row: Any) -> CheckValue:
    """One check's value: a bool, a float, or a CheckError saying why there is none."""
    try:
        value = check(output, row)
    except Exception as exc:  # a user's check must not stop the grid; its cell says what happened
        return CheckError(f"{type(exc).__name__}: {exc}")
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    try:  # numpy scalars
        return bool(value) if type(value).__name__.startswith("bool") else float(value)
    except (TypeError, ValueError):
        return CheckError(f"returned {type(value).__name__}, not a bool or a number")


__all__ = ["Check", "check_names", "contains", "equals", "json_schema_valid", "json_valid", "max_length",
           "parse_json", "regex", "run_check"]
