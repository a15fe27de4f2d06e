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

from dataclasses import dataclass
from typing import Any

from ..constraint import Constraint, ConstraintKind, response_format_constraint
from ..errors import InvalidParameter
from .tools import ToolChoice, ToolChoiceMode, ToolSpec, tool_call_constraint, tool_call_format, tool_spec


@dataclass(frozen=True)
class OutputFormat:
    """The constraint to enforce (None: free text) and the tools to render (None: none)."""

    constraint: Constraint | None = None
    tools: ToolSpec | None = None

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
        return OutputFormat(response, spec)
    for i, tool in enumerate(spec.tools):
        check_constraint(Constraint.json_schema(tool.schema), field=f"tools[{i}].function.parameters")
    if response is None or spec.choice.mode is not ToolChoiceMode.AUTO:
        return OutputFormat(tool_call_constraint(spec), spec)
    calls = tool_call_format(ToolSpec(spec.tools, ToolChoice(ToolChoiceMode.REQUIRED), spec.parallel))
    either = {"type": "structural_tag", "format": {"type": "or", "elements": [_format_of(response), calls]}}
    return OutputFormat(Constraint.structural_tag(either), spec)
