"""Sessions stage: per-user conversations (TTL, size caps, one turn in flight per session)."""

from .store import Session, SessionHandle, SessionId, SessionStore, SessionView, Turn

__all__ = ["Session", "SessionHandle", "SessionId", "SessionStore", "SessionView", "Turn"]
