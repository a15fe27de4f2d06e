"""Declarative chat templates: a frozen dataclass a researcher writes in one notebook cell.

Each role has a format string with ``{content}`` (and optionally ``{role}``, ``{bos}``, ``{eos}``)::

    chatml = DeclarativeTemplate(
        name="chatml",
        system="<|im_start|>system\\n{content}<|im_end|>\\n",
        user="<|im_start|>user\\n{content}<|im_end|>\\n",
        assistant="<|im_start|>assistant\\n{content}<|im_end|>\\n",
        generation_prefix="<|im_start|>assistant\\n",
        stop_strings=("<|im_end|>",),
    )
    mine = chatml.replace(name="mine", default_system="Be brief.")

Plain-text formats (``USER:``, ``<human>:``) cannot protect turns with special tokens, so every
role marker listed in ``role_markers`` found in *user* content (at a line start or anywhere else:
vicuna's turns follow ``</s>`` or a space, not a newline) gets a ZERO WIDTH SPACE (U+200B) put in
front of it. The prompt then holds role markers only where the template put them, and the text still
reads the same.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError, TemplateError
from .base import (
    ROLES,
    Segment,
    SegmentTemplate,
    apply_replacements,
    check_messages,
    no_system_error,
    strip_segments,
)

SystemMode = Literal["turn", "merge", "unsupported"]
ZWSP = "\u200b"
_FIELDS = {"content", "role", "bos", "eos"}


def _check_format(name: str, fmt: str, *, needs_content: bool) -> None:
    if not isinstance(fmt, str):
        raise ConfigError(f"{name} must be a format string, got {fmt!r}", name=name)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"{name} is not a valid format string ({exc}); write literal braces as "
                          "'{{' and '}}'", name=name) from exc
    unknown = set(fields) - _FIELDS
    if unknown:
        raise ConfigError(f"{name} uses unknown field(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}",
                          name=name)
    if needs_content and fields.count("content") != 1:
        raise ConfigError(f"{name} must contain '{{content}}' exactly once, got {fmt!r}", name=name)


def _pairs(name: str, value: Any) -> tuple[tuple[str, str], ...]:
    try:
        pairs = tuple((str(a), str(b)) for a, b in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be (old, new) string pairs, got {value!r}", name=name) from exc
    if any(not a for a, _ in pairs):
        raise ConfigError(f"{name}: the text to replace cannot be empty", name=name)
    return pairs


@dataclass(frozen=True)
class DeclarativeTemplate(SegmentTemplate):
    """A chat format described by data, not code (picklable, comparable, JSON-friendly).

    Args:
        name: shown in previews and stats.
        user / assistant / system: per-role turn formats with ``{content}``.
        system_mode: ``"turn"`` (system is its own turn), ``"merge"`` (``system`` formatted, then
            prepended to the first user message's content, as Llama-2 / Mistral do) or
            ``"unsupported"`` (a system message raises TemplateError, as Gemma's template does).
        default_system: used when the conversation has no system message (None: none).
        generation_prefix: appended when ``add_generation_prompt`` (the assistant turn's opening).
        end_without_generation: appended when not ``add_generation_prompt`` (Phi-3 writes its EOS).
        prefix: written once at the start (typically ``"{bos}"``).
        bos / eos: the strings ``{bos}`` / ``{eos}`` stand for.
        strip_content: strip whitespace around each message's content (Llama / Gemma templates do).
        alternate: require user/assistant alternation after the system message (official templates raise).
        stop_strings: generation stops at these.
        input_replacements: applied to message content before rendering (rinna: ``\\n`` -> ``<NL>``).
        output_replacements: applied to generated text (rinna: ``<NL>`` -> ``\\n``).
        role_markers: plain-text role markers neutralized in user content (see module doc).
    """

    name: str = "custom"
    user: str = "{content}\n"
    assistant: str = "{content}\n"
    system: str = "{content}\n"
    system_mode: SystemMode = "turn"
    default_system: str | None = None
    generation_prefix: str = ""
    end_without_generation: str = ""
    prefix: str = ""
    bos: str = ""
    eos: str = ""
    strip_content: bool = False
    alternate: bool = False
    stop_strings: tuple[str, ...] = ()
    input_replacements: tuple[tuple[str, str], ...] = ()
    output_replacements: tuple[tuple[str, str], ...] = ()
    role_markers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name must be a non-empty string, got {self.name!r}", name="name")
        for f in ("user", "assistant", "system"):
            _check_format(f, getattr(self, f), needs_content=True)
        for f in ("generation_prefix", "end_without_generation", "prefix"):
            _check_format(f, getattr(self, f), needs_content=False)
        if self.system_mode not in ("turn", "merge", "unsupported"):
            raise ConfigError(f"system_mode must be 'turn', 'merge' or 'unsupported', got "
                              f"{self.system_mode!r}", name="system_mode")
        if self.default_system is not None and not isinstance(self.default_system, str):
            raise ConfigError("default_system must be a string or None", name="default_system")
        stops = (self.stop_strings,) if isinstance(self.stop_strings, str) else self.stop_strings
        if not all(isinstance(s, str) and s for s in stops):
            raise ConfigError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}",
                              name="stop_strings")
        object.__setattr__(self, "stop_strings", tuple(stops))
        object.__setattr__(self, "input_replacements", _pairs("input_replacements",
                                                              self.input_replacements))
        object.__setattr__(self, "output_replacements", _pairs("output_replacements",
                                                               self.output_replacements))
        markers = (self.role_markers,) if isinstance(self.role_markers, str) else self.role_markers
        object.__setattr__(self, "role_markers", tuple(str(m) for m in markers if m))

    @property
    def system_prompt(self) -> str | None:
        """The system message used when a conversation brings none (``default_system``)."""
        return self.default_system

    def replace(self, **changes: Any) -> DeclarativeTemplate:
        """A copy with ``changes`` applied (validated); unknown names raise ConfigError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown template field(s) {sorted(unknown)}; known: {sorted(known)}",
                              name=sorted(unknown)[0])
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (tuples become lists); ``DeclarativeTemplate.from_dict`` reverses it."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(p) if isinstance(p, tuple) else p for p in v]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeclarativeTemplate:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    # ------------------------------------------------------------------------------------------

    def _fmt(self, fmt: str, role: str = "") -> str:
        return self._split(fmt, role)[0]

    def _split(self, fmt: str, role: str) -> tuple[str, str]:
        """The text before and after ``{content}``, other fields filled in."""
        parts: tuple[list[str], list[str]] = ([], [])
        side = 0
        values = {"role": role, "bos": self.bos, "eos": self.eos}
        for literal, field, spec, _conv in string.Formatter().parse(fmt):
            parts[side].append(literal)
            if field == "content":
                side = 1
            elif field is not None:
                parts[side].append(format(values[field], spec or ""))
        return "".join(parts[0]), "".join(parts[1])

    def _content(self, role: str, text: str) -> str:
        if role == "user" and self.role_markers:
            markers = "|".join(re.escape(m) for m in sorted(self.role_markers, key=len, reverse=True))
            text = re.sub(f"({markers})", ZWSP + r"\1", text)
        return apply_replacements(text, self.input_replacements)

    def _turn(self, role: str, body: list[Segment]) -> list[Segment]:
        fmt = {"user": self.user, "assistant": self.assistant, "system": self.system}[role]
        before, after = self._split(fmt, role)
        if self.strip_content:
            body = strip_segments(body)
        return [Segment(before), *body, Segment(after)]

    def render_segments(self, messages: Sequence[dict[str, Any]],
                        add_generation_prompt: bool = True) -> list[Segment]:
        msgs = check_messages(messages)
        for i, m in enumerate(msgs):
            if m["role"] not in ROLES:
                raise TemplateError(f"template {self.name!r}: messages[{i}] has role {m['role']!r}; "
                                    f"known roles: {list(ROLES)}")
        system: str | None = None
        if msgs and msgs[0]["role"] == "system":
            system, msgs = msgs[0]["content"], msgs[1:]
        elif self.default_system is not None and self.system_mode != "unsupported":
            system = self.default_system
        if self.system_mode == "unsupported" and (system is not None or any(
                m["role"] == "system" for m in msgs)):
            raise no_system_error(self.name)
        if self.system_mode == "merge" and any(m["role"] == "system" for m in msgs):
            raise TemplateError(f"template {self.name!r} accepts a system message only as the first "
                                "message")
        if self.alternate:
            for i, m in enumerate(msgs):
                if (m["role"] == "user") != (i % 2 == 0):
                    raise TemplateError(f"template {self.name!r}: conversation roles must alternate "
                                        "user/assistant/user/assistant/... (after an optional system "
                                        "message), as its official template requires")

        segs: list[Segment] = [Segment(self._fmt(self.prefix))]
        pending_system: list[Segment] | None = None
        if system is not None:
            sys_body = [Segment(self._content("system", system), True)]
            if self.system_mode == "turn":
                segs += self._turn("system", sys_body)
            else:  # merge: formatted system text goes in front of the first user message's content
                before, after = self._split(self.system, "system")
                pending_system = [Segment(before), *sys_body, Segment(after)]
        for m in msgs:
            body = [Segment(self._content(m["role"], m["content"]), True)]
            if m["role"] == "user" and pending_system is not None:
                body, pending_system = pending_system + body, None
            segs += self._turn(m["role"], body)
        if pending_system is not None:  # system only, no user message yet: give it its own user turn
            segs += self._turn("user", pending_system)
        segs.append(Segment(self._fmt(self.generation_prefix if add_generation_prompt
                                      else self.end_without_generation)))
        return [s for s in segs if s.text]
