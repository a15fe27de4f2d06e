"""``POST /v1/completions``: raw prompts (text or token ids), no template, one choice per prompt.

``prompt`` takes vLLM's (and OpenAI's) four shapes: ``str | list[str] | list[int] |
list[list[int]]``. A list of strings or of id lists is a batch: every prompt is its own
generation through the shared gate (so a batch of B takes B places of
``num_of_concurrent_executions + max_queue_size``), and the reply holds one choice per prompt in
prompt order (``index`` = the prompt's position; ``n`` is 1) with the usage summed. Evaluation
harnesses send their batches this way (lm-evaluation-harness ``--batch_size``).

``logprobs`` (an int) returns OpenAI's legacy object per choice: one entry per generated token, the
stop token that ended the reply included, exactly as ``usage.completion_tokens`` counts them; with
``echo`` the prompt's tokens come first (scored by the engine thread in one teacher-forced forward,
the first one ``null``), so the arrays hold prompt + generated. ``max_tokens: 0`` with ``echo`` only
scores. Which alternatives ``top_logprobs`` holds: :mod:`.logprobs_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..config import SamplingParams
from ..constraint import response_format_constraint
from ..engine.core.validation import check_prompt, tokenizer_vocab_size
from ..errors import InvalidParameter
from ..prompts import EncodedPrompt
from ..prompts.output_format import output_format
from ..types import Delta, Finished, FinishReason, Queued, StreamEvent, TokenLogprob
from .errors import BadRequest, error_body, public_generation_error
from .framing import sse_comment
from .logprobs_wire import CompletionLogprobs
from .openai_requests import CompletionRequest, failure_response, to_params, usage_of
from .openai_tools import with_constraint
from .streaming import EventStreamResponse, collect_finals

if TYPE_CHECKING:
    from ..engine.core.stream import RequestStream
    from ..service import Service

Wire = dict[str, Any]


def prompt_batch(prompt: str | list[int] | list[str] | list[list[int]], tokenizer: Any) -> list[list[int]]:
    """The prompts as token ids, one list per prompt. Given ids are taken as they are; text is
    tokenized as it is (no template: special-token strings in it are the model's control tokens,
    as in any raw completions API)."""
    items = _prompt_items(prompt)
    if not items:
        raise BadRequest("the prompt is empty", param="prompt")
    return [_ids_of(item, tokenizer, f"prompt[{i}]" if len(items) > 1 else "the prompt")
            for i, item in enumerate(items)]


def _prompt_items(prompt: Any) -> list[str | list[int]]:
    """One prompt (a text, or a list of ids) as a batch of one; a batch (texts, id lists) as it is."""
    one = isinstance(prompt, str) or (bool(prompt) and all(isinstance(i, int) for i in prompt))
    return [prompt] if one else list(prompt)


def _ids_of(item: str | list[int], tokenizer: Any, name: str) -> list[int]:
    if isinstance(item, str):
        if tokenizer is None:
            raise BadRequest("this model has no local tokenizer: send the prompt as token ids", param="prompt")
        ids = [int(i) for i in tokenizer.encode(item)]
    else:
        ids = [int(i) for i in item]
    if not ids:
        raise BadRequest(f"{name} is empty", param="prompt")
    return ids


@contextlib.contextmanager
def _naming_prompt(index: int, batch_size: int) -> Iterator[None]:
    """The engine checks each prompt (ids in the vocabulary, the window) before anything is queued;
    in a batch, its 400 also says which prompt it was."""
    try:
        yield
    except InvalidParameter as exc:
        if batch_size == 1 or exc.name != "prompt":
            raise
        raise InvalidParameter(f"prompt[{index}]: {exc}", name=exc.name) from exc


def _check_batch_fits(service: Service, size: int) -> None:
    """A batch larger than the gate's places could never be admitted whole: say so now, with the
    fix, instead of a 429 that no retry would get past."""
    limits = service.limits
    places = limits.num_of_concurrent_executions + limits.max_queue_size
    if size > places:
        raise BadRequest(
            f"a batch of {size} prompts needs {size} places at once; this server has {places} "
            f"(num_of_concurrent_executions={limits.num_of_concurrent_executions} + "
            f"max_queue_size={limits.max_queue_size}): send smaller batches, or serve with a larger "
            "max_queue_size", param="prompt")


@dataclass(frozen=True)
class _Echo:
    """One prompt's text and, when logprobs were asked, its wire logprobs (first token: null)."""

    text: str
    wire: Wire | None


async def _echo(service: Service, ids: list[int], params: SamplingParams, logprobs: CompletionLogprobs, *,
                index: int = 0, batch_size: int = 1) -> _Echo:
    """The prompt echoed: its text, decoded by the local tokenizer (so its ids are checked against
    that tokenizer first, with the engine's own check: a scoring-only request queues nothing that
    would), and, when asked, its logprobs, scored by the engine."""
    tokenizer = service.model.tokenizer
    with _naming_prompt(index, batch_size):
        check_prompt(ids, window=0, vocab_size=tokenizer_vocab_size(tokenizer))
    text = tokenizer.decode(ids) if tokenizer is not None else ""
    if params.logprobs is None:
        return _Echo(text, None)
    from ..engine.core.detokenize import DetokenizerFactory

    if tokenizer is None:
        raise InvalidParameter("echo with logprobs needs the model's tokenizer", name="echo")
    first_text, first_raw = DetokenizerFactory(tokenizer).pieces()(ids[0])
    scored: tuple[TokenLogprob, ...] = ()
    if len(ids) > 1:
        with _naming_prompt(index, batch_size):
            job = service.generator.start().score(ids, 1, top=params.logprobs)
        scored = await asyncio.wrap_future(job)
    return _Echo(text, logprobs.chunk([None, *scored], texts=[first_text], raws=[first_raw]))


def _merge(a: Wire | None, b: Wire) -> Wire:
    return b if a is None else {k: a[k] + b[k] for k in a}


def _submit_all(service: Service, batch: list[list[int]], params: SamplingParams) -> list[RequestStream]:
    """One generation per prompt; if the gate refuses one (429), the ones already in are cancelled
    (queued ones never run), so a refused batch leaves nothing behind."""
    streams: list[RequestStream] = []
    try:
        for i, ids in enumerate(batch):
            with _naming_prompt(i, len(batch)):
                streams.append(service.submit_encoded(EncodedPrompt(tuple(ids)), params))
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise
    return streams


async def completion(service: Service, req: CompletionRequest, request: Request) -> Response | EventStreamResponse:
    """The route: validate, submit every prompt, then answer (streamed: one prompt only)."""
    batch = prompt_batch(req.prompt, service.model.tokenizer)
    score_only = req.max_tokens == 0
    if score_only and not req.echo:
        raise InvalidParameter("max_tokens 0 generates nothing: set echo to score the prompt", name="max_tokens")
    if req.stream and len(batch) > 1:
        raise BadRequest(f"stream takes one prompt, got a batch of {len(batch)}: send the batch without "
                         "streaming, or one request per prompt", param="stream")
    base = req.model_copy(update={"max_tokens": 1}) if score_only else req
    params = to_params(base, service.default_params.replace(stop=()), service.request_limits)
    params = with_constraint(params, output_format(response_format_constraint(req.response_format)))
    if not score_only:
        _check_batch_fits(service, len(batch))
    accumulators = [CompletionLogprobs() for _ in batch]
    streams = [] if score_only else _submit_all(service, batch, params)
    try:
        echoes = await asyncio.gather(*(_echo(service, ids, params, acc, index=i, batch_size=len(batch))
                                        for i, (ids, acc) in enumerate(zip(batch, accumulators)))) \
            if req.echo else None
    except BaseException:
        for stream in streams:
            stream.cancel()
        raise
    cid, model = f"cmpl-{uuid.uuid4().hex}", service.model.name
    if score_only:
        assert echoes is not None
        choices = [_choice(i, e.text, "length", e.wire) for i, e in enumerate(echoes)]
        n_prompt = sum(len(ids) for ids in batch)
        body = _body(cid, model, choices, {"prompt_tokens": n_prompt, "completion_tokens": 0,
                                           "total_tokens": n_prompt})
        if req.stream:
            return StreamingResponse(_score_only_stream(body), media_type="text/event-stream")
        return JSONResponse(body)
    want_logprobs = params.logprobs is not None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        encoder = _CompletionChunkEncoder(cid, model, include_usage, echoes[0] if echoes else None,
                                          accumulators[0], want_logprobs)
        return EventStreamResponse(streams[0], encoder, media_type="text/event-stream", closing=b"data: [DONE]\n\n")
    return await _collect(service, request, streams, echoes, accumulators, want_logprobs, cid, model)


async def _collect(service: Service, request: Request, streams: list[RequestStream], echoes: list[_Echo] | None,
                   accumulators: list[CompletionLogprobs], want_logprobs: bool, cid: str, model: str) -> Response:
    """Wait for every prompt's generation, then one body with a choice per prompt."""
    generated: list[list[TokenLogprob]] = [[] for _ in streams]
    finals = await collect_finals(streams, request.receive,
                                  on_delta=lambda i, d: generated[i].extend(d.logprobs))
    for fin in finals:
        failed = failure_response(service, fin)
        if failed is not None:
            return failed
    done = [fin for fin in finals if fin is not None]
    choices = []
    for i, fin in enumerate(done):
        echo = echoes[i] if echoes is not None else None
        wire = echo.wire if echo is not None else None
        if want_logprobs:
            wire = _merge(wire, accumulators[i].chunk(generated[i]))
        text = (echo.text if echo is not None else "") + fin.text
        choices.append(_choice(i, text, fin.finish_reason.value, wire))
    return JSONResponse(_body(cid, model, choices, usage_of(*done)))


def _choice(index: int, text: str, finish: str | None, wire: Wire | None) -> Wire:
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": wire}


def _body(cid: str, model: str, choices: list[Wire], usage: dict[str, int] | None) -> Wire:
    body: Wire = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                  "system_fingerprint": None, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


async def _score_only_stream(body: Wire) -> AsyncIterator[bytes]:
    yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()
    yield b"data: [DONE]\n\n"


class _CompletionChunkEncoder:
    """Events -> ``text_completion`` SSE frames; the echoed prompt goes first. A delta that carries
    only a token's logprob (the stop token, a token inside a held-back stop string) is a frame with
    empty text, so the streamed arrays hold what the non-streamed ones hold."""

    def __init__(self, cid: str, model: str, include_usage: bool, echo: _Echo | None,
                 logprobs: CompletionLogprobs, want_logprobs: bool) -> None:
        self.cid, self.model, self.include_usage = cid, model, include_usage
        self.echo = echo
        self.logprobs = logprobs
        self.want_logprobs = want_logprobs

    def _frame(self, text: str, finish: str | None, wire: Wire | None, usage: dict[str, int] | None = None) -> bytes:
        body = _body(self.cid, self.model, [_choice(0, text, finish, wire)], usage)
        return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()

    def _head(self) -> bytes:
        echo, self.echo = self.echo, None
        return b"" if echo is None else self._frame(echo.text, None, echo.wire)

    def encode(self, event: StreamEvent) -> bytes | None:
        if isinstance(event, Queued):
            return sse_comment(f"queued {event.position}")
        if isinstance(event, Delta):
            wire = self.logprobs.chunk(event.logprobs) if self.want_logprobs and event.logprobs else None
            if not event.text and wire is None:
                return None
            return self._head() + self._frame(event.text, None, wire)
        if isinstance(event, Finished):
            if event.finish_reason is FinishReason.ERROR:
                body = error_body(public_generation_error(event), "generation_error")
                return f"data: {json.dumps(body)}\n\n".encode()
            if event.finish_reason is FinishReason.CANCELLED:
                return None
            out = self._head() + self._frame("", event.finish_reason.value, None)
            if self.include_usage:
                usage = {**_body(self.cid, self.model, [], usage_of(event))}
                out += f"data: {json.dumps(usage)}\n\n".encode()
            return out
        return None
