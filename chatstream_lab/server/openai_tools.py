"""OpenAI's shapes for structured requests and tool calls (``/v1/chat/completions``).

In: ``response_format``, ``tools``, ``tool_choice``, ``parallel_tool_calls`` -> one
:class:`~chatstream_lab.prompts.output_format.OutputFormat` (400 naming the field when a schema
cannot be compiled); ``tool`` messages and assistant ``tool_calls`` in ``messages``.

Out, not streamed: ``message.tool_calls`` (``id``, ``type``, ``function.name``,
``function.arguments``), ``content`` null when the reply is only calls, ``finish_reason
"tool_calls"``. Streamed: ``delta.tool_calls[i]`` with ``index``, ``id``, ``type`` and
``function.name`` once, when the call's tag opens, then ``function.arguments`` fragments as they
are generated (:class:`~chatstream_lab.prompts.tool_stream.ToolCallParser`). A reply cut by
``max_tokens`` keeps ``finish_reason "length"``, never ``tool_calls``.
"""

from __future__ import annotations

from typing import Any

from ..config import SamplingParams
from ..constraint import response_format_constraint
from ..prompts.output_format import OutputFormat, output_format
from ..prompts.tool_stream import CallArguments, CallStart, TextPart, ToolCallParser, ToolStreamPart, split_tool_calls
from ..types import FinishReason


def request_output_format(body: Any) -> OutputFormat:
    """The four OpenAI fields of a chat request body (a pydantic model with those attributes)."""
    return output_format(response_format_constraint(body.response_format), body.tools, body.tool_choice,
                         body.parallel_tool_calls)


def with_constraint(params: SamplingParams, fmt: OutputFormat) -> SamplingParams:
    """``params`` holding the request's constraint (a request without one keeps the served one)."""
    return params if fmt.constraint is None else params.replace(constraint=fmt.constraint)


def finish_reason(reason: FinishReason, called: bool) -> str:
    """``tool_calls`` when a reply that ended normally holds calls; the engine's reason otherwise."""
    return "tool_calls" if called and reason is FinishReason.STOP else reason.value


def reply_message(text: str, reason: FinishReason, fmt: OutputFormat) -> tuple[dict[str, Any], str]:
    """The non-streamed ``message`` and ``finish_reason`` of a finished reply."""
    if not fmt.calls_tools:
        return {"role": "assistant", "content": text}, reason.value
    content, calls, _complete = split_tool_calls(text)
    message: dict[str, Any] = {"role": "assistant", "content": content if (content.strip() or not calls) else None}
    if calls:
        message["tool_calls"] = [c.to_openai() for c in calls]
    return message, finish_reason(reason, bool(calls))


def _delta(part: ToolStreamPart) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"content": part.text}
    if isinstance(part, CallStart):
        return {"tool_calls": [{"index": part.index, "id": part.id, "type": "function",
                                "function": {"name": part.name, "arguments": ""}}]}
    if isinstance(part, CallArguments):
        return {"tool_calls": [{"index": part.index, "function": {"arguments": part.text}}]}
    return None  # CallEnd: nothing on the wire


class ToolCallDeltas:
    """Reply text -> the ``delta`` objects of ``chat.completion.chunk`` frames, as it streams."""

    def __init__(self) -> None:
        self._parser = ToolCallParser()

    @property
    def called(self) -> bool:
        return bool(self._parser.calls)

    def feed(self, text: str) -> list[dict[str, Any]]:
        return [d for d in map(_delta, self._parser.feed(text)) if d is not None]

    def finish(self) -> list[dict[str, Any]]:
        return [d for d in map(_delta, self._parser.finish()) if d is not None]
