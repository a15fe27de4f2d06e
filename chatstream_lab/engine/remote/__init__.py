"""The request-level engine whose tokens come from OpenAI-compatible servers over HTTP."""

from .engine import RemoteEngine

__all__ = ["RemoteEngine"]
