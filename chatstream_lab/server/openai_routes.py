"""OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (stream and
not) and ``GET /v1/models``.

Stateless: the conversation comes in ``messages`` (or a raw ``prompt``: text, or token ids);
sessions are not involved. A chat request that sends OpenAI's ``user`` field is a session for the
engine's KV reuse (``openai-user:<user>``): the next request of that user prefills only what its
messages add after the longest common token prefix with that user's last request. Without ``user``
nothing is kept. Sampling fields map to :class:`~chatstream_lab.config.SamplingParams`
(``max_tokens`` / ``max_completion_tokens`` -> ``max_new_tokens``; ``top_k``, ``min_p`` and
``repetition_penalty`` are accepted as extensions). Chat ``logprobs`` + ``top_logprobs`` and
completions ``logprobs`` (+ ``echo``: the prompt's logprobs, computed by the engine thread in one
teacher-forced forward) come back in OpenAI's shapes (:mod:`.logprobs_wire`).
A cancelled generation (client gone) is not reported; an engine error becomes an ``error`` object
in the stream, or HTTP 500 without streaming.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..config import RequestLimits, SamplingParams
from ..errors import ChatStreamLabError, InvalidParameter
from ..prompts import EncodedPrompt
from ..types import Delta, Finished, FinishReason, Queued, StreamEvent, TokenLogprob
from .errors import BadRequest, error_body, error_response, public_generation_error
from .framing import sse_comment
from .logprobs_wire import CompletionLogprobs, chat_content
from .requests import InvalidJSON, check_stop, parse_json_object
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
    """The fields we honour; others (``tools``, ``response_format``...) are ignored, not rejected."""

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
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = Field(default=None, max_length=256)


class CompletionRequest(BaseModel):
    """``/v1/completions``: a raw prompt (text or token ids), no template; ``logprobs`` is an int."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | list[int] | list[str] | list[list[int]]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = 16
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
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


def to_messages(req: ChatCompletionRequest, max_chars: int, max_messages: int = 256) -> list[dict[str, str]]:
    if len(req.messages) > max_messages:
        raise BadRequest(f"messages holds {len(req.messages)} entries; the limit is {max_messages} "
                         "(max_messages)", param="messages")
    messages = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": _text_content(i, m.content)})
    total = sum(len(m["content"]) for m in messages)
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
            if not event.text and not event.logprobs:
                return None
            head = b"" if self.started else self._role()
            choice: dict[str, Any] = {"index": 0, "delta": {"content": event.text}, "finish_reason": None}
            if event.logprobs:
                choice["logprobs"] = {"content": chat_content(event.logprobs), "refusal": None}
            return head + self._frame([choice])
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
                                            "backend": str(getattr(model, "backend", "torch")),
                                            "precision": str(getattr(model, "dtype", "")),
                                            "precision_source": _precision_source(model),
                                            "config_id": service.config_id}]}

    @router.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response | EventStreamResponse:
        try:
            req = read_request(await request.body(), service.request_limits, CompletionRequest)
            return await _completion(service, req, request)
        except ChatStreamLabError as exc:
            return error_response(exc)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response | EventStreamResponse:
        limits = service.request_limits
        try:
            req = read_request(await request.body(), limits, ChatCompletionRequest)
            params = to_params(req, service.default_params, limits)
            messages = to_messages(req, limits.max_input_chars, limits.max_messages)
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
        lps: list[TokenLogprob] = []
        fin = await collect_final(stream, request.receive, on_delta=lambda d: lps.extend(d.logprobs))
        failed = _failure(service, fin)
        if failed is not None:
            return failed
        assert fin is not None
        logprobs = {"content": chat_content(lps), "refusal": None} if params.logprobs is not None else None
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": fin.text},
                         "finish_reason": fin.finish_reason.value, "logprobs": logprobs}],
            "usage": _usage(fin),
        })

    return router


def _failure(service: Service, fin: Finished | None) -> JSONResponse | None:
    """The error response of a generation that did not finish well (None: it did)."""
    if fin is None or fin.finish_reason is FinishReason.CANCELLED:
        return JSONResponse(error_body("the request was cancelled", "cancelled"), status_code=499)
    if fin.finish_reason is FinishReason.ERROR:  # a remote engine's failure is a bad gateway
        remote = getattr(service.model, "backend", "torch") == "remote"
        return JSONResponse(error_body(public_generation_error(fin),
                                       "upstream_error" if remote else "generation_error"),
                            status_code=502 if remote else 500)
    return None


# -- /v1/completions ------------------------------------------------------------------------------
def prompt_ids(req: CompletionRequest, tokenizer: Any) -> list[int]:
    """The prompt as token ids: given ids are taken as they are; text is tokenized as it is (no
    template: special-token strings in it are the model's control tokens, as in any raw
    completions API)."""
    prompt: Any = req.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and all(isinstance(i, int) for i in prompt):
        ids = [int(i) for i in prompt]
    elif isinstance(prompt, str):
        if tokenizer is None:
            raise BadRequest("this model has no local tokenizer: send the prompt as token ids",
                             param="prompt")
        ids = [int(i) for i in tokenizer.encode(prompt)]
    else:
        raise BadRequest("prompt must be a string or a list of token ids (one prompt)", param="prompt")
    if not ids:
        raise BadRequest("the prompt is empty", param="prompt")
    return ids


class _Echo:
    """The prompt's text and logprobs for ``echo`` (first token: null logprob, as OpenAI)."""

    def __init__(self, text: str, wire: dict[str, Any] | None) -> None:
        self.text = text
        self.wire = wire


async def _echo(service: Service, ids: list[int], params: SamplingParams,
                logprobs: CompletionLogprobs) -> _Echo:
    tokenizer = service.model.tokenizer
    text = tokenizer.decode(ids) if tokenizer is not None else ""
    if params.logprobs is None:
        return _Echo(text, None)
    from ..engine.detokenize import DetokenizerFactory

    if tokenizer is None:
        raise InvalidParameter("echo with logprobs needs the model's tokenizer", name="echo")
    first_text, first_raw = DetokenizerFactory(tokenizer).pieces()(ids[0])
    scored: tuple[TokenLogprob, ...] = ()
    if len(ids) > 1:
        scored = await asyncio.wrap_future(service.generator.start().score(ids, 1, top=params.logprobs))
    wire = logprobs.chunk([None, *scored], texts=[first_text], raws=[first_raw])
    return _Echo(text, wire)


def _merge(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    return b if a is None else {k: a[k] + b[k] for k in a}


async def _completion(service: Service, req: CompletionRequest, request: Request) -> Response | EventStreamResponse:
    ids = prompt_ids(req, service.model.tokenizer)
    score_only = req.max_tokens == 0
    if score_only and not req.echo:
        raise InvalidParameter("max_tokens 0 generates nothing: set echo to score the prompt",
                               name="max_tokens")
    base = req.model_copy(update={"max_tokens": 1}) if score_only else req
    params = to_params(base, service.default_params.replace(stop=()), service.request_limits)
    logprobs = CompletionLogprobs()
    stream = None if score_only else service.submit_encoded(EncodedPrompt(tuple(ids)), params)
    try:
        echo = await _echo(service, ids, params, logprobs) if req.echo else None
    except BaseException:
        if stream is not None:
            stream.cancel()
        raise
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    model = service.model.name
    if stream is None:
        assert echo is not None
        body = _completion_body(completion_id, model, echo.text, "length", echo.wire,
                                {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)})
        if req.stream:
            return StreamingResponse(_score_only_stream(body), media_type="text/event-stream")
        return JSONResponse(body)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        encoder = _CompletionChunkEncoder(completion_id, model, include_usage, echo, logprobs,
                                          params.logprobs is not None)
        return EventStreamResponse(stream, encoder, media_type="text/event-stream", closing=b"data: [DONE]\n\n")
    lps: list[TokenLogprob] = []
    fin = await collect_final(stream, request.receive, on_delta=lambda d: lps.extend(d.logprobs))
    failed = _failure(service, fin)
    if failed is not None:
        return failed
    assert fin is not None
    wire = echo.wire if echo is not None else None
    if params.logprobs is not None:
        wire = _merge(wire, logprobs.chunk(lps))
    text = (echo.text if echo is not None else "") + fin.text
    return JSONResponse(_completion_body(completion_id, model, text, fin.finish_reason.value, wire, _usage(fin)))


def _completion_body(cid: str, model: str, text: str, finish: str | None, wire: dict[str, Any] | None,
                     usage: dict[str, int] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                            "system_fingerprint": None,
                            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": wire}]}
    if usage is not None:
        body["usage"] = usage
    return body


async def _score_only_stream(body: dict[str, Any]) -> AsyncIterator[bytes]:
    yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()
    yield b"data: [DONE]\n\n"


class _CompletionChunkEncoder:
    """Events -> ``text_completion`` SSE frames; the echoed prompt goes first."""

    def __init__(self, cid: str, model: str, include_usage: bool, echo: _Echo | None,
                 logprobs: CompletionLogprobs, want_logprobs: bool) -> None:
        self.cid, self.model, self.include_usage = cid, model, include_usage
        self.echo = echo
        self.logprobs = logprobs
        self.want_logprobs = want_logprobs

    def _frame(self, text: str, finish: str | None, wire: dict[str, Any] | None,
               usage: dict[str, int] | None = None) -> bytes:
        body = _completion_body(self.cid, self.model, text, finish, wire, usage)
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()

    def _head(self) -> bytes:
        echo, self.echo = self.echo, None
        return b"" if echo is None else self._frame(echo.text, None, echo.wire)

    def encode(self, event: StreamEvent) -> bytes | None:
        if isinstance(event, Queued):
            return sse_comment(f"queued {event.position}")
        if isinstance(event, Delta):
            if not event.text and not event.logprobs:
                return None
            wire = self.logprobs.chunk(event.logprobs) if self.want_logprobs else None
            return self._head() + self._frame(event.text, None, wire)
        if isinstance(event, Finished):
            if event.finish_reason is FinishReason.ERROR:
                body = error_body(public_generation_error(event), "generation_error")
                return f"data: {json.dumps(body)}\n\n".encode()
            if event.finish_reason is FinishReason.CANCELLED:
                return None
            out = self._head() + self._frame("", event.finish_reason.value, None)
            if self.include_usage:
                body = {**_completion_body(self.cid, self.model, "", None, None, _usage(event)), "choices": []}
                out += f"data: {json.dumps(body)}\n\n".encode()
            return out
        return None
