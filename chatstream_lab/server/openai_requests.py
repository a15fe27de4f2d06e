"""The OpenAI-compatible request bodies and what both ``/v1`` generation routes share: validation
(the pydantic models, then :func:`to_params` into :class:`~chatstream_lab.config.SamplingParams`),
the ``usage`` object and the error response of a generation that did not finish well.

Sampling fields map to ``SamplingParams`` (``max_tokens`` / ``max_completion_tokens`` ->
``max_new_tokens``; ``top_k``, ``min_p`` and ``repetition_penalty`` are accepted as extensions).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse

from ..config import RequestLimits, SamplingParams
from ..errors import InvalidParameter, ShuttingDown
from ..types import Finished, FinishReason
from .errors import BadRequest, error_body, error_response, public_generation_error
from .requests import InvalidJSON, check_stop, parse_json_object

if TYPE_CHECKING:
    from ..service import Service


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """The fields both routes share; others (``metadata``, ``store``...) are ignored, not rejected."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    response_format: dict[str, Any] | None = None


class ChatCompletionRequest(_SamplingRequest):
    """``/v1/chat/completions``: messages through the template; ``logprobs`` is a flag."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = Field(default=None, max_length=256)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_SamplingRequest):
    """``/v1/completions``: a raw prompt (text or token ids), no template; ``logprobs`` is an int."""

    prompt: str | list[int] | list[str] | list[list[int]]  # one prompt or a batch (vLLM's four shapes)
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False


def _text_content(i: int, content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise BadRequest(f"messages[{i}].content: only text parts are supported", param="messages")
        parts.append(part["text"])
    return "".join(parts)


def to_messages(req: ChatCompletionRequest, max_chars: int, max_messages: int = 256) -> list[dict[str, Any]]:
    if len(req.messages) > max_messages:
        raise BadRequest(f"messages holds {len(req.messages)} entries; the limit is {max_messages} "
                         "(max_messages)", param="messages")
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        message: dict[str, Any] = {"role": role, "content": _text_content(i, m.content)}
        if m.tool_calls:
            if role != "assistant":
                raise BadRequest(f"messages[{i}]: only assistant messages carry tool_calls", param="messages")
            message["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        messages.append(message)
    total = sum(len(m["content"]) + len(json.dumps(m.get("tool_calls") or "")) for m in messages)
    if total > max_chars:
        raise BadRequest(f"the messages hold {total} characters; the limit is {max_chars}",
                         param="messages", status=413)
    return messages


def _logprobs_of(req: ChatCompletionRequest | CompletionRequest) -> int | None:
    """The request's ``SamplingParams.logprobs`` (None: not asked)."""
    if isinstance(req, CompletionRequest):
        return req.logprobs
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidParameter("top_logprobs needs logprobs: true", name="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


def to_params(req: ChatCompletionRequest | CompletionRequest, defaults: SamplingParams,
              limits: RequestLimits | None = None) -> SamplingParams:
    if req.n != 1:
        raise InvalidParameter("only n=1 is supported", name="n")
    changes: dict[str, Any] = {"logprobs": _logprobs_of(req)}
    max_new = req.max_tokens
    if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens is not None:
        max_new = req.max_completion_tokens
    for name, value in (("max_new_tokens", max_new), ("temperature", req.temperature),
                        ("top_p", req.top_p), ("top_k", req.top_k), ("min_p", req.min_p),
                        ("repetition_penalty", req.repetition_penalty), ("seed", req.seed)):
        if value is not None:
            changes[name] = value
    if req.stop is not None:
        stop = check_stop(req.stop, limits or RequestLimits())
        changes["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    try:
        return defaults.replace(**changes)
    except InvalidParameter as exc:
        if exc.name == "max_new_tokens":
            exc.name = "max_tokens"
        if exc.name == "logprobs" and isinstance(req, ChatCompletionRequest):
            exc.name = "top_logprobs"
        raise


def usage_of(*fins: Finished) -> dict[str, int]:
    """OpenAI's ``usage`` of one generation, or summed over a batch's (as vLLM sums it)."""
    prompt = sum(f.usage.prompt_tokens for f in fins)
    completion = sum(f.usage.completion_tokens for f in fins)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


_Req = TypeVar("_Req", bound=BaseModel)


def read_request(raw: bytes, limits: RequestLimits, kind: type[_Req]) -> _Req:
    """The body through the shared JSON checks (depth, Unicode), then the model's validation
    (422 naming the field, as FastAPI's own body parsing would answer)."""
    try:
        data = parse_json_object(raw, limits)
    except InvalidJSON as exc:  # FastAPI's own body parsing answers 422 here
        raise BadRequest(str(exc), status=422) from exc
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc


def failure_response(service: Service, fin: Finished | None) -> JSONResponse | None:
    """The error response of a generation that did not finish well (None: it did)."""
    if fin is None or fin.finish_reason is FinishReason.CANCELLED:
        if not service.accepting:  # cancelled because the server stops: retry elsewhere or later
            return error_response(ShuttingDown("the server stopped before this reply was complete; "
                                               "retry on another replica, or once it is back"))
        return JSONResponse(error_body("the request was cancelled", "cancelled"), status_code=499)
    if fin.finish_reason is FinishReason.ERROR:  # a remote engine's failure is a bad gateway
        remote = service.capabilities.remote
        return JSONResponse(error_body(public_generation_error(fin),
                                       "upstream_error" if remote else "generation_error"),
                            status_code=502 if remote else 500)
    return None
