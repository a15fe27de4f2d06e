"""Validation of request bodies at the HTTP boundary (before anything in a session changes).

Everything here raises :class:`~chatstream_lab.server.errors.BadRequest` or
:class:`~chatstream_lab.errors.InvalidParameter`, both mapped to 4xx JSON in ``errors.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config import RequestLimits, SamplingParams, is_valid_unicode
from ..errors import InvalidParameter
from .errors import BadRequest

_DEFAULT_LIMITS = RequestLimits()

# the seed's /set_generation_params names -> ours
SEED_PARAM_ALIASES = {"top_k_value": "top_k", "top_p_value": "top_p"}


class InvalidJSON(BadRequest):
    """The body is empty, not JSON, or not a JSON object."""


@dataclass(frozen=True, slots=True)
class ChatStreamRequest:
    """A validated ``POST /chat_stream`` body."""

    user_input: str | None  # None when regenerating
    regenerate: bool


def parse_json_object(raw: bytes | str | dict[str, Any] | None,
                      limits: RequestLimits = _DEFAULT_LIMITS) -> dict[str, Any]:
    """The body as a JSON object, no deeper than ``limits.max_json_depth`` and holding only valid
    Unicode (a dict is checked the same way, for callers that parsed it already). Every route
    reads its body through here, so no route sees a lone surrogate or a 100k-deep document."""
    if not isinstance(raw, dict):
        raw = _decode_json(raw)
    check_json_tree(raw, limits.max_json_depth)
    return raw


def _decode_json(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except RecursionError as exc:  # the C decoder stops at the recursion limit: far too deep
        raise BadRequest("the request body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidJSON(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def check_json_tree(data: dict[str, Any], max_depth: int) -> None:
    """400 (naming the top-level field) for nesting deeper than ``max_depth`` or a string (key or
    value) with a lone surrogate. Iterative, so any depth handed in is safe to walk."""
    todo: list[tuple[Any, int, str | None]] = [(data, 1, None)]
    while todo:
        value, depth, field_name = todo.pop()
        if isinstance(value, str):
            if not is_valid_unicode(value):
                raise BadRequest(f"{field_name or 'a key'} holds invalid Unicode (a lone surrogate)",
                                 param=field_name)
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > max_depth:
            raise BadRequest(f"the request body is nested deeper than {max_depth} levels "
                             "(max_json_depth)", param=field_name)
        if isinstance(value, dict):
            for key, item in value.items():
                name = field_name if field_name is not None else _printable(str(key))
                todo.append((key, depth, name))
                todo.append((item, depth + 1, name))
        else:
            todo.extend((item, depth + 1, field_name) for item in value)


def _printable(name: str) -> str:
    """A field name safe to echo in a JSON error (a lone surrogate in a key becomes ``\\udfff``)."""
    return name if is_valid_unicode(name) else name.encode("utf-8", "backslashreplace").decode("utf-8")


def check_stop(value: Any, limits: RequestLimits) -> Any:
    """A ``stop`` value within the count and length bounds (its type is SamplingParams' to check);
    the same check for every route that takes stop strings. A string is one stop string."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        return value
    if len(items) > limits.max_stop_strings:
        raise InvalidParameter(f"stop holds {len(items)} strings; the limit is {limits.max_stop_strings} "
                               "(max_stop_strings)", name="stop")
    longest = max((len(s) for s in items if isinstance(s, str)), default=0)
    if longest > limits.max_stop_chars:
        raise InvalidParameter(f"a stop string is {longest} characters; the limit is "
                               f"{limits.max_stop_chars} (max_stop_chars)", name="stop")
    return tuple(items) if isinstance(value, list) else value


def parse_chat_stream(data: dict[str, Any], *, max_input_chars: int) -> ChatStreamRequest:
    """Check ``user_input`` / ``regenerate`` the way the seed's clients send them."""
    regenerate = data.get("regenerate", False)
    if regenerate is None:
        regenerate = False
    if not isinstance(regenerate, bool):
        raise BadRequest("regenerate must be a JSON boolean (true or false)", param="regenerate")
    if regenerate:
        return ChatStreamRequest(None, True)
    if "user_input" not in data or data["user_input"] is None:
        raise BadRequest("user_input is required (a non-empty string)", param="user_input")
    user_input = data["user_input"]
    if not isinstance(user_input, str):
        raise BadRequest(f"user_input must be a string, got {type(user_input).__name__}",
                         param="user_input")
    if not user_input.strip():
        raise BadRequest("user_input must not be empty", param="user_input")
    if len(user_input) > max_input_chars:
        raise BadRequest(f"user_input is {len(user_input)} characters; the limit is {max_input_chars}",
                         param="user_input", status=413)
    return ChatStreamRequest(user_input, False)


def generation_param_changes(data: dict[str, Any],
                             limits: RequestLimits = _DEFAULT_LIMITS) -> dict[str, Any]:
    """``/set_generation_params`` body -> ``SamplingParams.replace`` kwargs (nulls are skipped)."""
    changes: dict[str, Any] = {}
    known = set(SamplingParams.field_names())
    for key, value in data.items():
        name = SEED_PARAM_ALIASES.get(key, key)
        if name not in known:
            raise InvalidParameter(f"unknown generation parameter {key!r}; known: {sorted(known)}",
                                   name=key)
        if value is None:
            continue
        if name == "stop":
            value = check_stop(value, limits)
        changes[name] = value
    return changes
