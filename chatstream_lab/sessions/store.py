"""Sessions stage: per-user conversation state, updated once per turn.

Input: a session id (from a signed cookie) and a user turn. Output: a :class:`Turn` holding a
*working copy* of the conversation with the new user message and an open responder turn, which
the server encodes and submits. The stored conversation is only touched in
:meth:`SessionStore.finish_turn`, once, when the turn ends.

Invariants:
* at most one turn in flight per session (a second gets :class:`~chatstream_lab.errors.SessionBusy`);
* the stored ChatPrompt never holds an open (empty) responder turn: a turn that produced no text
  (cancelled while queued, model error) leaves the history exactly as it was;
* a cancelled turn that produced text is kept with its partial reply (the user saw it);
* bounded: idle sessions expire after ``ttl_s``, at most ``max_sessions`` live (least recently
  used idle ones are evicted), and history is trimmed to ``max_history_turns`` user turns and to
  ``max_session_chars`` characters of messages (oldest turns first), so the store never holds more
  than ``max_sessions * max_session_chars`` characters of conversation (:meth:`SessionStore.usage`);
  the server also trims the oldest turns of a conversation that outgrew the context window, and each
  session counts the turns it lost (``dropped_turns``, reset by :meth:`SessionStore.clear`);
* only callers that need a session create one (:meth:`SessionStore.get_or_create`); lookups
  (:meth:`SessionStore.get`) never do, so read-only traffic cannot evict anyone.
"""

from __future__ import annotations

import copy
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NewType, Protocol

from ..config import SamplingParams
from ..errors import ConfigError, NothingToRegenerate, SessionBusy, SessionError
from ..types import Finished, FinishReason

log = logging.getLogger(__name__)

SessionId = NewType("SessionId", str)
_MAX_MESSAGE_IDS = 64


class ChatPromptLike(Protocol):
    """The part of the seed's ChatPrompt API the store relies on."""

    def add_requester_msg(self, message: str) -> None: ...
    def add_responder_msg(self, message: str | None) -> None: ...
    def is_empty(self) -> bool: ...
    def create_prompt(self) -> str: ...


@dataclass(eq=False)
class Session:
    """One user's state. Mutated only by :class:`SessionStore` under its lock."""

    id: SessionId
    prompt: Any  # a ChatPrompt
    params: SamplingParams
    created_at: float
    last_used: float
    extras: dict[str, Any] = field(default_factory=dict)  # user data set through the mapping view
    message_ids: OrderedDict[str, str] = field(default_factory=OrderedDict)  # id -> reply (bounded)
    busy: bool = False
    epoch: int = 0  # bumped by clear(); a turn begun in an older epoch is not committed
    chars: int = 0  # message characters held (conversation + remembered replies), see usage()
    dropped_turns: int = 0  # oldest user turns trimmed away since the last clear (window or cap)
    notice: str | None = None  # why the conversation was cleared for this user (shown until the next turn)


@dataclass(frozen=True, eq=False)
class Turn:
    """One user turn in flight: ``prompt`` is a private copy ending in an open responder turn."""

    session_id: SessionId
    prompt: Any
    user_input: str | None  # None when regenerating
    regenerate: bool
    params: SamplingParams
    epoch: int
    _done: list[bool] = field(default_factory=lambda: [False], repr=False)


class SessionStore:
    """In-memory, thread-safe store of :class:`Session` objects.

    Args:
        new_prompt: makes the empty conversation of a new session (e.g. ``ChatPrompt``'s class).
        default_params: generation parameters a new session starts with.
        ttl_s: idle time after which a session is dropped.
        max_sessions: live sessions kept; beyond it the least recently used idle one goes.
        max_history_turns: user turns kept per conversation (oldest dropped first).
        max_session_chars: message characters kept per session (oldest turns dropped first; the
            newest turn is always kept whole).
        clock: monotonic seconds; injectable for tests.
        on_forget: called with a session id whose conversation is gone (cleared, replaced,
            deleted, expired, evicted), so whatever was kept warm for it (the engine's KV) is
            dropped. Called under the store's lock: it must be quick and must not call back.

    Example::

        store = SessionStore(ChatPrompt, SamplingParams())
        sid = store.create()
        turn = store.begin_turn(sid, "Hello")
        try:
            finished = run(turn.prompt)          # generate from the working copy
        finally:
            store.finish_turn(turn, finished)    # commits once; None means "no result"
    """

    def __init__(self, new_prompt: Callable[[], Any], default_params: SamplingParams | None = None, *,
                 ttl_s: float = 3600.0, max_sessions: int = 1000, max_history_turns: int = 50,
                 max_session_chars: int = 100_000, clock: Callable[[], float] = time.monotonic,
                 on_forget: Callable[[str], None] | None = None) -> None:
        for name, value in (("ttl_s", ttl_s), ("max_sessions", max_sessions),
                            ("max_history_turns", max_history_turns), ("max_session_chars", max_session_chars)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}", name=name)
        self._new_prompt = new_prompt
        self.default_params = default_params or SamplingParams()
        self.ttl_s = float(ttl_s)
        self.max_sessions = int(max_sessions)
        self.max_history_turns = int(max_history_turns)
        self.max_session_chars = int(max_session_chars)
        self._clock = clock
        self._on_forget = on_forget
        self._lock = threading.RLock()
        self._sessions: OrderedDict[SessionId, Session] = OrderedDict()  # LRU order

    # -- lifecycle ------------------------------------------------------------------------
    def create(self) -> SessionId:
        """Make a new session and return its (unguessable) id."""
        sid = SessionId(secrets.token_urlsafe(24))
        prompt = self._new_prompt()
        now = self._clock()
        with self._lock:
            self._make_room()
            self._sessions[sid] = Session(sid, prompt, self.default_params, now, now)
        return sid

    def get_or_create(self, session_id: str | None) -> tuple[SessionId, bool]:
        """The id of a live session (``session_id`` if still valid), and whether it is new."""
        if session_id is not None and self._touch(SessionId(session_id)) is not None:
            return SessionId(session_id), False
        return self.create(), True

    def get(self, session_id: str) -> Session | None:
        """The live session (touching it), or None if unknown or expired. Never creates one."""
        return self._touch(SessionId(session_id))

    def blank_prompt(self) -> Any:
        """The conversation a new session would start with (not stored anywhere)."""
        return self._new_prompt()

    def usage(self) -> dict[str, int]:
        """Sessions and message characters held now, and the bounds on both (for ``/stats``)."""
        with self._lock:
            return {"live": len(self._sessions), "busy": sum(s.busy for s in self._sessions.values()),
                    "chars": sum(s.chars for s in self._sessions.values()),
                    "max_sessions": self.max_sessions, "max_session_chars": self.max_session_chars,
                    "max_total_chars": self.max_sessions * self.max_session_chars}

    def require(self, session_id: str) -> Session:
        session = self.get(session_id)
        if session is None:
            raise SessionError(f"unknown or expired session {session_id!r}")
        return session

    def delete(self, session_id: str) -> None:
        with self._lock:
            if self._sessions.pop(SessionId(session_id), None) is not None:
                self._forgot(SessionId(session_id))

    def purge_expired(self) -> int:
        """Drop idle sessions older than ``ttl_s``; returns how many went."""
        cutoff = self._clock() - self.ttl_s
        with self._lock:
            dead = [sid for sid, s in self._sessions.items() if s.last_used < cutoff and not s.busy]
            for sid in dead:
                del self._sessions[sid]
                self._forgot(sid)
            return len(dead)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return session_id in self._sessions

    # -- turns ----------------------------------------------------------------------------
    def begin_turn(self, session_id: str, user_input: str | None, *, regenerate: bool = False) -> Turn:
        """Start a turn; the stored history is unchanged until :meth:`finish_turn`.

        Raises:
            SessionBusy: a turn of this session is still in flight.
            NothingToRegenerate: ``regenerate`` on a conversation without a user turn.
            SessionError: the session is unknown or expired.
        """
        with self._lock:
            session = self.require(session_id)
            if session.busy:
                raise SessionBusy("a reply is already being generated for this session; "
                                  "wait for it or stop it first")
            work = _working_copy(session.prompt)
            if regenerate:
                _open_regenerate(work)
            else:
                if not isinstance(user_input, str):
                    raise ConfigError("user_input must be a string", name="user_input")
                work.add_requester_msg(user_input)
                work.add_responder_msg(None)
            session.busy = True
            session.notice = None  # the user saw the cleared conversation; this is a new one
            return Turn(session.id, work, None if regenerate else user_input, regenerate,
                        session.params, session.epoch)

    def finish_turn(self, turn: Turn, finished: Finished | None, *, message_id: str | None = None,
                    dropped_turns: int = 0) -> bool:
        """End ``turn`` (call it in ``finally``); idempotent. Returns True if history changed.

        The reply is committed when the turn produced text and did not fail (a cancelled turn
        keeps its partial text; a failed one is never taken as the assistant's turn). With no
        text, an error, or ``finished`` None, history stays as it was.
        ``message_id`` names the committed reply (for feedback); the last 64 are remembered.
        ``dropped_turns``: user turns the caller trimmed from ``turn.prompt`` to fit the context
        window; counted in :attr:`Session.dropped_turns` with those the turn cap drops.
        """
        with self._lock:
            if turn._done[0]:
                return False
            turn._done[0] = True
            session = self._sessions.get(turn.session_id)
            if session is None:
                return False
            session.busy = False
            session.last_used = self._clock()
            if finished is None or session.epoch != turn.epoch:
                return False
            text = finished.text
            if finished.finish_reason is FinishReason.ERROR or (
                    not text and finished.finish_reason is FinishReason.CANCELLED):
                return False
            _close_open_turn(turn.prompt, text, message_id)
            session.dropped_turns += dropped_turns + _trim(turn.prompt, self.max_history_turns)
            session.prompt = turn.prompt
            if message_id is not None:
                session.message_ids[message_id] = text
                while len(session.message_ids) > _MAX_MESSAGE_IDS:
                    session.message_ids.popitem(last=False)
            self._fit(session)
            return True

    def _fit(self, session: Session) -> None:
        """Trim ``session`` to ``max_session_chars`` (oldest turns, then oldest remembered replies)
        and record its size."""
        chars = _trim_to_chars(session.prompt, self.max_session_chars)
        shown = {getattr(c, "message_id", None) for c in getattr(session.prompt, "chat_contents", None) or ()}
        extra = [mid for mid in session.message_ids if mid not in shown]  # replies no longer in the history
        replies = sum(len(session.message_ids[mid]) for mid in extra)
        for mid in extra:  # oldest first
            if chars + replies <= self.max_session_chars:
                break
            replies -= len(session.message_ids.pop(mid))
        session.chars = chars + replies

    # -- conversation and params ------------------------------------------------------------
    def clear(self, session_id: str) -> None:
        """Forget the conversation; a turn still in flight will not be committed."""
        prompt = self._new_prompt()
        with self._lock:
            session = self.require(session_id)
            session.prompt = prompt
            session.epoch += 1
            session.dropped_turns = 0
            self._fit(session)
            self._forgot(session.id)

    def reset_all(self, new_prompt: Callable[[], Any], notice: str) -> int:
        """Every conversation starts over with ``new_prompt`` (and so do new sessions), each telling
        its user ``notice`` until their next turn: what a switch to a model with another chat
        template does (an old conversation rendered by the new template is not what it was).
        Parameters and cookies stay; a turn in flight is not committed. Returns how many were
        cleared."""
        with self._lock:
            self._new_prompt = new_prompt
            sessions = list(self._sessions.values())
            for session in sessions:
                session.prompt = new_prompt()
                session.epoch += 1
                session.dropped_turns = 0
                session.notice = notice
                self._fit(session)
                self._forgot(session.id)
            return len(sessions)

    def set_prompt(self, session_id: str, prompt: Any) -> None:
        with self._lock:
            session = self.require(session_id)
            session.prompt = prompt
            session.epoch += 1
            self._fit(session)
            self._forgot(session.id)

    def params(self, session_id: str) -> SamplingParams:
        return self.require(session_id).params

    def set_params(self, session_id: str, **changes: Any) -> SamplingParams:
        """Validate and store new generation params for this session (InvalidParameter names a bad one)."""
        with self._lock:
            session = self.require(session_id)
            session.params = session.params.replace(**changes)
            return session.params

    # -- internals ----------------------------------------------------------------------------
    def _touch(self, sid: SessionId) -> Session | None:
        now = self._clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if not session.busy and session.last_used < now - self.ttl_s:
                del self._sessions[sid]
                self._forgot(sid)
                return None
            session.last_used = now
            self._sessions.move_to_end(sid)
            return session

    def _make_room(self) -> None:
        if len(self._sessions) < self.max_sessions:
            return
        self.purge_expired()
        while len(self._sessions) >= self.max_sessions:
            victim = next((sid for sid, s in self._sessions.items() if not s.busy), None)
            if victim is None:
                raise SessionError(f"too many sessions in flight (max_sessions={self.max_sessions})")
            del self._sessions[victim]
            self._forgot(victim)

    def _forgot(self, sid: SessionId) -> None:
        """Tell ``on_forget`` a conversation is gone (the engine drops its kept KV); never raises."""
        if self._on_forget is None:
            return
        try:
            self._on_forget(sid)
        except Exception:  # an optimisation's hook must not break the session store
            log.exception("on_forget raised for a session")


class SessionView(MutableMapping[str, Any]):
    """A dict-like window on one session, as the seed's ``session_mgr.get_session()`` returned.

    ``"chat_prompt"`` is the session's live ChatPrompt and ``"generation_params"`` its params (as a
    dict); other keys are the caller's own data. ``pop("chat_prompt")`` clears the conversation.
    """

    _PROMPT = "chat_prompt"
    _PARAMS = "generation_params"

    def __init__(self, store: SessionStore, session_id: SessionId) -> None:
        self.store = store
        self.session_id = session_id

    def _session(self) -> Session:
        return self.store.require(self.session_id)

    def __getitem__(self, key: str) -> Any:
        s = self._session()
        if key == self._PROMPT:
            return s.prompt
        if key == self._PARAMS:
            return s.params.as_dict()
        return s.extras[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key == self._PROMPT:
            self.store.set_prompt(self.session_id, value)
        elif key == self._PARAMS:
            self.store.set_params(self.session_id, **dict(value))
        else:
            self._session().extras[key] = value

    def __delitem__(self, key: str) -> None:
        if key == self._PROMPT:
            self.store.clear(self.session_id)
        elif key == self._PARAMS:
            with self.store._lock:
                self._session().params = self.store.default_params
        else:
            del self._session().extras[key]

    def __iter__(self) -> Iterator[str]:
        yield self._PROMPT
        yield self._PARAMS
        yield from list(self._session().extras)

    def __len__(self) -> int:
        return 2 + len(self._session().extras)

    def __repr__(self) -> str:
        return f"<SessionView {self.session_id[:6]}… keys={list(self)}>"


class SessionHandle:
    """What ``request.state.session`` holds: the seed's session manager shape."""

    def __init__(self, store: SessionStore, session_id: SessionId, *, is_new: bool = False) -> None:
        self.store = store
        self.session_id = session_id
        self.is_new = is_new

    def get_session(self) -> SessionView:
        return SessionView(self.store, self.session_id)

    def save_session(self) -> None:
        """Accepted for seed compatibility: the in-memory store is always up to date."""

    def __repr__(self) -> str:
        return f"<SessionHandle {self.session_id[:6]}… new={self.is_new}>"


# -- the few ChatPrompt operations (seed API names), kept here so the store is prompt-agnostic ------
def _working_copy(prompt: Any) -> Any:
    """A deep copy of the conversation that shares the (immutable, maybe large) template object."""
    template = getattr(prompt, "template", None)
    memo = {id(template): template} if template is not None else {}
    return copy.deepcopy(prompt, memo)


def _open_regenerate(work: Any) -> None:
    """Reopen the last reply of ``work`` for regeneration (or raise NothingToRegenerate)."""
    if work.is_empty() or work.get_turn() == 0:
        raise NothingToRegenerate("nothing to regenerate: the conversation has no user turn yet")
    work.clear_last_responder_message()
    contents = work.get_contents()
    if not contents or contents[-1].get_message() is not None:  # history ended with a user message
        work.add_responder_msg(None)


def _close_open_turn(work: Any, text: str, message_id: str | None) -> None:
    work.set_responder_last_msg(text)
    if message_id is not None and hasattr(work, "set_responder_last_msg_id"):
        work.set_responder_last_msg_id(message_id)


def _trim(prompt: Any, max_turns: int) -> int:
    """Drop the oldest turns so at most ``max_turns`` user messages remain (system message kept);
    returns how many went."""
    contents = getattr(prompt, "chat_contents", None)
    if not isinstance(contents, list) or prompt.get_turn() <= max_turns:
        return 0
    excess = dropped = prompt.get_turn() - max_turns
    cut = 0
    for i, c in enumerate(contents):
        if c.role == "user":
            if excess == 0:
                cut = i
                break
            excess -= 1
    else:
        cut = len(contents)
    del contents[:cut]
    return dropped


def _trim_to_chars(prompt: Any, max_chars: int) -> int:
    """Drop the oldest turns (a user message and what follows it) while the messages hold more
    than ``max_chars`` characters, keeping the newest turn; returns the characters left. A prompt
    without ``chat_contents`` (a custom seed class) is measured by its rendered text, untrimmed."""
    contents = getattr(prompt, "chat_contents", None)
    if not isinstance(contents, list):
        try:
            return len(prompt.create_prompt())
        except Exception:
            return 0
    sizes = [len(getattr(c, "message", None) or "") for c in contents]
    total = sum(sizes)
    starts = [i for i, c in enumerate(contents) if getattr(c, "role", None) == "user"]
    head = cut = starts[0] if starts else len(contents)  # anything before the first turn stays
    for start in starts[1:]:  # the newest turn stays, whatever its size
        if total <= max_chars:
            break
        total -= sum(sizes[cut:start])
        cut = start
    del contents[head:cut]
    return total
