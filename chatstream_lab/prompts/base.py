"""The template protocol and the forge-safe encoder every template shares.

A template renders a conversation to a list of :class:`Segment` s: *markup* (the template's own text,
where control tokens such as ``<|im_end|>`` are meant) and *content* (what users and the model wrote).
``render`` joins them; ``encode`` tokenizes them so that a control token typed by a user is encoded
as plain text and can never close or open a turn (see :func:`encode_segments`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..errors import ConfigError, TemplateError

ROLES = ("system", "user", "assistant")


class Segment(NamedTuple):
    """A piece of rendered prompt; ``is_content`` marks text that came from a message."""

    text: str
    is_content: bool = False


@runtime_checkable
class ChatTemplate(Protocol):
    """What every template object offers (declarative, Jinja, or your own duck-typed class)."""

    name: str
    stop_strings: tuple[str, ...]
    output_replacements: tuple[tuple[str, str], ...]

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str: ...

    def encode(self, tokenizer: Any, messages: Sequence[dict[str, Any]],
               add_generation_prompt: bool = True) -> list[int]: ...


def is_template(obj: Any) -> bool:
    """Duck-typing check used by ``resolve_template`` and the preset registry."""
    return all(hasattr(obj, a) for a in ("name", "stop_strings", "output_replacements", "render", "encode"))


class SegmentTemplate:
    """Mixin: ``render``/``encode`` on top of ``render_segments`` (implemented by subclasses)."""

    def render_segments(self, messages: Sequence[dict[str, Any]],
                        add_generation_prompt: bool = True) -> list[Segment]:
        raise NotImplementedError

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text, exactly what the model family's chat template produces."""
        return "".join(s.text for s in self.render_segments(messages, add_generation_prompt))

    def encode(self, tokenizer: Any, messages: Sequence[dict[str, Any]],
               add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the prompt; message content cannot forge control tokens (see module doc)."""
        return encode_segments(tokenizer, self.render_segments(messages, add_generation_prompt))

    def fingerprint(self) -> Any:
        """JSON data that identifies this template (goes into configuration ids)."""
        from .fingerprint import template_to_dict

        return template_to_dict(self)


# ----------------------------------------------------------------------------------------------
# messages


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Validate ``messages`` (a list of ``{"role", "content"}`` dicts with string content)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Iterable):
        raise ConfigError(f"messages must be a list of {{'role', 'content'}} dicts, got {messages!r}",
                          name="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConfigError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}",
                              name="messages")
        if not isinstance(m["content"], str):
            raise ConfigError(f"messages[{i}]['content'] must be a string, got {type(m['content']).__name__}",
                              name="messages")
        out.append(m)
    return out


def apply_replacements(text: str, pairs: Iterable[tuple[str, str]]) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def strip_segments(segs: list[Segment], left: bool = True, right: bool = True) -> list[Segment]:
    """``str.strip`` across segment boundaries (so a merged system+user block strips like one string)."""
    out = list(segs)
    if left:
        while out:
            t = out[0].text.lstrip()
            if t:
                out[0] = out[0]._replace(text=t)
                break
            out.pop(0)
    if right:
        while out:
            t = out[-1].text.rstrip()
            if t:
                out[-1] = out[-1]._replace(text=t)
                break
            out.pop()
    return out


# ----------------------------------------------------------------------------------------------
# forge-safe encoding


def _call_encode(tokenizer: Any, text: str, *, split_special: bool) -> list[int]:
    """Token ids of ``text`` without BOS/EOS, with control tokens parsed or (split_special) disabled."""
    if not text:
        return []
    kwargs: dict[str, Any] = {"add_special_tokens": False}
    if split_special:
        kwargs["split_special_tokens"] = True
    if callable(tokenizer) and hasattr(tokenizer, "convert_ids_to_tokens"):
        try:
            return list(tokenizer(text, **kwargs)["input_ids"])
        except TypeError:
            pass
    try:
        return list(tokenizer.encode(text, **kwargs))
    except TypeError:
        if not split_special:
            raise
        return list(tokenizer.encode(text, add_special_tokens=False))


def _added_tokens(tokenizer: Any) -> list[tuple[str, bool, bool, bool]]:
    """(content, special, lstrip, rstrip) of the tokenizer's added tokens, whitespace-only ones excluded."""
    seen: dict[str, tuple[str, bool, bool, bool]] = {}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    try:
        items = list(decoder.values())
    except AttributeError:
        items = []
    for tok in items:
        content = getattr(tok, "content", str(tok))
        if content.strip():
            seen[content] = (content, bool(getattr(tok, "special", True)),
                             bool(getattr(tok, "lstrip", False)), bool(getattr(tok, "rstrip", False)))
    for content in getattr(tokenizer, "all_special_tokens", None) or ():
        if isinstance(content, str) and content.strip() and content not in seen:
            seen[content] = (content, True, False, False)
    return list(seen.values())


def control_tokens(tokenizer: Any, markup: str = "") -> dict[str, tuple[bool, bool]]:
    """Control tokens: special added tokens, plus non-special added tokens the markup uses.

    Maps each token string to its (lstrip, rstrip) flags, which HF applies to neighbouring whitespace.
    """
    out: dict[str, tuple[bool, bool]] = {}
    for content, special, lstrip, rstrip in _added_tokens(tokenizer):
        if special or content in markup:
            out[content] = (lstrip, rstrip)
    return out


def _token_pattern(tokens: Iterable[str]) -> re.Pattern[str] | None:
    toks = sorted(set(tokens), key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in toks)) if toks else None


def _single_id(tokenizer: Any, token: str) -> list[int]:
    conv = getattr(tokenizer, "convert_tokens_to_ids", None)
    if conv is not None:
        tid = conv(token)
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(tid, int) and (tid != unk or token == getattr(tokenizer, "unk_token", None)):
            return [tid]
    return _call_encode(tokenizer, token, split_special=False)


def _encode_text_safely(tokenizer: Any, text: str, controls: dict[str, tuple[bool, bool]],
                        pattern: re.Pattern[str] | None) -> list[int]:
    """Encode text that must not yield control tokens (it may hold a forgery attempt)."""
    if pattern is None or not pattern.search(text):
        return _call_encode(tokenizer, text, split_special=False)
    control_ids = {i for t in controls for i in _single_id(tokenizer, t)}
    ids = _call_encode(tokenizer, text, split_special=True)
    if not control_ids.intersection(ids):
        return ids
    # The tokenizer ignored split_special_tokens (or the token is a non-special added token): cut
    # every occurrence after its first character, so no piece holds a whole control token.
    ids = []
    rest = text
    while rest:
        m = pattern.search(rest)
        if m is None:
            ids += _call_encode(tokenizer, rest, split_special=False)
            break
        cut = m.start() + 1
        ids += _encode_text_safely(tokenizer, rest[:cut], controls, pattern)
        rest = rest[cut:]
    return ids


def auto_prefix_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts in front of every text when ``add_special_tokens=True`` (BOS)."""
    try:
        with_sp = list(tokenizer.encode("a", add_special_tokens=True))
        without = list(tokenizer.encode("a", add_special_tokens=False))
    except Exception:  # a minimal tokenizer without the flag adds nothing
        return []
    n = len(without)
    if len(with_sp) > n and with_sp[len(with_sp) - n:] == without:
        return with_sp[: len(with_sp) - n]
    return []


def encode_segments(tokenizer: Any, segments: Sequence[Segment], *, add_bos: bool = True) -> list[int]:
    """Tokenize rendered segments forge-safely.

    Control tokens are looked up in the *markup* only and become their single ids; the text between
    them (markup text and message content together, as HF tokenizes the text between added tokens) is
    encoded with ``add_special_tokens=False``. If that text holds a control token string (a forgery
    attempt, or markup+content forming one), it is encoded with ``split_special_tokens=True`` and, if the
    tokenizer still yields control ids, cut apart. Without forgery the ids equal what
    ``tokenizer.apply_chat_template(..., tokenize=True)`` gives.

    BOS: when the tokenizer adds a BOS by itself (``add_special_tokens=True``) and the ids do not start
    with it already (the template wrote none), it is prepended once, as ``tokenizer(text)`` would do;
    a template that writes ``{{ bos_token }}`` never gets a second one.
    """
    markup = "".join(s.text for s in segments if not s.is_content)
    controls = control_tokens(tokenizer, markup)
    pattern = _token_pattern(controls)

    # Split into ('tok', token) and ('run', [Segment...]) pieces at control tokens in markup.
    pieces: list[tuple[str, Any]] = []
    run: list[Segment] = []
    for seg in segments:
        if seg.is_content or pattern is None:
            run.append(seg)
            continue
        pos = 0
        for m in pattern.finditer(seg.text):
            if m.start() > pos:
                run.append(Segment(seg.text[pos:m.start()], False))
            pieces.append(("run", run))
            run = []
            pieces.append(("tok", m.group()))
            pos = m.end()
        if pos < len(seg.text):
            run.append(Segment(seg.text[pos:], False))
    pieces.append(("run", run))

    ids: list[int] = []
    for i, (kind, value) in enumerate(pieces):
        if kind == "tok":
            ids += _single_id(tokenizer, value)
            continue
        text = "".join(s.text for s in value)
        # HF strips whitespace next to added tokens flagged lstrip/rstrip (e.g. Phi-3's <|user|>).
        if i > 0 and controls.get(pieces[i - 1][1], (False, False))[1]:
            text = text.lstrip()
        if i + 1 < len(pieces) and controls.get(pieces[i + 1][1], (False, False))[0]:
            text = text.rstrip()
        if not text:
            continue
        if pattern is not None and pattern.search(text):
            ids += _encode_text_safely(tokenizer, text, controls, pattern)
        else:
            ids += _call_encode(tokenizer, text, split_special=False)
    if add_bos:
        prefix = auto_prefix_ids(tokenizer)
        if prefix and ids[: len(prefix)] != prefix:
            ids = prefix + ids
    return ids


def template_name(template: Any) -> str:
    return str(getattr(template, "name", type(template).__name__))


def no_system_error(name: str) -> TemplateError:
    return TemplateError(
        f"template {name!r} has no system role (nor has the model's own format); put the "
        "instructions in the first user message, or pick a template with a system role (e.g. 'chatml')"
    )
