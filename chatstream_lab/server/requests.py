"""Validation of request bodies at the HTTP boundary (before anything in a session changes).

Everything here raises :class:`~chatstream_lab.server.errors.BadRequest` or
:class:`~chatstream_lab.errors.InvalidParameter`, both mapped to 4xx JSON in ``errors.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config import SamplingParams
from ..errors import InvalidParameter
from .errors import BadRequest

# the seed's /set_generation_params names -> ours
SEED_PARAM_ALIASES = {"top_k_value": "top_k", "top_p_value": "top_p"}


@dataclass(frozen=True, slots=True)
class ChatStreamRequest:
    """A validated ``POST /chat_stream`` body."""

    user_input: str | None  # None when regenerating
    regenerate: bool


def parse_json_object(raw: bytes | str | dict[str, Any] | None) -> dict[str, Any]:
    """The body as a JSON object (a dict is passed through, for callers that parsed it already)."""
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, (bytes, str)) and not raw.strip()):
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


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


def generation_param_changes(data: dict[str, Any]) -> dict[str, Any]:
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
        if name == "stop" and isinstance(value, list):
            value = tuple(value)
        changes[name] = value
    return changes
