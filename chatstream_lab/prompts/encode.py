"""The ONE conversation encoder: messages (or a seed ChatPrompt) -> token ids + stop strings.

Every path that turns a conversation into a request goes through here: ``stream()``, ``Lab``
previews, the HTTP routes (seed sessions and OpenAI messages) and the remote engines, so the prompt
the model sees is always the one :func:`~chatstream_lab.prompts.inspect_prompt` shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import TemplateError
from ..types import Message
from .tools import ToolSpec, prepare


@dataclass(frozen=True, slots=True)
class EncodedPrompt:
    """What a generator needs from a template: the prompt's ids and how to end and clean the reply.

    ``messages`` is set instead of ``ids`` for a model without a local tokenizer (a remote model
    whose own chat template is used: it is sent the messages, not a rendered prompt).
    """

    ids: tuple[int, ...]
    stop_strings: tuple[str, ...] = ()
    output_replacements: tuple[tuple[str, str], ...] = ()
    messages: tuple[dict[str, str], ...] | None = None


def as_messages(messages: str | Sequence[Message] | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A string is one user message; a list is taken as is."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(m) for m in messages]


def encode_messages(template: Any, tokenizer: Any, messages: str | Sequence[Any],
                    tools: ToolSpec | None = None) -> EncodedPrompt:
    """Render + tokenize ``messages`` with a resolved ``template`` (forge-safe), ending in an open
    assistant turn. ``tools`` (and any ``tool`` messages or assistant ``tool_calls`` in the
    history) are rendered by the template when it renders tools, else as :mod:`.tools` describes."""
    template, msgs = prepare(template, as_messages(messages), tools)
    if tokenizer is None and template is None:  # a remote model's own template renders them
        return EncodedPrompt((), messages=tuple({"role": str(m["role"]), "content": str(m["content"])}
                                                for m in msgs))
    if template is None:
        raise TemplateError("no chat template: pass template= (a preset name, e.g. 'chatml')")
    ids = template.encode(tokenizer, msgs, add_generation_prompt=True)
    replacements = tuple((str(a), str(b)) for a, b in (template.output_replacements or ()))
    return EncodedPrompt(tuple(int(i) for i in ids), tuple(template.stop_strings or ()), replacements)


def encode_chat_prompt(prompt: Any, template: Any, tokenizer: Any) -> EncodedPrompt:
    """Ids, stop strings and replacements of a seed-style conversation ending in an open turn.

    A :class:`~chatstream_lab.prompts.ChatPrompt` encodes itself (forge-safe; a subclass that
    overrides ``create_prompt`` is tokenized from its string). Any other seed-style object is
    tokenized from ``create_prompt()``. ``template`` (the server's) supplies stop strings to a
    ChatPrompt that has no template of its own.
    """
    stops = tuple(s for s in (prompt.get_stop_strs() or ()) if s)
    if tokenizer is None and template is None and callable(getattr(prompt, "to_messages", None)):
        return encode_messages(None, None, prompt.to_messages())
    if callable(getattr(prompt, "encode", None)):
        ids = list(prompt.encode(tokenizer))
        replacements = tuple(prompt.get_output_replacements())
        if not stops and template is not None and getattr(prompt, "template", None) is None:
            stops = tuple(template.stop_strings)
        return EncodedPrompt(tuple(ids), stops, replacements)
    text = str(prompt.create_prompt())
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    hook = getattr(prompt, "get_replacement_when_output", None)
    pairs = (hook() if callable(hook) else None) or ()
    return EncodedPrompt(tuple(ids), stops, tuple((str(a), str(b)) for a, b in pairs))


def encode_reply(tokenizer: Any, text: str) -> tuple[int, ...]:
    """The ids of an assistant reply as the model would emit them after the generation prefix
    (no BOS/EOS, special-token strings in ``text`` kept as text): what ``score()`` scores."""
    from .base import _call_encode

    return tuple(int(i) for i in _call_encode(tokenizer, text, split_special=True))
