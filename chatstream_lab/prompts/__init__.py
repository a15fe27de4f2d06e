"""Prompt templates and conversation history.

``ChatTemplate`` is the protocol (``render`` / forge-safe ``encode``); ``DeclarativeTemplate`` and
``JinjaTemplate`` implement it, ``presets`` names the common formats, ``resolve_template`` turns
None / a name / an object into a template, ``ChatPrompt`` is the seed's conversation object,
``inspect_prompt`` shows and lints what the model gets, ``truncate_messages`` fits a history into a
token budget.
"""

from __future__ import annotations

from . import presets
from .base import ChatTemplate, Segment
from .chat_prompt import AbstractChatPrompt, ChatContent, ChatPrompt
from .declarative import DeclarativeTemplate
from .encode import EncodedPrompt, as_messages, encode_chat_prompt, encode_messages, encode_reply
from .fingerprint import fingerprint
from .history import truncate_messages
from .inspect import PromptInspection, inspect_prompt
from .jinja import JinjaTemplate
from .resolve import resolve_template
from .system import SystemPromptTemplate, base_template, system_prompt_of, with_system_prompt

__all__ = [
    "AbstractChatPrompt",
    "ChatContent",
    "ChatPrompt",
    "ChatTemplate",
    "DeclarativeTemplate",
    "EncodedPrompt",
    "JinjaTemplate",
    "PromptInspection",
    "Segment",
    "SystemPromptTemplate",
    "as_messages",
    "base_template",
    "encode_chat_prompt",
    "encode_messages",
    "encode_reply",
    "fingerprint",
    "inspect_prompt",
    "presets",
    "resolve_template",
    "system_prompt_of",
    "truncate_messages",
    "with_system_prompt",
]
