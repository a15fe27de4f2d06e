"""The bundled web chat page: ``GET /`` and ``GET /static/{app.js,style.css}``, served from the package.

No CDN, no inline script: a strict Content-Security-Policy lets the page talk only to its own
origin, and all text is rendered with ``textContent`` in ``app.js``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import Response

from .errors import http_error_response

WEB_DIR = Path(__file__).with_name("web")
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'self'")
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
            # same-origin, not no-referrer: under no-referrer a browser sends ``Origin: null`` on
            # the page's own POSTs, which the cross-site guard (guard.py) cannot tell from a foreign one
            "Referrer-Policy": "same-origin", "Cache-Control": "no-cache"}


def make_router() -> APIRouter:
    """Routes for the page; the files are read once here (never on the event loop, never at import)."""
    router = APIRouter()
    page = (WEB_DIR / "index.html").read_bytes()
    assets = {name: (WEB_DIR / name).read_bytes() for name in _ASSETS}

    @router.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @router.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets:  # a fixed allow-list: no path traversal to think about
            return http_error_response(404, f"no such asset {name!r}", "not_found")
        return Response(assets[name], media_type=_ASSETS[name], headers=_HEADERS)

    return router
