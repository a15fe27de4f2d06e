"""Signed session cookies and the ASGI middleware that puts a session on ``request.state``.

The cookie holds only the session id, signed with itsdangerous. The secret is random per launch
unless configured, so a leaked default key cannot sign cookies (the predecessor shipped one in
its docs). ``Secure`` is on when asked for, or (``secure=None``, the default) exactly when the
request came over HTTPS; ``SameSite=None`` requires ``Secure``.

Sessions are created lazily: a request that never calls ``get_session()`` (``/health``,
``/metrics``, static assets) creates nothing and sets no cookie; read-only routes look the
session up with :meth:`LazySessionHandle.existing`, which never creates one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.datastructures import MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError
from ..sessions import SessionHandle, SessionId, SessionStore

SameSite = Literal["lax", "strict", "none"]


@dataclass(frozen=True, slots=True)
class CookieSettings:
    """How the session cookie is written.

    Args:
        name: cookie name.
        same_site: ``lax`` (default), ``strict`` or ``none`` (``none`` needs ``secure=True``).
        secure: True = only over HTTPS; False = never set Secure; None = Secure iff the request
            is HTTPS (right for a demo on http://127.0.0.1 and behind TLS alike).
        max_age_s: cookie lifetime and signature expiry; None = browser-session cookie.
        path: cookie path.
    """

    name: str = "chatstream_sid"
    same_site: SameSite = "lax"
    secure: bool | None = None
    max_age_s: int | None = None
    path: str = "/"

    def __post_init__(self) -> None:
        if self.same_site not in ("lax", "strict", "none"):
            raise ConfigError(f"same_site must be 'lax', 'strict' or 'none', got {self.same_site!r}",
                              name="same_site")
        if self.same_site == "none" and self.secure is not True:
            raise ConfigError("same_site='none' requires secure=True (browsers reject it otherwise)",
                              name="secure")


class SessionCookies:
    """Signs and verifies session-id cookies, and builds ``Set-Cookie`` values."""

    def __init__(self, secret: str | bytes | None = None, settings: CookieSettings | None = None) -> None:
        if secret is not None and len(secret) < 16:
            raise ConfigError("session_secret must be at least 16 characters", name="session_secret")
        self.settings = settings or CookieSettings()
        self._serializer = URLSafeTimedSerializer(secret or secrets.token_urlsafe(32),
                                                  salt="chatstream_lab.session")

    def dump(self, session_id: str) -> str:
        return self._serializer.dumps(session_id)

    def load(self, value: str | None) -> str | None:
        """The session id in a cookie value, or None if absent, forged or expired."""
        if not value:
            return None
        try:
            sid = self._serializer.loads(value, max_age=self.settings.max_age_s)
        except BadSignature:
            return None
        return sid if isinstance(sid, str) else None

    def from_scope(self, scope: Scope) -> str | None:
        """The session id in the request's cookies. Parsed with Starlette's lenient parser: the
        stdlib's ``SimpleCookie`` drops *every* cookie of a header when one of them has a JSON,
        space or quote value (``g_state={"i_l":0}``, common on localhost)."""
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                found = cookie_parser(value.decode("latin-1")).get(self.settings.name)
                if found is not None:
                    return self.load(found)
        return None

    def set_cookie_value(self, session_id: str, *, https: bool) -> str:
        s = self.settings
        parts = [f"{s.name}={self.dump(session_id)}", f"Path={s.path}", "HttpOnly",
                 f"SameSite={s.same_site.capitalize()}"]
        if s.max_age_s is not None:
            parts.append(f"Max-Age={s.max_age_s}")
        if s.secure is True or (s.secure is None and https):
            parts.append("Secure")
        return "; ".join(parts)


class LazySessionHandle(SessionHandle):
    """A :class:`SessionHandle` whose session is looked up / created on first use."""

    def __init__(self, store: SessionStore, cookie_sid: str | None) -> None:
        self.store = store
        self._cookie_sid = cookie_sid
        self._sid: SessionId | None = None
        self.is_new = False

    @property
    def session_id(self) -> SessionId:
        if self._sid is None:
            self._sid, self.is_new = self.store.get_or_create(self._cookie_sid)
        return self._sid

    @session_id.setter
    def session_id(self, value: SessionId) -> None:
        self._sid = value

    @property
    def resolved(self) -> bool:
        return self._sid is not None

    def existing(self) -> SessionId | None:
        """The id of the live session the cookie names, without creating one (read-only routes
        use this, so cookieless requests never make or evict sessions)."""
        if self._sid is not None:
            return self._sid
        if self._cookie_sid is None or self.store.get(self._cookie_sid) is None:
            return None
        return SessionId(self._cookie_sid)

    def get_session(self):  # type: ignore[no-untyped-def]
        _ = self.session_id
        return super().get_session()


def is_https(scope: Scope) -> bool:
    return scope.get("scheme") in ("https", "wss")


class SessionMiddleware:
    """Pure ASGI middleware: ``request.state.session`` for every HTTP request, cookie on demand.

    Pure ASGI (not ``BaseHTTPMiddleware``) so it never wraps ``receive``/``send`` in in-memory
    streams, which is what hid client disconnects from the predecessor's handlers.
    """

    def __init__(self, app: ASGIApp, store: SessionStore, cookies: SessionCookies) -> None:
        self.app = app
        self.store = store
        self.cookies = cookies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handle = LazySessionHandle(self.store, self.cookies.from_scope(scope))
        scope.setdefault("state", {})["session"] = handle

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and handle.resolved and handle.is_new:
                headers = MutableHeaders(scope=message)
                if not _has_cookie(headers, self.cookies.settings.name):
                    headers.append("set-cookie",
                                   self.cookies.set_cookie_value(handle.session_id, https=is_https(scope)))
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _has_cookie(headers: MutableHeaders, name: str) -> bool:
    return any(v.startswith(name + "=") for v in headers.getlist("set-cookie"))
