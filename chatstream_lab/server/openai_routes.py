"""OpenAI-compatible routes: ``POST /v1/chat/completions`` (stream and not) and ``GET /v1/models``.

Stateless: the conversation comes in ``messages``; sessions are not involved. A request that
sends OpenAI's ``user`` field is a session for the engine's KV reuse (``openai-user:<user>``): the
next request of that user prefills only what its messages add after the longest common token
prefix with that user's last request. Without ``user`` nothing is kept. Sampling fields map
to :class:`~chatstream_lab.config.SamplingParams` (``max_tokens`` / ``max_completion_tokens`` ->
``max_new_tokens``; ``top_k``, ``min_p`` and ``repetition_penalty`` are accepted as extensions).
A cancelled generation (client gone) is not reported; an engine error becomes an ``error`` object
in the stream, or HTTP 500 without streaming.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from ..config import SamplingParams
from ..errors import ChatStreamLabError, InvalidParameter
from ..types import Delta, Finished, FinishReason, Queued, StreamEvent
from .errors import BadRequest, error_body, error_response, public_generation_error
from .framing import sse_comment
from .streaming import EventStreamResponse, collect_final

if TYPE_CHECKING:
    from ..service import Service


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields we honour; others (``logprobs``, ``tools``...) are ignored, not rejected."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    user: str | None = Field(default=None, max_length=256)


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


def to_messages(req: ChatCompletionRequest, max_chars: int) -> list[dict[str, str]]:
    messages = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": _text_content(i, m.content)})
    total = sum(len(m["content"]) for m in messages)
    if total > max_chars:
        raise BadRequest(f"the messages hold {total} characters; the limit is {max_chars}",
                         param="messages", status=413)
    return messages


def to_params(req: ChatCompletionRequest, defaults: SamplingParams) -> SamplingParams:
    if req.n != 1:
        raise InvalidParameter("only n=1 is supported", name="n")
    changes: dict[str, Any] = {}
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    for name, value in (("max_new_tokens", max_new), ("temperature", req.temperature),
                        ("top_p", req.top_p), ("top_k", req.top_k), ("min_p", req.min_p),
                        ("repetition_penalty", req.repetition_penalty), ("seed", req.seed)):
        if value is not None:
            changes[name] = value
    if req.stop is not None:
        changes["stop"] = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop)
    try:
        return defaults.replace(**changes)
    except InvalidParameter as exc:
        if exc.name == "max_new_tokens":
            exc.name = "max_tokens"
        raise


class _ChunkEncoder:
    """Events -> ``chat.completion.chunk`` SSE frames (the OpenAI SDK's streaming format)."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model, "system_fingerprint": None}
        self.include_usage = include_usage
        self.started = False

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {**self.base, "choices": choices, **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()

    def _role(self) -> bytes:
        self.started = True
        return self._frame([{"index": 0, "delta": {"role": "assistant", "content": ""},
                             "finish_reason": None}])

    def encode(self, event: StreamEvent) -> bytes | None:
        if isinstance(event, Queued):
            return sse_comment(f"queued {event.position}")
        if isinstance(event, Delta):
            if not event.text:
                return None
            head = b"" if self.started else self._role()
            return head + self._frame([{"index": 0, "delta": {"content": event.text}, "finish_reason": None}])
        if isinstance(event, Finished):
            if event.finish_reason is FinishReason.ERROR:
                body = error_body(public_generation_error(event), "generation_error")
                return f"data: {json.dumps(body)}\n\n".encode()
            if event.finish_reason is FinishReason.CANCELLED:
                return None
            head = b"" if self.started else self._role()
            out = head + self._frame([{"index": 0, "delta": {}, "finish_reason": event.finish_reason.value}])
            if self.include_usage:
                out += self._frame([], usage=_usage(event))
            return out
        return None


def _usage(fin: Finished) -> dict[str, int]:
    u = fin.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def make_router(service: Service) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        model = service.model
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                            "owned_by": "chatstream_lab",
                                            "backend": str(getattr(model, "backend", "torch")),
                                            "config_id": service.config_id}]}

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest, request: Request
                               ) -> Response | EventStreamResponse:
        try:
            params = to_params(req, service.default_params)
            messages = to_messages(req, service.max_input_chars)
            session_key = None if not req.user else f"openai-user:{req.user}"
            stream = service.submit_encoded(service.encode(messages), params, session_key=session_key)
        except ChatStreamLabError as exc:
            return error_response(exc)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        model = service.model.name
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStreamResponse(stream, _ChunkEncoder(completion_id, model, include_usage),
                                       media_type="text/event-stream", closing=b"data: [DONE]\n\n")
        fin = await collect_final(stream, request.receive)
        if fin is None or fin.finish_reason is FinishReason.CANCELLED:
            return JSONResponse(error_body("the request was cancelled", "cancelled"), status_code=499)
        if fin.finish_reason is FinishReason.ERROR:  # a remote engine's failure is a bad gateway
            remote = getattr(service.model, "backend", "torch") == "remote"
            return JSONResponse(error_body(public_generation_error(fin),
                                           "upstream_error" if remote else "generation_error"),
                                status_code=502 if remote else 500)
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": fin.text},
                         "finish_reason": fin.finish_reason.value, "logprobs": None}],
            "usage": _usage(fin),
        })

    return router
