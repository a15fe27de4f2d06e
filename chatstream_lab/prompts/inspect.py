"""See exactly what the model will get: rendered text, token ids, token pieces, and lint warnings.

The lints catch the prompt bugs that silently degrade answers: a doubled BOS, a prompt that does not
end with the assistant's opening, a history longer than the context window, control tokens typed into
a message (encoded as plain text, so harmless, but worth knowing).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import check_messages, control_tokens, template_name
from .declarative import DeclarativeTemplate
from .pieces import is_byte_level, piece_text, visible
from .resolve import resolve_template

_MAX_SANE_CONTEXT = 10_000_000  # tokenizers report 1e30 when they do not know


@dataclass(frozen=True)
class PromptInspection:
    """What :func:`inspect_prompt` found. Shown as token chips in Jupyter (``_repr_html_``)."""

    text: str
    token_ids: tuple[int, ...]
    pieces: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    template: str = ""
    context_window: int | None = None
    shown: tuple[str, ...] = ()  # the pieces as chips show them: ``␣the``, ``↵`` (not ``Ġthe``, ``Ċ``)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def _repr_html_(self) -> str:
        chips = "".join(
            f'<span title="{tid}" style="display:inline-block;margin:1px;padding:0 3px;'
            f'border-radius:3px;background:{"#e8f0fe" if i % 2 else "#fde8e8"};font-family:monospace;'
            f'white-space:pre">{html.escape(piece)}</span>'
            for i, (tid, piece) in enumerate(zip(self.token_ids, self.shown or self.pieces)))
        warns = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
        window = f" / {self.context_window}" if self.context_window else ""
        return (
            '<div class="csl-prompt-inspection">'
            f"<b>{html.escape(self.template)}</b> &middot; {self.num_tokens}{window} tokens"
            + (f'<ul style="color:#b45309">{warns}</ul>' if warns else "")
            + f'<pre style="white-space:pre-wrap">{html.escape(self.text)}</pre>'
            + f"<div>{chips}</div></div>"
        )

    def __repr__(self) -> str:
        return (f"PromptInspection(template={self.template!r}, tokens={self.num_tokens}, "
                f"warnings={list(self.warnings)!r})")


def _pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    conv = getattr(tokenizer, "convert_ids_to_tokens", None)
    if conv is not None:
        try:
            pieces = conv(ids)
            if len(pieces) == len(ids):
                return [str(p) for p in pieces]
        except Exception:
            pass
    return [tokenizer.decode([i]) for i in ids]


def inspect_prompt(template: Any, tokenizer: Any, messages: Sequence[dict[str, Any]],
                   context_window: int | None = None,
                   add_generation_prompt: bool = True, *, tools: Any = None,
                   tool_choice: Any = None) -> PromptInspection:
    """Render and encode ``messages`` with ``template`` (None / preset name / object) and lint them.

    ``context_window`` defaults to the tokenizer's ``model_max_length`` when that is a real number.
    ``tools`` (OpenAI's list or :class:`~chatstream_lab.prompts.tools.Tool` objects) shows the
    prompt a tool-calling request gets: the template's own tools rendering, or the tools system
    prompt this package adds for templates without one; ``tool`` messages and assistant
    ``tool_calls`` in ``messages`` are shown as the model gets them.
    """
    from .tools import prepare, tool_spec

    tmpl, prepared = prepare(resolve_template(template, tokenizer), list(messages),
                             tool_spec(tools, tool_choice))
    msgs = check_messages(prepared)
    text = tmpl.render(msgs, add_generation_prompt=add_generation_prompt)
    ids = list(tmpl.encode(tokenizer, msgs, add_generation_prompt=add_generation_prompt))
    if context_window is None:
        mml = getattr(tokenizer, "model_max_length", None)
        if isinstance(mml, int) and 0 < mml < _MAX_SANE_CONTEXT:
            context_window = mml
    warnings: list[str] = []

    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is not None and len(ids) >= 2 and ids[0] == ids[1] == bos_id:
        warnings.append(f"duplicated BOS: the token ids start with BOS ({bos_id}) twice; the template "
                        "writes a BOS and the tokenizer added another")

    prefix = getattr(tmpl, "generation_prefix", "")
    if isinstance(tmpl, DeclarativeTemplate):
        prefix = tmpl._fmt(prefix)
    if add_generation_prompt and isinstance(prefix, str) and prefix and not text.endswith(prefix):
        warnings.append(f"missing generation prefix: add_generation_prompt=True but the prompt does "
                        f"not end with the assistant's opening {prefix!r}")
    if msgs and add_generation_prompt and msgs[-1]["role"] == "assistant":
        warnings.append("the last message is the assistant's and add_generation_prompt=True starts "
                        "another assistant turn; to continue that message, render without it")
    if msgs and not add_generation_prompt and msgs[-1]["role"] == "user":
        warnings.append("add_generation_prompt=False after a user message: the prompt does not open "
                        "the assistant's turn")

    if context_window is not None and len(ids) >= context_window:
        warnings.append(f"history exceeds the context window: the prompt has {len(ids)} tokens, the "
                        f"context window is {context_window}; drop old turns with truncate_messages()")

    controls = control_tokens(tokenizer, text)
    for i, m in enumerate(msgs):
        typed = [t for t in controls if t in m["content"]]
        if typed:
            warnings.append(f"messages[{i}] ({m['role']}) contains control token(s) {typed}; encode() "
                            "tokenizes them as plain text, so they cannot start or end a turn")

    pieces = tuple(_pieces(tokenizer, ids))
    byte_level = is_byte_level(tokenizer)
    return PromptInspection(text=text, token_ids=tuple(ids), pieces=pieces,
                            warnings=tuple(warnings), template=template_name(tmpl),
                            context_window=context_window,
                            shown=tuple(visible(piece_text(p, byte_level)) for p in pieces))
