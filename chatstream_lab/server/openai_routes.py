"""OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (stream and
not) and ``GET /v1/models``.

Stateless: the conversation comes in ``messages`` (or a raw ``prompt``, one or a batch:
:mod:`.completions`); sessions are not involved. A chat request that sends OpenAI's ``user`` field
is a session for the engine's KV reuse (``openai-user:<user>``): the next request of that user
prefills only what its messages add after the longest common token prefix with that user's last
request. Without ``user`` nothing is kept. Request bodies and their mapping to sampling parameters:
:mod:`.openai_requests`. Chat ``logprobs`` + ``top_logprobs`` come back in OpenAI's shapes
(:mod:`.logprobs_wire`), one entry per generated token, the stop token included.
``response_format``, ``tools``, ``tool_choice`` and ``parallel_tool_calls`` (and ``tool`` /
``tool_calls`` messages) are honoured, in OpenAI's shapes (:mod:`.openai_tools`); a schema that
cannot be compiled is a 400 naming its field, before anything is queued. ``/v1/completions`` takes
``response_format`` too (vLLM does).
A cancelled generation (client gone) is not reported; an engine error becomes an ``error`` object
in the stream, or HTTP 500 without streaming.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from ..errors import ChatStreamLabError
from ..types import Delta, Finished, FinishReason, Queued, StreamEvent, TokenLogprob
from .completions import completion
from .errors import error_body, error_response, public_generation_error
from .framing import sse_comment
from .logprobs_wire import chat_content
from .openai_requests import (
    ChatCompletionRequest,
    CompletionRequest,
    failure_response,
    read_request,
    to_messages,
    to_params,
    usage_of,
)
from .openai_tools import ToolCallDeltas, finish_reason, reply_message, request_output_format, with_constraint
from .streaming import EventStreamResponse, collect_final

if TYPE_CHECKING:
    from ..service import Service


class _ChunkEncoder:
    """Events -> ``chat.completion.chunk`` SSE frames (the OpenAI SDK's streaming format)."""

    def __init__(self, completion_id: str, model: str, include_usage: bool,
                 tools: ToolCallDeltas | None = None) -> None:
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": model, "system_fingerprint": None}
        self.include_usage = include_usage
        self.started = False
        self.tools = tools  # set when the reply may hold tool calls: text is parsed for them

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
            if not event.text and not event.logprobs:
                return None
            head = b"" if self.started else self._role()
            deltas = [{"content": event.text}] if self.tools is None else self.tools.feed(event.text)
            if event.logprobs and not deltas:
                deltas = [{"content": ""}]
            frames = []
            for i, delta in enumerate(deltas):
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
                if event.logprobs and i == 0:
                    choice["logprobs"] = {"content": chat_content(event.logprobs), "refusal": None}
                frames.append(self._frame([choice]))
            return head + b"".join(frames) if frames else None
        if isinstance(event, Finished):
            if event.finish_reason is FinishReason.ERROR:
                body = error_body(public_generation_error(event), "generation_error")
                return f"data: {json.dumps(body)}\n\n".encode()
            if event.finish_reason is FinishReason.CANCELLED:
                return None
            head = b"" if self.started else self._role()
            rest = b"".join(self._frame([{"index": 0, "delta": d, "finish_reason": None}])
                            for d in (self.tools.finish() if self.tools is not None else ()))
            reason = finish_reason(event.finish_reason, self.tools is not None and self.tools.called)
            out = head + rest + self._frame([{"index": 0, "delta": {}, "finish_reason": reason}])
            if self.include_usage:
                out += self._frame([], usage=usage_of(event))
            return out
        return None


def _precision_source(model: Any) -> str:
    """Who chose the precision: the calibration (fresh or cached), a dtype override, or the dtype."""
    choice = getattr(model, "precision", None)
    return str(getattr(choice, "source", "dtype"))


def make_router(service: Service) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        model = service.model
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                            "owned_by": "chatstream_lab",
                                            "backend": service.backend,
                                            "precision": str(getattr(model, "dtype", "")),
                                            "precision_source": _precision_source(model),
                                            "config_id": service.config_id}]}

    @router.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response | EventStreamResponse:
        try:
            req = read_request(await request.body(), service.request_limits, CompletionRequest)
            return await completion(service, req, request)
        except ChatStreamLabError as exc:
            return error_response(exc)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response | EventStreamResponse:
        limits = service.request_limits
        try:
            req = read_request(await request.body(), limits, ChatCompletionRequest)
            fmt = request_output_format(req)
            params = with_constraint(to_params(req, service.default_params, limits), fmt)
            messages = to_messages(req, limits.max_input_chars, limits.max_messages)
            session_key = None if not req.user else f"openai-user:{req.user}"
            stream = service.submit_encoded(service.encode(messages, tools=fmt.tools), params,
                                            session_key=session_key)
        except ChatStreamLabError as exc:
            return error_response(exc)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        model = service.model.name
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            tools = ToolCallDeltas() if fmt.calls_tools else None
            return EventStreamResponse(stream, _ChunkEncoder(completion_id, model, include_usage, tools),
                                       media_type="text/event-stream", closing=b"data: [DONE]\n\n")
        lps: list[TokenLogprob] = []
        fin = await collect_final(stream, request.receive, on_delta=lambda d: lps.extend(d.logprobs))
        failed = failure_response(service, fin)
        if failed is not None:
            return failed
        assert fin is not None
        logprobs = {"content": chat_content(lps), "refusal": None} if params.logprobs is not None else None
        message, reason = reply_message(fin.text, fin.finish_reason, fmt)
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": logprobs}],
            "usage": usage_of(fin),
        })

    return router
