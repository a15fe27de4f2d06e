"""What one request asks its reply to look like: a response format, tools, or both.

:func:`output_format` reads OpenAI's four fields (``response_format``, ``tools``, ``tool_choice``,
``parallel_tool_calls``; the notebook passes the same, or a pydantic class / schema dict as
``response_format``) into an :class:`OutputFormat`: the one
:class:`~chatstream_lab.constraint.Constraint` the engine enforces and the
:class:`~chatstream_lab.prompts.tools.ToolSpec` the prompt renders. Every schema is compiled here
(cached) so a bad one is an :class:`~chatstream_lab.errors.InvalidParameter` naming its field
(``tools[1].function.parameters``) before anything is queued.

With tools and a response format together (vLLM #16313), ``tool_choice`` ``auto`` lets the model
either answer in the response format or call tools; ``required`` and a named tool ignore the
response format (a call is the reply).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..constraint import Constraint, ConstraintKind, response_format_constraint
from ..errors import GenerationError, InvalidParameter
from ..types import Finished, FinishReason
from .tool_stream import split_tool_calls
from .tools import ToolCall, ToolChoice, ToolChoiceMode, ToolSpec, tool_call_constraint, tool_call_format, tool_spec


@dataclass(frozen=True)
class OutputFormat:
    """The constraint to enforce (None: free text), the tools to render (None: none) and the
    response format alone (``response``: how a reply that is not a tool call is read)."""

    constraint: Constraint | None = None
    tools: ToolSpec | None = None
    response: Constraint | None = None

    @property
    def json_reply(self) -> bool:
        """True when a reply without calls is JSON (a JSON schema or JSON object format)."""
        return self.response is not None and self.response.kind in (ConstraintKind.JSON_SCHEMA,
                                                                   ConstraintKind.JSON_OBJECT)

    @property
    def calls_tools(self) -> bool:
        """True when the reply may hold tool calls (parse it for them)."""
        return self.tools is not None and self.tools.active


def as_constraint(value: Any) -> Constraint | None:
    """A notebook's ``response_format=``: a Constraint, a pydantic model class, a JSON schema
    dict, or OpenAI's ``response_format`` object (``{"type": "json_schema", ...}``)."""
    if value is None or isinstance(value, Constraint):
        return value
    if isinstance(value, dict) and value.get("type") in ("text", "json_object", "json_schema"):
        return response_format_constraint(value)
    return Constraint.json_schema(value)


def _format_of(constraint: Constraint) -> dict[str, Any]:
    """A response constraint as a structural-tag format (to combine it with tool calls)."""
    if constraint.kind is ConstraintKind.JSON_SCHEMA:
        return {"type": "json_schema", "json_schema": constraint.schema}
    if constraint.kind is ConstraintKind.JSON_OBJECT:
        return {"type": "json_schema", "json_schema": {"type": "object"}}
    if constraint.kind is ConstraintKind.REGEX:
        return {"type": "regex", "pattern": constraint.spec}
    raise InvalidParameter("a structural tag cannot be combined with tools", name="response_format")


def output_format(response_format: Any = None, tools: Any = None, tool_choice: Any = None,
                  parallel_tool_calls: bool | None = None) -> OutputFormat:
    """The request's :class:`OutputFormat`; raises InvalidParameter naming the field."""
    from ..structured import check_constraint

    response = as_constraint(response_format)
    if response is not None:
        check_constraint(response, field="response_format")
    spec = tool_spec(tools, tool_choice, parallel_tool_calls)
    if spec is None or not spec.active:
        return OutputFormat(response, spec, response)
    for i, tool in enumerate(spec.tools):
        check_constraint(Constraint.json_schema(tool.schema), field=f"tools[{i}].function.parameters")
    if response is None or spec.choice.mode is not ToolChoiceMode.AUTO:
        return OutputFormat(tool_call_constraint(spec), spec, response)
    calls = tool_call_format(ToolSpec(spec.tools, ToolChoice(ToolChoiceMode.REQUIRED), spec.parallel))
    either = {"type": "structural_tag", "format": {"type": "or", "elements": [_format_of(response), calls]}}
    return OutputFormat(Constraint.structural_tag(either), spec, response)


@dataclass(frozen=True)
class StructuredReply:
    """A finished reply read for its structure: ``text`` outside tool calls, the ``tool_calls``
    (each with an id), why it ended, and ``parsed`` (the JSON value of a response-format reply)."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    parsed: Any = None

    def as_message(self) -> dict[str, Any]:
        """The reply as the assistant message of a history (OpenAI's shape, ``tool_calls`` included),
        to send back with the tools' results (``call.result(...)``) for the next turn."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        return message

    def __repr__(self) -> str:
        calls = ", ".join(f"{c.name}({c.arguments})" for c in self.tool_calls)
        return (f"StructuredReply({self.finish_reason.value}, text={self.text!r}"
                + (f", tool_calls=[{calls}]" if calls else "") + ")")


def _cut(fin: Finished) -> GenerationError:
    return GenerationError(f"the reply ended with finish reason {fin.finish_reason.value!r} before its structure "
                           f"was complete ({fin.usage.completion_tokens} tokens): raise max_new_tokens"
                           + (f" ({fin.error})" if fin.error else ""))


def read_reply(fin: Finished, fmt: OutputFormat) -> StructuredReply:
    """``fin`` as a :class:`StructuredReply`: tool calls split out, a JSON reply parsed.

    Raises GenerationError for a reply that did not end normally (``length``: ``max_new_tokens``
    cut it; ``error``; ``cancelled``), so broken JSON is never presented as done.
    """
    if fin.finish_reason is not FinishReason.STOP:
        raise _cut(fin)
    text, calls = fin.text, list[ToolCall]()
    if fmt.calls_tools:
        text, calls, _complete = split_tool_calls(fin.text)
    parsed = None
    if not calls and fmt.json_reply:
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise GenerationError(f"the reply is not JSON: {exc}: {text[:200]!r}") from exc
    return StructuredReply(text, tuple(calls), fin.finish_reason, parsed)


def validated(reply: StructuredReply, model: type) -> Any:
    """``reply.parsed`` as an instance of the pydantic ``model`` (its own validation)."""
    validate = getattr(model, "model_validate", None)
    if not callable(validate):
        raise InvalidParameter(f"{model.__name__} is not a pydantic model class", name="response_format")
    return validate(reply.parsed)
