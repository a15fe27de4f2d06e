"""Tool calling for any chat template: the tools prompt, the history, and the call's grammar.

A model whose own chat template renders ``tools`` (Qwen, Hermes, SmolLM3...) gets them through
its template, with ``tool`` messages and assistant ``tool_calls`` as the template expects them.
A template that ignores ``tools`` (SmolLM2's, every declarative preset) gets them the way Hermes-
style models and Ollama's smollm2 template do it, rendered here and shown by
:func:`~chatstream_lab.prompts.inspect_prompt`:

- a system message (appended to the conversation's own, or a new first one) listing the tools as
  JSON inside ``<tools></tools>`` and asking for calls as ``<tool_call>{json}</tool_call>``;
- an assistant message's ``tool_calls`` become that text in its content;
- ``tool`` messages become a user turn of ``<tool_response>...</tool_response>`` blocks
  (consecutive results share one turn).

Either way the reply is held to one format by a structural tag (:func:`tool_call_constraint`):
``<tool_call>\\n{"name": "NAME", "arguments": ARGS}\\n</tool_call>`` where ARGS must match that
tool's parameter schema, so even a 135M model returns a call that parses and validates. The tool's
name is part of the tag's opening text: a streaming client learns which tool is being called as
soon as the tag opens, and the arguments stream as they are generated
(:class:`~chatstream_lab.prompts.tool_stream.ToolCallParser`).
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..constraint import Constraint, canonical_json, schema_dict
from ..errors import InvalidParameter

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
CALL_HEAD = '\n{"name": "'  # after CALL_OPEN: the name follows
ARGS_HEAD = '", "arguments": '  # after the name: the arguments object follows
CALL_TAIL = "}\n" + CALL_CLOSE  # closes the call object and the tag
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAX_WHITESPACE = 2  # a small model would otherwise pad a call with endless blank lines


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, and a JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: str = '{"type":"object","properties":{}}'  # compact JSON text of the schema

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise InvalidParameter(f"a tool name is 1-64 letters, digits, '_', '.' or '-', got {self.name!r}",
                                   name="tools")
        if not isinstance(self.description, str):
            raise InvalidParameter(f"tool {self.name!r}: description must be a string", name="tools")

    @classmethod
    def function(cls, name: str, parameters: Any = None, description: str = "") -> Tool:
        """``parameters``: a JSON schema dict, its JSON text, or a pydantic model class."""
        schema = {"type": "object", "properties": {}} if parameters is None else schema_dict(parameters, field="tools")
        return cls(name, description, canonical_json(schema))

    @property
    def schema(self) -> dict[str, Any]:
        return dict(json.loads(self.parameters))

    def to_openai(self) -> dict[str, Any]:
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.schema
        return {"type": "function", "function": fn}


class ToolChoiceMode(str, enum.Enum):
    """OpenAI's ``tool_choice``: never, the model decides, at least one call, one named tool."""

    NONE = "none"
    AUTO = "auto"
    REQUIRED = "required"
    NAMED = "named"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    name: str | None = None  # the tool, for NAMED

    def to_openai(self) -> Any:
        if self.mode is ToolChoiceMode.NAMED:
            return {"type": "function", "function": {"name": self.name}}
        return self.mode.value


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: ``arguments`` is its JSON text (OpenAI's shape)."""

    id: str
    name: str
    arguments: str

    @property
    def args(self) -> Any:
        """The arguments parsed (raises ``json.JSONDecodeError`` for a call cut by ``max_tokens``)."""
        return json.loads(self.arguments)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def result(self, content: Any) -> dict[str, Any]:
        """The ``tool`` message answering this call (``content``: text, or data sent as JSON)."""
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        return {"role": "tool", "tool_call_id": self.id, "content": text}


@dataclass(frozen=True)
class ToolSpec:
    """The tools of one request and how they may be used (what the prompt and the grammar need)."""

    tools: tuple[Tool, ...]
    choice: ToolChoice = field(default_factory=ToolChoice)
    parallel: bool = True

    @property
    def active(self) -> bool:
        """False when no call can be made (no tools, or ``tool_choice`` none)."""
        return bool(self.tools) and self.choice.mode is not ToolChoiceMode.NONE

    def constraint(self) -> Constraint | None:
        return tool_call_constraint(self) if self.active else None


# -- reading requests ------------------------------------------------------------------------------
def parse_tools(value: Any) -> tuple[Tool, ...]:
    """OpenAI's ``tools`` list (``{"type": "function", "function": {name, description,
    parameters}}``) or :class:`Tool` objects; InvalidParameter naming ``tools[i]`` otherwise."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise InvalidParameter("tools must be a list of {\"type\": \"function\", \"function\": {...}}", name="tools")
    out: list[Tool] = []
    for i, item in enumerate(value):
        out.append(item if isinstance(item, Tool) else _tool(i, item))
    names = [t.name for t in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InvalidParameter(f"tools: the name {dup!r} is used twice", name="tools")
    return tuple(out)


def _tool(i: int, item: Any) -> Tool:
    where = f"tools[{i}]"
    if (not isinstance(item, dict) or item.get("type", "function") != "function"
            or not isinstance(item.get("function"), dict)):
        raise InvalidParameter(f'{where} must be {{"type": "function", "function": {{"name": ..., '
                               '"parameters": ...}}}}', name=where)
    fn = item["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidParameter(f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-', got {name!r}",
                               name=f"{where}.function.name")
    description = fn.get("description") or ""
    if not isinstance(description, str):
        raise InvalidParameter(f"{where}.function.description must be a string", name=f"{where}.function.description")
    params = fn.get("parameters")
    schema = {"type": "object", "properties": {}} if params is None else schema_dict(
        params, field=f"{where}.function.parameters")
    return Tool(name, description, canonical_json(schema))


def parse_tool_choice(value: Any, tools: Sequence[Tool]) -> ToolChoice:
    """``none`` / ``auto`` / ``required`` / ``{"type": "function", "function": {"name": ...}}``
    (None: ``auto`` with tools, ``none`` without, as OpenAI)."""
    if value is None:
        return ToolChoice(ToolChoiceMode.AUTO if tools else ToolChoiceMode.NONE)
    if isinstance(value, ToolChoice):
        choice = value
    elif isinstance(value, str) and value in ("none", "auto", "required"):
        choice = ToolChoice(ToolChoiceMode(value))
    elif isinstance(value, dict) and isinstance(value.get("function"), dict):
        choice = ToolChoice(ToolChoiceMode.NAMED, value["function"].get("name"))
    elif isinstance(value, str) and any(t.name == value for t in tools):
        choice = ToolChoice(ToolChoiceMode.NAMED, value)  # notebook shorthand: the tool's name
    else:
        raise InvalidParameter('tool_choice must be "none", "auto", "required" or '
                               '{"type": "function", "function": {"name": ...}}', name="tool_choice")
    if choice.mode is not ToolChoiceMode.NONE and not tools:
        raise InvalidParameter(f"tool_choice {choice.to_openai()!r} needs tools", name="tool_choice")
    if choice.mode is ToolChoiceMode.NAMED and not any(t.name == choice.name for t in tools):
        raise InvalidParameter(f"tool_choice names {choice.name!r}, which is not in tools "
                               f"({', '.join(t.name for t in tools)})", name="tool_choice")
    return choice


def tool_spec(tools: Any, tool_choice: Any = None, parallel_tool_calls: bool | None = None) -> ToolSpec | None:
    """The request's :class:`ToolSpec` (None: no tools and no tool_choice)."""
    parsed = parse_tools(tools)
    if not parsed and tool_choice in (None, "none"):
        return None
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise InvalidParameter("parallel_tool_calls must be a boolean", name="parallel_tool_calls")
    return ToolSpec(parsed, parse_tool_choice(tool_choice, parsed),
                    True if parallel_tool_calls is None else parallel_tool_calls)


# -- the grammar -----------------------------------------------------------------------------------
def _call_tag(tool: Tool) -> dict[str, Any]:
    return {"type": "tag", "begin": CALL_OPEN + CALL_HEAD + tool.name + ARGS_HEAD,
            "content": {"type": "json_schema", "json_schema": tool.schema, "max_whitespace_cnt": _MAX_WHITESPACE},
            "end": CALL_TAIL}


def tool_call_format(spec: ToolSpec) -> dict[str, Any]:
    """The structural-tag format for ``spec``: ``auto`` -> text with optional calls (triggered by
    ``<tool_call>``); ``required`` -> at least one call, first thing in the reply; a named tool ->
    exactly that one call; ``parallel`` False -> generation ends after the first call."""
    if spec.choice.mode is ToolChoiceMode.NAMED:
        tool = next(t for t in spec.tools if t.name == spec.choice.name)
        return _call_tag(tool)
    return {"type": "triggered_tags", "triggers": [CALL_OPEN], "tags": [_call_tag(t) for t in spec.tools],
            "at_least_one": spec.choice.mode is ToolChoiceMode.REQUIRED, "stop_after_first": not spec.parallel}


def tool_call_constraint(spec: ToolSpec) -> Constraint:
    """:func:`tool_call_format` as a constraint."""
    return Constraint.structural_tag({"type": "structural_tag", "format": tool_call_format(spec)})


# -- the prompt ------------------------------------------------------------------------------------
def tools_system_prompt(tools: Sequence[Tool]) -> str:
    """The tools block for templates that do not render ``tools`` themselves (Hermes' wording)."""
    listed = "\n".join(json.dumps(t.to_openai(), ensure_ascii=False) for t in tools)
    return ("You may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            f"{CALL_OPEN}{CALL_CLOSE} XML tags:\n"
            f'{CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{CALL_CLOSE}')


def call_text(name: str, arguments: Any) -> str:
    """A call as the model writes it (``arguments``: JSON text or data)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    args = json.dumps(arguments, ensure_ascii=False) if not isinstance(arguments, str) else arguments
    return f"{CALL_OPEN}{CALL_HEAD}{name}{ARGS_HEAD}{args}{CALL_TAIL}"


def _call_parts(call: Any) -> tuple[str, Any]:
    fn = call.get("function", call) if isinstance(call, dict) else {}
    name, args = fn.get("name"), fn.get("arguments", {})
    if not isinstance(name, str):
        raise InvalidParameter("an assistant message's tool_calls[i].function.name must be a string",
                               name="messages")
    return name, args


def history_without_tools(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tool`` messages and assistant ``tool_calls`` as plain system/user/assistant text, for a
    template that knows nothing of tools (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            block = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
            continue
        content = m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(call_text(*_call_parts(c)) for c in m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": role, "content": content})
    return [{"role": m["role"], "content": m["content"]} for m in out]


def with_tools_prompt(messages: Sequence[dict[str, Any]], tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """``messages`` (already without tool roles) with the tools block in the system message."""
    block = tools_system_prompt(tools)
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0].get("role") == "system":
        msgs[0]["content"] = f"{msgs[0]['content']}\n\n{block}" if msgs[0]["content"] else block
        return msgs
    return [{"role": "system", "content": block}, *msgs]


def history_for_template(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as a tools-aware Jinja template wants them: content never None, and each
    call's ``arguments`` as data (transformers' convention)."""
    out = []
    for m in messages:
        msg = {**m, "content": m.get("content") or ""}
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                name, args = _call_parts(c)
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except ValueError:
                        pass
                calls.append({"id": c.get("id"), "type": "function", "function": {"name": name, "arguments": args}})
            msg["tool_calls"] = calls
        out.append(msg)
    return out


_PROBE = Tool("csl_probe_tool_7f3a", "probe")


def template_renders_tools(template: Any) -> bool:
    """True when ``template`` (a Jinja chat template, possibly wrapped) shows the ``tools`` it is
    given: it is then used as is, with its own wording for the tools and their results."""
    from .jinja import JinjaTemplate
    from .system import base_template

    inner = base_template(template)
    if not isinstance(inner, JinjaTemplate):
        return False
    return _source_renders_tools(inner.source, inner.bos_token, inner.eos_token)


@functools.lru_cache(maxsize=32)
def _source_renders_tools(source: str, bos: str, eos: str) -> bool:
    from .jinja import JinjaTemplate

    probe = JinjaTemplate(source, bos_token=bos, eos_token=eos, variables=(("tools", (_PROBE.to_openai(),)),))
    try:
        return _PROBE.name in probe.render([{"role": "user", "content": "hi"}])
    except Exception:  # a template that breaks on tools does not render them
        return False


def template_with_tools(template: Any, tools: Sequence[Tool]) -> Any:
    """``template`` (one that renders tools) with ``tools`` as its ``tools`` variable."""
    import dataclasses

    from .system import SystemPromptTemplate

    if isinstance(template, SystemPromptTemplate):
        return SystemPromptTemplate(template_with_tools(template.inner, tools), template.system_prompt)
    variables = tuple((k, v) for k, v in template.variables if k != "tools")
    return dataclasses.replace(template, variables=(*variables, ("tools", tuple(t.to_openai() for t in tools))))


def prepare(template: Any, messages: Sequence[dict[str, Any]],
            spec: ToolSpec | None) -> tuple[Any, list[dict[str, Any]]]:
    """The template and messages to encode for a request with ``spec`` (None: no tools): the
    model's own tools rendering when it has one, else ours (module docstring). Tool messages in
    the history are handled either way, also when this request offers no tools."""
    msgs = [dict(m) for m in messages]
    has_tool_turns = any(m.get("role") == "tool" or m.get("tool_calls") for m in msgs)
    tools = spec.tools if spec is not None and spec.active else ()
    if not tools and not has_tool_turns:
        return template, msgs
    if template is not None and template_renders_tools(template):
        return (template_with_tools(template, tools) if tools else template), history_for_template(msgs)
    plain = history_without_tools(msgs)
    return template, (with_tools_prompt(plain, tools) if tools else plain)
