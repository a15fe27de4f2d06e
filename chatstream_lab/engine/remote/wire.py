"""The OpenAI wire format as the remote engine speaks it: one request body, one streamed reply.

* token ids (a local tokenizer rendered the prompt): ``POST {url}/v1/completions`` with
  ``"prompt": [ids...]`` (or the decoded text, for an upstream that refuses ids);
* messages (no local tokenizer): ``POST {url}/v1/chat/completions``.

The reply is an event stream of ``data: {json}`` lines up to ``data: [DONE]``; each choice's text
goes into the request's :class:`~chatstream_lab.engine.core.rows.OutputRow` (stop strings held
back, output replacements applied). Failures are sorted into the two kinds the fail-over needs:
:class:`UpstreamDown` (the upstream itself failed: take it out) and :class:`Refused` (it refused
this one request: it stays in).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ...config import SamplingParams
from ...types import FinishReason
from ..core.rows import OutputRow

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"
# What makes an upstream report the ids it generates, so that a reply cut mid-generation can go
# on elsewhere from exactly those ids: vLLM's ``return_token_ids``; llama-server puts them in its
# logprobs entries (one alternative: the cheapest request that carries the id)
ASK_FOR_IDS: dict[str, Any] = {"return_token_ids": True, "logprobs": 1}


class UpstreamDown(Exception):
    """The upstream itself failed (unreachable, 5xx, timeout, malformed stream): take it out."""


class Refused(Exception):
    """The upstream refused this one request (4xx): the upstream stays in, the request fails."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one successful attempt ended."""

    reason: FinishReason
    prompt_tokens: int | None
    completion_tokens: int


def sampling_body(params: SamplingParams, *, stops: Sequence[str], stop_token_ids: Sequence[int],
                  model: str | None) -> dict[str, Any]:
    """The streamed request's fields besides the prompt (sampling parameters passed through)."""
    p = params
    body: dict[str, Any] = {
        "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": p.max_new_tokens, "temperature": p.temperature,
        "top_p": 1.0 if p.greedy else p.top_p,
        "top_k": 1 if p.greedy else p.top_k,  # 0 = off (llama-server, vLLM); 1 makes greedy exact
        "min_p": p.min_p,  # sent even when 0: llama-server's own default is 0.05
        "repetition_penalty": p.repetition_penalty,  # vLLM's name
        "repeat_penalty": p.repetition_penalty,  # llama-server's name (each ignores the other)
    }
    if model:
        body["model"] = model
    if p.seed is not None:
        body["seed"] = p.seed
    if stops:
        body["stop"] = list(stops)
    if stop_token_ids:
        body["stop_token_ids"] = list(stop_token_ids)
    return body


async def stream_reply(client: httpx.AsyncClient, url: str, path: str, body: dict[str, Any],
                       headers: dict[str, str], row: OutputRow) -> Outcome:
    """POST ``body`` and stream the reply's text into ``row``.

    Raises:
        Refused: a 4xx (but 408 / 429), or an error event inside the stream.
        UpstreamDown: any other status, a malformed stream, or one that ends without a finish.
        httpx.HTTPError: transport failures (the caller classifies them).
    """
    async with client.stream("POST", url + path, json=body, headers=headers) as resp:
        if resp.status_code != 200:
            message = error_message((await resp.aread()).decode("utf-8", "replace"))
            if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                raise Refused(resp.status_code, message)
            raise UpstreamDown(f"HTTP {resp.status_code}: {message}")
        return await _consume(resp, row)


async def _consume(resp: httpx.Response, row: OutputRow) -> Outcome:
    """Chunks -> the row's pipeline; returning early (a stop string) closes the response."""
    finish: str | None = None
    usage: dict[str, Any] = {}
    async with contextlib.aclosing(sse_objects(resp)) as chunks:
        async for chunk in chunks:
            if isinstance(chunk.get("usage"), dict):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if row.take_text(choice_text(choice), choice_ids(choice)):
                    return Outcome(FinishReason.STOP, int_or_none(usage.get("prompt_tokens")), row.produced)
                finish = choice.get("finish_reason") or finish
    if finish is None:
        raise UpstreamDown("malformed stream: it ended without a finish_reason")
    row.flush()
    reason = FinishReason.LENGTH if finish == "length" else FinishReason.STOP
    completion = int_or_none(usage.get("completion_tokens"))
    return Outcome(reason, int_or_none(usage.get("prompt_tokens")),
                   row.produced if completion is None else completion)


async def sse_objects(resp: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON objects of an OpenAI-style event stream, up to ``data: [DONE]``.

    A line that is not JSON, or an ``error`` object, means the upstream is not speaking the
    protocol (or gave up on the request): both end the attempt.
    """
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, ": comments", "event:" lines
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise UpstreamDown(f"malformed stream: {data[:80]!r} is not JSON") from exc
        if not isinstance(obj, dict):
            raise UpstreamDown(f"malformed stream: {data[:80]!r} is not an object")
        if obj.get("error"):  # this request failed there; the upstream itself may be fine
            raise Refused(502, f"error event: {error_message(json.dumps(obj))}")
        yield obj


def choice_text(choice: Any) -> str:
    """A completions choice's ``text`` or a chat choice's ``delta.content``."""
    if not isinstance(choice, dict):
        return ""
    text = choice.get("text")
    if text is None:
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    return text if isinstance(text, str) else ""


def choice_ids(choice: Any) -> list[int] | None:
    """The token ids a streamed choice decodes from, where the upstream reports them (None: it
    does not): vLLM's ``token_ids`` (``return_token_ids``), llama-server's ``logprobs.content[].id``,
    or vLLM's ``"token_id:N"`` strings (``--return-tokens-as-token-ids``)."""
    if not isinstance(choice, dict):
        return None
    ids = choice.get("token_ids")
    if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
        return list(ids)
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if isinstance(content, list) and all(isinstance(e, dict) and isinstance(e.get("id"), int) for e in content):
        return [int(e["id"]) for e in content]
    tokens = logprobs.get("tokens")
    if isinstance(tokens, list) and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        return [int(t.split(":", 1)[1]) for t in tokens]
    return None


def names_id_fields(message: str) -> bool:
    """A refusal that names a field of :data:`ASK_FOR_IDS` (e.g. a server whose backend reports
    no logprobs): ask that upstream without them."""
    lowered = message.lower()
    return any(name in lowered for name in ASK_FOR_IDS)


def error_message(body: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's start."""
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    except (ValueError, AttributeError):
        pass
    return body.strip()[:300] or "no body"


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


__all__ = ["ASK_FOR_IDS", "Outcome", "Refused", "UpstreamDown", "choice_ids", "choice_text", "error_message",
           "names_id_fields", "sampling_body", "sse_objects", "stream_reply"]
