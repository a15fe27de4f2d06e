"""Optional bearer-token auth for every route except ``/health`` and the web page's files.

Pure ASGI middleware. The token is compared in constant time. The page itself holds no secret,
so it loads without a token and then sends ``Authorization: Bearer`` on its own requests (it
takes ``#token=`` from its URL's fragment, which never reaches the server or its access log, and
keeps it in the tab). :func:`page_url` makes that URL.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from urllib.parse import quote

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_body

PUBLIC_PATHS = frozenset({"/health", "/", "/index.html", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)


class BearerAuthMiddleware:
    """401 JSON unless ``Authorization: Bearer <token>`` matches.

    Only a real CORS preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
    passes without a token, since browsers never send credentials on one; a websocket scope without
    the token is closed (policy violation) before the app sees it; lifespan passes.
    """

    def __init__(self, app: ASGIApp, token: str, public_paths: Iterable[str] = PUBLIC_PATHS,
                 public_prefixes: tuple[str, ...] = PUBLIC_PREFIXES) -> None:
        if not token:
            raise ValueError("token must be a non-empty string")
        self.app = app
        self._token = token.encode()
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = public_prefixes

    def _public(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        return path in self.public_paths or path.startswith(self.public_prefixes) or _is_preflight(scope)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token):
                    return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._public(scope) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse(error_body("missing or wrong bearer token (send 'Authorization: Bearer "
                                           "<token>')", "unauthorized"), status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _is_preflight(scope: Scope) -> bool:
    if scope.get("method") != "OPTIONS":
        return False
    names = {name for name, _ in scope.get("headers", ())}
    return b"origin" in names and b"access-control-request-method" in names


def page_url(base_url: str, token: str | None) -> str:
    """The chat page's URL, with the token in the fragment (``#token=...``): a browser never sends
    a fragment, so the token stays out of access logs, proxies and Referer headers."""
    return base_url.rstrip("/") + "/" + (f"#token={quote(token, safe='')}" if token else "")
