"""Jinja chat templates, rendered exactly as ``transformers``' ``apply_chat_template`` renders them.

Same environment (``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)``, the
``loopcontrols`` extension, ``raise_exception``, ``tojson``, ``strftime_now``, a no-op
``{% generation %}`` tag) and the same variables (``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token``, ``tools=None``, ``documents=None`` and the tokenizer's other special
tokens). The object holds only strings, so it pickles; compiled templates are cached per source.

Forge-safe ``encode`` needs to know which characters of the output came from message content. The
template is rendered a second time with a unique placeholder per message content; the markup between
placeholders is then matched against the real rendering (content as given, or stripped, since many
templates ``trim`` it).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import TemplateError
from .base import (
    Segment,
    SegmentTemplate,
    check_messages,
    control_tokens,
    encode_segments,
)

_SENTINEL = "\ue000csl{}\ue001"
_SENTINEL_RE = re.compile("\ue000csl(\\d+)\ue001")


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` (assistant-mask markers): renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise TemplateError(str(message))


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """Compile ``source`` in the transformers-equivalent sandbox (cached)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"chat template does not compile: {exc} (line {exc.lineno})") from exc


@dataclass(frozen=True)
class JinjaTemplate(SegmentTemplate):
    """A Jinja chat template (a model's own ``tokenizer.chat_template`` or one you write).

    ``stop_strings`` defaults to ``(eos_token,)``; :meth:`from_tokenizer` also adds the token that
    closes an assistant turn in this template (``<|im_end|>``, ``<|eot_id|>``...).
    ``variables`` are extra template variables as (name, value) pairs (e.g. ``enable_thinking``).
    """

    source: str
    bos_token: str = ""
    eos_token: str = ""
    name: str = "jinja"
    stop_strings: tuple[str, ...] | None = None
    output_replacements: tuple[tuple[str, str], ...] = ()
    variables: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise TemplateError("JinjaTemplate needs the template source (a non-empty string)")
        compile_template(self.source)  # fail where the template is written
        if self.stop_strings is None:
            stops: tuple[str, ...] = (self.eos_token,) if self.eos_token else ()
        elif isinstance(self.stop_strings, str):
            stops = (self.stop_strings,)
        else:
            stops = tuple(s for s in self.stop_strings if s)
        object.__setattr__(self, "stop_strings", stops)
        object.__setattr__(self, "output_replacements",
                           tuple((str(a), str(b)) for a, b in self.output_replacements))
        object.__setattr__(self, "variables", tuple(
            (str(k), tuple(v) if isinstance(v, list) else v) for k, v in dict(self.variables).items()))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, name: str | None = None,
                       source: str | None = None) -> JinjaTemplate:
        """The tokenizer's own chat template (or ``source``) with its special tokens filled in."""
        src = source if source is not None else getattr(tokenizer, "chat_template", None)
        if isinstance(src, dict):  # several named templates: transformers uses "default"
            src = src.get("default") or next(iter(src.values()), None)
        if not src:
            raise TemplateError(
                "this tokenizer has no chat template (tokenizer.chat_template is empty); pass "
                "template=<preset name> (e.g. 'chatml'; see chatstream_lab.prompts.presets.names()) or "
                "a DeclarativeTemplate / JinjaTemplate")
        bos = getattr(tokenizer, "bos_token", None) or ""
        eos = getattr(tokenizer, "eos_token", None) or ""
        extra = []
        for key, value in (getattr(tokenizer, "special_tokens_map", None) or {}).items():
            if key not in ("bos_token", "eos_token"):
                extra.append((key, tuple(value) if isinstance(value, list) else str(value)))
        label = name or _tokenizer_label(tokenizer)
        base = cls(src, bos_token=str(bos), eos_token=str(eos), name=label, variables=tuple(extra))
        stops = [s for s in (base._turn_end(tokenizer), str(eos)) if s]
        return cls(src, bos_token=str(bos), eos_token=str(eos), name=label,
                   stop_strings=tuple(dict.fromkeys(stops)), variables=tuple(extra))

    # ------------------------------------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        ctx: dict[str, Any] = {"tools": None, "documents": None}
        ctx.update(dict(self.variables))
        ctx.update(messages=messages, add_generation_prompt=bool(add_generation_prompt),
                   bos_token=self.bos_token, eos_token=self.eos_token)
        try:
            return compile_template(self.source).render(**ctx)
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template {self.name!r} failed: {exc}") from exc

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        return self._render([dict(m) for m in check_messages(messages)], add_generation_prompt)

    def render_segments(self, messages: Sequence[dict[str, Any]],
                        add_generation_prompt: bool = True) -> list[Segment]:
        """Segments of the rendering; raises TemplateError if content cannot be located."""
        segs = self._segments(messages, add_generation_prompt)
        if segs is None:
            raise TemplateError(f"chat template {self.name!r} transforms message content in a way "
                                "that cannot be located in its output")
        return segs

    def _segments(self, messages: Sequence[dict[str, Any]],
                  add_generation_prompt: bool) -> list[Segment] | None:
        msgs = [dict(m) for m in check_messages(messages)]
        real = self._render(msgs, add_generation_prompt)
        probe = [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(msgs)]
        try:
            marked = self._render(probe, add_generation_prompt)
        except TemplateError:
            return None
        parts = _SENTINEL_RE.split(marked)  # markup, index, markup, index, ..., markup
        segs: list[Segment] = []
        pos = 0
        for j in range(0, len(parts), 2):
            markup = parts[j]
            if not real.startswith(markup, pos):
                return None
            segs.append(Segment(markup))
            pos += len(markup)
            if j + 1 >= len(parts):
                break
            content = msgs[int(parts[j + 1])]["content"]
            nxt = parts[j + 2]
            last = j + 3 >= len(parts)
            for cand in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
                end = pos + len(cand)
                if real.startswith(cand, pos) and (real[end:] == nxt if last else
                                                   real.startswith(nxt, end)):
                    segs.append(Segment(cand, True))
                    pos = end
                    break
            else:
                return None
        if pos != len(real):
            return None
        return [s for s in segs if s.text]

    def encode(self, tokenizer: Any, messages: Sequence[dict[str, Any]],
               add_generation_prompt: bool = True) -> list[int]:
        segs = self._segments(messages, add_generation_prompt)
        if segs is None:
            # The template rewrites content (e.g. tests it). Safe only if no content holds a control token.
            text = self._render([dict(m) for m in check_messages(messages)], add_generation_prompt)
            controls = control_tokens(tokenizer, text)
            for m in messages:
                hit = next((t for t in controls if t in m["content"]), None)
                if hit is not None:
                    raise TemplateError(
                        f"chat template {self.name!r} rewrites message content, so a message holding "
                        f"the control token {hit!r} cannot be encoded safely; remove it from the message")
            segs = [Segment(text)]
        return encode_segments(tokenizer, segs)

    # ------------------------------------------------------------------------------------------

    @property
    def generation_prefix(self) -> str:
        """What ``add_generation_prompt=True`` appends after a user turn ("" when it adds nothing)."""
        try:
            return _generation_prefix(self)
        except TypeError:  # unhashable variables: skip the cache
            return _generation_prefix.__wrapped__(self)

    def _turn_end(self, tokenizer: Any) -> str:
        """The first control token after an assistant message's content (its turn end), or ""."""
        try:
            text = self._render([{"role": "user", "content": "\ue000u"},
                                 {"role": "assistant", "content": "\ue000a"}], False)
        except TemplateError:
            return ""
        idx = text.find("\ue000a")
        if idx < 0:
            return ""
        after = text[idx + 2:]
        hits = [(after.find(t), -len(t), t) for t in control_tokens(tokenizer, text) if t in after]
        return min(hits)[2] if hits else ""


@functools.lru_cache(maxsize=64)
def _generation_prefix(t: JinjaTemplate) -> str:
    msgs = [{"role": "user", "content": "\ue000u"}]
    try:
        with_gp, without = t._render(msgs, True), t._render(msgs, False)
    except TemplateError:
        return ""
    return with_gp[len(without):] if with_gp.startswith(without) else ""


def _tokenizer_label(tokenizer: Any) -> str:
    path = str(getattr(tokenizer, "name_or_path", "") or "")
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return f"{base} chat template" if base else "tokenizer chat template"
