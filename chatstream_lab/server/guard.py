"""Host and cross-site request checks (DNS rebinding and CSRF), before any route runs.

Two rules, both pure header checks in one ASGI middleware:

* **Host.** A request that arrived on a loopback interface must name a loopback host
  (``localhost``, ``*.localhost``, ``127.0.0.1`` or any 127/8 address, ``[::1]``; any port): a
  DNS-rebinding page reaches a loopback server under its own host name, which is refused. A
  request that arrived on another interface (the server was bound wider, e.g. ``0.0.0.0``) is not
  checked, unless ``allowed_hosts`` is given: then every request must name a loopback host or
  one of those (``"*.example.org"`` matches subdomains, ``"*"`` anything). Put the public name of
  a reverse proxy there when it forwards its own ``Host``. Refused: 400 ``invalid_host``.
* **Cross-site writes.** An unsafe request (POST, PUT, PATCH, DELETE) whose ``Origin`` is not
  this server's own (same host and port as ``Host``) nor one of ``allowed_origins`` (the CORS
  list), or that a browser marks ``Sec-Fetch-Site: cross-site``/``same-site`` (another port of
  localhost is "same-site"), is refused 403 ``cross_origin``; an unsafe request that carries
  cookies and a body must be ``application/json`` (415 ``unsupported_media_type``), which a
  cross-origin page cannot send without a CORS preflight that this server does not grant.
  Clients that are not browsers (``curl``, the ``openai`` SDK) send neither header and are unaffected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_body

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RequestGuardMiddleware:
    """Refuses foreign ``Host`` names on loopback and cross-site writes (see the module docstring).

    Args:
        allowed_hosts: host names accepted besides loopback ones, on every interface; None (the
            default) checks only requests that arrived on loopback.
        allowed_origins: origins allowed to write cross-origin (the app's CORS origins).
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Sequence[str] | None = None,
                 allowed_origins: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else tuple(h.lower() for h in allowed_hosts)
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self._host_refusal(scope, headers.get("host", ""))
        if refusal is None and scope["type"] == "http" and scope.get("method") in UNSAFE_METHODS:
            refusal = self._write_refusal(headers)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await refusal(scope, receive, send)

    def _host_refusal(self, scope: Scope, host: str) -> JSONResponse | None:
        name = host_name(host)
        if not host or is_loopback_name(name):
            return None
        if self.allowed_hosts is None:
            if not arrived_on_loopback(scope):
                return None
        elif any(_matches(name, pattern) for pattern in self.allowed_hosts):
            return None
        return _refuse(400, f"host {name!r} is not served here (allowed: loopback names"
                            f"{', ' + ', '.join(self.allowed_hosts) if self.allowed_hosts else ''}); "
                       "start the server with allowed_hosts / --allowed-host to accept it",
                       "invalid_host")

    def _write_refusal(self, headers: dict[str, str]) -> JSONResponse | None:
        origin = headers.get("origin")
        site = headers.get("sec-fetch-site", "")
        if origin is not None and not self._origin_ok(origin, headers.get("host", ""), site):
            return _refuse(403, f"cross-origin request from {origin!r} refused", "cross_origin")
        if site in ("cross-site", "same-site") and not (origin and self._listed(origin)):
            return _refuse(403, f"cross-site request refused (Sec-Fetch-Site: {site})", "cross_origin")
        if "cookie" in headers and _has_body(headers) and not _is_json(headers.get("content-type", "")):
            return _refuse(415, "send the body as JSON (Content-Type: application/json)",
                           "unsupported_media_type")
        return None

    def _listed(self, origin: str) -> bool:
        return "*" in self.allowed_origins or origin.rstrip("/").lower() in self.allowed_origins

    def _origin_ok(self, origin: str, host: str, site: str) -> bool:
        if self._listed(origin):
            return True
        if origin == "null":  # opaque (sandboxed frame, file://, a no-referrer page): only if the
            return site == "same-origin"  # browser itself vouches that it is this origin
        return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def host_name(host: str) -> str:
    """``Host`` header -> lower-case name without port (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def arrived_on_loopback(scope: Scope) -> bool:
    """Whether the connection's local address (``scope["server"]``) is a loopback IP."""
    server = scope.get("server")
    if not server:
        return False
    try:
        address = ipaddress.ip_address(str(server[0]))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _matches(name: str, pattern: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) or name == pattern[2:]
    return name == pattern


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def _has_body(headers: dict[str, str]) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _refuse(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(error_body(message, kind), status_code=status)
