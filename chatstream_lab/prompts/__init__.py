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
from .history import truncate_messages
from .inspect import PromptInspection, inspect_prompt
from .jinja import JinjaTemplate
from .resolve import resolve_template

__all__ = [
    "AbstractChatPrompt",
    "ChatContent",
    "ChatPrompt",
    "ChatTemplate",
    "DeclarativeTemplate",
    "JinjaTemplate",
    "PromptInspection",
    "Segment",
    "inspect_prompt",
    "presets",
    "resolve_template",
    "truncate_messages",
]
