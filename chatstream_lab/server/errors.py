"""The one place where exceptions become HTTP statuses and JSON error bodies.

Every error response of the server has the OpenAI-style shape
``{"error": {"message": str, "type": str, "param": str | None}}`` so one client-side parser
handles all of them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import (
    AdmissionError,
    ChatStreamLabError,
    ConfigError,
    EngineUnavailable,
    InvalidParameter,
    NothingToRegenerate,
    QueueFull,
    SessionBusy,
    SessionError,
    TemplateError,
)
from ..types import Finished

RETRY_AFTER_S = 1

log = logging.getLogger(__name__)


def public_generation_error(finished: Finished) -> str:
    """What a client is told of a failed generation: a fixed message with an error id. The detail
    (exception text, device, paths, upstream URLs) is logged under that id, never sent."""
    error_id = uuid.uuid4().hex[:12]
    log.error("request %s failed (error id %s): %s", finished.request_id, error_id, finished.error)
    return f"generation failed (error id {error_id})"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    status: int
    type: str
    param: str | None = None


class BadRequest(ChatStreamLabError):
    """The HTTP request itself is malformed (not JSON, wrong shape). ``param`` names the field."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


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
    (EngineUnavailable, 503, "engine_unavailable"),
)


def classify(exc: BaseException) -> ErrorInfo:
    """Status, type and param for ``exc``; unknown exceptions are 500 ``internal_error``."""
    if isinstance(exc, BadRequest):
        return ErrorInfo(exc.status, "invalid_request", exc.param)
    for cls, status, kind in _TABLE:
        if isinstance(exc, cls):
            return ErrorInfo(status, kind, getattr(exc, "name", None))
    return ErrorInfo(500, "internal_error")


def error_body(message: str, type_: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param}}


def error_response(exc: BaseException, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON response for ``exc``; 429 carries ``Retry-After``, 401 ``WWW-Authenticate``."""
    info = classify(exc)
    message = str(exc) if info.status < 500 or info.status == 503 else "internal server error"
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
