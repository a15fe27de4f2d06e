"""``ChatPrompt``: the predecessor's conversation object (seed API), on top of any template.

Kept from ChatStream 0.3: ``set_system``, ``set_requester``/``set_responder`` (display names),
``add_requester_msg``, ``add_responder_msg(None)`` (an open turn to generate), ``create_prompt``,
``get_stop_strs``, ``clear_last_responder_message`` (regenerate), ``get_turn``, ``is_empty``, the
last-message accessors, ``get_contents(opts)`` and the ``get_replacement_when_*`` hooks, so seed code
that subclasses ``AbstractChatPrompt`` and overrides ``create_prompt`` still runs.

Fixed: it pickles, deep-copies and round-trips through JSON (message ids kept); a non-string message
raises ConfigError and leaves the history unchanged; an open responder turn left by a failed
generation is replaced, not rendered, when the next user message arrives; rendering goes through a
template, so ``encode`` is forge-safe.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, TemplateError
from .base import apply_replacements
from .fingerprint import template_from_dict, template_to_dict
from .resolve import resolve_template

REQUESTER = "user"
RESPONDER = "assistant"


def _new_id() -> str:
    return str(uuid.uuid4())


def _check_str(value: Any, name: str, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__}: {value!r:.80}", name=name)


@dataclass
class ChatContent:
    """One message of the history. ``role`` is "user"/"assistant"; ``speaker`` the display name."""

    role: str
    message: str | None = None
    message_id: str | None = field(default_factory=_new_id)
    speaker: str = ""

    def get_role(self) -> str:  # seed: the role name the prompt used (requester / responder)
        return self.speaker or self.role

    def get_message(self) -> str | None:
        return self.message

    def set_message(self, msg: str | None) -> None:
        _check_str(msg, "msg", allow_none=True)
        self.message = msg

    def get_message_id(self) -> str | None:
        return self.message_id

    def set_message_id(self, message_id: str | None) -> None:
        self.message_id = message_id

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "message": self.message, "message_id": self.message_id,
                "speaker": self.speaker}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatContent:
        return cls(role=data["role"], message=data.get("message"), message_id=data.get("message_id"),
                   speaker=data.get("speaker", ""))


class ChatPrompt:
    """A conversation (system message + alternating user/assistant messages) rendered by a template.

    Args:
        template: None (the model's own chat template, known once a tokenizer is given to
            :meth:`encode` / ``create_prompt(tokenizer=...)``), a preset name, or a template object.
        system: the system message (None: none, or the template's default).
    """

    def __init__(self, template: Any = None, system: str | None = None) -> None:
        _check_str(system, "system", allow_none=True)
        self._template = None if template is None else resolve_template(template)
        self.system: str | None = system
        self.requester = REQUESTER
        self.responder = RESPONDER
        self.chat_mode = True
        self.chat_contents: list[ChatContent] = []

    # --- template --------------------------------------------------------------------------------

    @property
    def template(self) -> Any:
        return self._template

    @template.setter
    def template(self, template: Any) -> None:
        self._template = None if template is None else resolve_template(template)

    def _resolved(self, tokenizer: Any = None) -> Any:
        if self._template is not None:
            return self._template
        if tokenizer is None:
            raise TemplateError(
                "this ChatPrompt has template=None (the model's own chat template), so it needs the "
                "tokenizer: call create_prompt(tokenizer=tok) / encode(tok), or build it with "
                "ChatPrompt(template='chatml') or another preset")
        return resolve_template(None, tokenizer)

    # --- seed setters ------------------------------------------------------------------------------

    def set_system(self, system: str | None) -> None:
        _check_str(system, "system", allow_none=True)
        self.system = system

    def set_requester(self, requester: str) -> None:
        _check_str(requester, "requester")
        self.requester = requester

    def set_responder(self, responder: str) -> None:
        _check_str(responder, "responder")
        self.responder = responder

    def set_chat_mode_enabled(self, enabled: bool) -> None:
        self.chat_mode = bool(enabled)

    def is_chat_mode_enabled(self) -> bool:
        return self.chat_mode

    # --- history -----------------------------------------------------------------------------------

    def _last_is_open(self) -> bool:
        return bool(self.chat_contents) and self.chat_contents[-1].role == RESPONDER and \
            self.chat_contents[-1].message is None

    def add_requester_msg(self, msg: str) -> None:
        """Append a user message (a leftover open responder turn is dropped first)."""
        _check_str(msg, "msg")
        pairs = self.get_replacement_when_input()
        if pairs:  # seed subclasses replace at input time; templates do it when rendering
            msg = apply_replacements(msg, pairs)
        if self._last_is_open():
            self.chat_contents.pop()
        self.chat_contents.append(ChatContent(REQUESTER, msg, speaker=self.requester))

    def add_responder_msg(self, msg: str | None) -> None:
        """Append an assistant message; None opens the turn the model will generate."""
        _check_str(msg, "msg", allow_none=True)
        if self._last_is_open():
            self.chat_contents[-1].message = msg
            return
        self.chat_contents.append(ChatContent(RESPONDER, msg, speaker=self.responder))

    def _last(self, role: str) -> ChatContent | None:
        return next((c for c in reversed(self.chat_contents) if c.role == role), None)

    def get_requester_last_msg(self) -> str | None:
        last = self._last(REQUESTER)
        return None if last is None else last.message

    def get_responder_last_msg(self) -> str | None:
        last = self._last(RESPONDER)
        return None if last is None else last.message

    def set_responder_last_msg(self, msg: str | None) -> None:
        """Update the latest assistant message (the engine streams into it)."""
        _check_str(msg, "msg", allow_none=True)
        last = self._last(RESPONDER)
        if last is None:
            raise ConfigError("there is no responder message to update; call add_responder_msg(None) "
                              "first", name="msg")
        last.message = msg

    def set_responder_last_msg_id(self, message_id: str | None) -> None:
        last = self._last(RESPONDER)
        if last is None:
            raise ConfigError("there is no responder message to tag", name="message_id")
        last.message_id = message_id

    def get_responder_last_msg_id(self) -> str | None:
        last = self._last(RESPONDER)
        return None if last is None else last.message_id

    def find_chat_content_by_message_id(self, message_id: str) -> ChatContent | None:
        return next((c for c in self.chat_contents if c.message_id == message_id), None)

    def clear_last_responder_message(self) -> None:
        """Regenerate: the last assistant message becomes an open turn again (with a new id)."""
        if self.chat_contents and self.chat_contents[-1].role == RESPONDER:
            self.chat_contents[-1].message = None
            self.chat_contents[-1].message_id = _new_id()

    def remove_last_requester_msg(self) -> None:
        if self.chat_contents and self.chat_contents[-1].role == REQUESTER:
            self.chat_contents.pop()

    def remove_last_responder_msg(self) -> None:
        if self.chat_contents and self.chat_contents[-1].role == RESPONDER:
            self.chat_contents.pop()

    def clear(self) -> None:
        """Forget every message (the system message and template stay)."""
        self.chat_contents.clear()

    def get_turn(self) -> int:
        """Number of user messages so far (as ChatStream 0.3 counted turns)."""
        return sum(1 for c in self.chat_contents if c.role == REQUESTER)

    def is_empty(self) -> bool:
        return not self.chat_contents

    def get_contents(self, opts: dict[str, Any] | None = None) -> list[ChatContent]:
        """History for rendering. opts: ``omit_last_message`` (last one returned open),
        ``to_message_id`` (stop after that message)."""
        opts = opts or {}
        contents = list(self.chat_contents)
        to_id = opts.get("to_message_id")
        if to_id is not None:
            for i, c in enumerate(contents):
                if c.message_id == to_id:
                    contents = contents[: i + 1]
                    break
        if opts.get("omit_last_message") and contents:
            last = contents[-1]
            contents[-1] = ChatContent(last.role, None, last.message_id, last.speaker)
        return contents

    # --- rendering ---------------------------------------------------------------------------------

    def _messages(self, contents: list[ChatContent]) -> tuple[list[dict[str, str]], bool]:
        open_turn = bool(contents) and contents[-1].role == RESPONDER and contents[-1].message is None
        closed = [c for c in contents if c.message is not None]
        if not self.chat_mode:  # seed's non-chat mode: only the last user message
            last_user = [c for c in closed if c.role == REQUESTER][-1:]
            closed = last_user
        msgs: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system is not None else []
        msgs += [{"role": c.role, "content": c.message or ""} for c in closed]
        return msgs, open_turn

    def to_messages(self) -> list[dict[str, str]]:
        """OpenAI/transformers-style messages (system first; an open turn is left out)."""
        return self._messages(self.chat_contents)[0]

    def create_prompt(self, opts: dict[str, Any] | None = None, *, tokenizer: Any = None) -> str:
        """The prompt text. An open last responder turn means ``add_generation_prompt=True``."""
        msgs, open_turn = self._messages(self.get_contents(opts))
        return self._resolved(tokenizer).render(msgs, add_generation_prompt=open_turn)

    def encode(self, tokenizer: Any, opts: dict[str, Any] | None = None) -> list[int]:
        """Token ids of the prompt (forge-safe: see ``ChatTemplate.encode``)."""
        if type(self).create_prompt is not ChatPrompt.create_prompt:  # a seed subclass renders itself
            return list(tokenizer.encode(self.create_prompt(opts), add_special_tokens=True))
        msgs, open_turn = self._messages(self.get_contents(opts))
        return self._resolved(tokenizer).encode(tokenizer, msgs, add_generation_prompt=open_turn)

    def get_skip_len(self, omit_last_message: bool = False) -> int:
        return len(self.create_prompt({"omit_last_message": omit_last_message}))

    def get_stop_strs(self) -> list[str]:
        return [] if self._template is None else list(self._template.stop_strings)

    def get_output_replacements(self) -> tuple[tuple[str, str], ...]:
        """Replacements for generated text: the template's, or a seed subclass's hook."""
        hook = self.get_replacement_when_output()
        if hook:
            return tuple((str(a), str(b)) for a, b in hook)
        return () if self._template is None else tuple(self._template.output_replacements)

    # --- seed hooks ----------------------------------------------------------------------------

    def get_replacement_when_input(self) -> list[tuple[str, str]] | None:
        return None

    def get_replacement_when_output(self) -> list[tuple[str, str]] | None:
        return None

    def build_initial_prompt(self, chat_prompt: ChatPrompt) -> None:
        """Hook called once per new session (few-shot seeding); does nothing by default."""

    @staticmethod
    def replace_string(original: str, pairs: list[tuple[str, str]] | None) -> str:
        return original if not pairs else apply_replacements(original, pairs)

    def is_requester_role(self, role: str) -> bool:
        return role == self.requester

    # --- serialization -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable state; :meth:`from_dict` restores it (message ids included)."""
        return {
            "version": 1,
            "template": template_to_dict(self._template),
            "system": self.system,
            "requester": self.requester,
            "responder": self.responder,
            "chat_mode": self.chat_mode,
            "chat_contents": [c.to_dict() for c in self.chat_contents],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, template: Any = None) -> ChatPrompt:
        """Rebuild from :meth:`to_dict` output; ``template`` overrides the saved one."""
        if not isinstance(data, dict) or "chat_contents" not in data:
            raise ConfigError("from_dict needs the dict that ChatPrompt.to_dict() returned", name="data")
        obj = cls.__new__(cls)
        ChatPrompt.__init__(obj)
        obj._template = (resolve_template(template) if template is not None
                         else template_from_dict(data.get("template")))
        obj.system = data.get("system")
        obj.requester = data.get("requester", REQUESTER)
        obj.responder = data.get("responder", RESPONDER)
        obj.chat_mode = bool(data.get("chat_mode", True))
        obj.chat_contents = [ChatContent.from_dict(c) for c in data["chat_contents"]]
        return obj

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChatPrompt):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        name = getattr(self._template, "name", None)
        return (f"ChatPrompt(template={name!r}, system={self.system!r}, "
                f"messages={len(self.chat_contents)}, turn={self.get_turn()})")


AbstractChatPrompt = ChatPrompt
