"""The one place where exceptions become HTTP statuses and JSON error bodies.

Every error response of the server, on every route (seed, ``/v1``, ops) and from every layer
(middleware, route, unexpected exception), has OpenAI's shape
``{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}`` so one
client-side parser (the ``openai`` SDK's included) handles all of them. An unexpected exception
is logged with a fresh error id and answered 500 with only that id (also as ``error.error_id``):
no exception text, path or device reaches a client. :func:`public_generation_error` does the same
for a generation that failed mid-stream.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    AdmissionError,
    ChatStreamLabError,
    ConfigError,
    EngineClosed,
    EngineUnavailable,
    InvalidParameter,
    ModelClosed,
    NothingToRegenerate,
    QueueFull,
    SessionBusy,
    SessionError,
    ShuttingDown,
    TemplateError,
)
from ..types import Finished

RETRY_AFTER_S = 1

log = logging.getLogger(__name__)


def new_error_id() -> str:
    """A short random id that ties a client's error message to the server log line."""
    return uuid.uuid4().hex[:12]


def public_generation_error(finished: Finished) -> str:
    """What a client is told of a failed generation: a fixed message with an error id. The detail
    (exception text, device, paths, upstream URLs) is logged under that id, never sent."""
    error_id = new_error_id()
    log.error("request %s failed (error id %s): %s", finished.request_id, error_id, finished.error)
    return f"generation failed (error id {error_id})"


def internal_error_response(exc: BaseException, where: str = "") -> JSONResponse:
    """500 for an unexpected exception: logged with its traceback under a fresh error id, and only
    that id is sent (``error.message`` and ``error.error_id``)."""
    error_id = new_error_id()
    log.error("unexpected error%s (error id %s)", f" in {where}" if where else "", error_id,
              exc_info=(type(exc), exc, exc.__traceback__))
    body = error_body(f"internal server error (error id {error_id})", "internal_error")
    body["error"]["error_id"] = error_id
    return JSONResponse(body, status_code=500)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    status: int
    type: str
    param: str | None = None


class BadRequest(ChatStreamLabError):
    """The HTTP request itself is malformed (not JSON, wrong shape). ``param`` names the field."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.status = status
        self.kind = kind


class BodyTooLarge(BadRequest):
    """The request body is over ``RequestLimits.max_body_bytes`` (raised while it streams in)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes (max_body_bytes)",
                         status=413, kind="request_too_large")
        self.limit = limit


class Unauthorized(ChatStreamLabError):
    """Missing or wrong bearer token."""


# Most specific first: the first isinstance match wins.
_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (QueueFull, 429, "queue_full"),
    (AdmissionError, 429, "admission"),
    (SessionBusy, 409, "session_busy"),
    (NothingToRegenerate, 409, "nothing_to_regenerate"),
    (SessionError, 400, "session_error"),
    (InvalidParameter, 400, "invalid_parameter"),
    (ConfigError, 400, "invalid_request"),
    (TemplateError, 422, "template_error"),
    (Unauthorized, 401, "unauthorized"),
    (ShuttingDown, 503, "shutting_down"),
    (EngineClosed, 503, "engine_closed"),
    (EngineUnavailable, 503, "engine_unavailable"),
    (ModelClosed, 503, "model_closed"),
)


def classify(exc: BaseException) -> ErrorInfo:
    """Status, type and param for ``exc``; unknown exceptions are 500 ``internal_error``."""
    if isinstance(exc, BadRequest):
        return ErrorInfo(exc.status, exc.kind, exc.param)
    for cls, status, kind in _TABLE:
        if isinstance(exc, cls):
            return ErrorInfo(status, kind, getattr(exc, "name", None))
    return ErrorInfo(500, "internal_error")


def error_body(message: str, type_: str, param: str | None = None) -> dict[str, Any]:
    """The one error shape (OpenAI's); ``code`` repeats the machine-readable ``type``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": type_}}


def error_response(exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON response for ``exc``; 429 carries ``Retry-After``, 401 ``WWW-Authenticate``;
    an exception not of ours is a logged 500 with an error id (:func:`internal_error_response`)."""
    info = classify(exc)
    if info.status >= 500 and info.status != 503:
        return internal_error_response(exc)
    message = str(exc)
    hdrs = dict(headers or {})
    if info.status in (429, 503):
        hdrs.setdefault("Retry-After", str(RETRY_AFTER_S))
    if info.status == 401:
        hdrs.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(error_body(message, info.type, info.param), status_code=info.status, headers=hdrs)


def http_error_response(status: int, message: str, type_: str = "invalid_request") -> JSONResponse:
    return JSONResponse(error_body(message, type_), status_code=status)


def install_handlers(app: Any) -> None:
    """Register the mapping on a FastAPI/Starlette app (our errors, HTTP errors, validation errors)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def on_lab_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if isinstance(exc.__cause__, ChatStreamLabError):  # e.g. FastAPI's body parsing hit a BodyTimeout
            return error_response(exc.__cause__)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid"))
        return JSONResponse(error_body(msg, "invalid_request", param), status_code=422)

    app.add_exception_handler(ChatStreamLabError, on_lab_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)


class ErrorShieldMiddleware:
    """Outermost pure ASGI layer: an exception that escaped every handler becomes the JSON 500 of
    :func:`internal_error_response` (logged once, with an error id) instead of Starlette's
    plain-text page. After the response has started nothing can be sent: it is re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            where = f"{scope.get('method', '')} {scope.get('path', '')}"
            response = error_response(exc) if isinstance(exc, ChatStreamLabError) else \
                internal_error_response(exc, where)
            await response(scope, receive, send)
