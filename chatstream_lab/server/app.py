"""``create_app()``: the FastAPI app that serves a :class:`ChatStream` (no module-level app).

Routes (each a few lines over the facade):

=============================  ==========================================================
``POST /chat_stream``          seed framing, or SSE with ``Accept: text/event-stream``
``POST /clear_context``        forget this session's conversation
``GET  /get_prompt``           the session's prompt text and messages
``GET/POST ..._generation_params``  session-scoped, validated sampling params
``POST /set_feedback``         like/dislike a reply by message id -> ``feedback_sink``
``GET  /get_load``             running / waiting counts (seed shape)
``POST /v1/chat/completions``  OpenAI-compatible (stream and not); ``GET /v1/models``
``GET  /health``               liveness; never touches the engine
``GET  /stats``, ``/metrics``  the stats snapshot as JSON / Prometheus text
``GET  /``                     the web chat page
=============================  ==========================================================

Middleware, outermost first: the error shield (any escaped exception -> JSON 500 with an error
id), the body timeout (``timeouts.BodyTimeoutMiddleware``), CORS (only if origins are given; never
``*`` with credentials), bearer auth (only if a token is given), the Host / cross-site guard, the
request-body limit, sessions.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from ..engine.core.protocol import EngineState
from ..errors import ConfigError
from ..service import Service
from . import openai_routes, web
from .auth import BearerAuthMiddleware
from .chatstream import ChatStream
from .errors import RETRY_AFTER_S, ErrorShieldMiddleware, install_handlers
from .framing import MESSAGE_ID_HEADER
from .timeouts import DEFAULT_BODY_TIMEOUT_S, BodyTimeoutMiddleware


def create_app(served: ChatStream | Service | None = None, *, token: str | None = None,
               cors_origins: Sequence[str] = (), allowed_hosts: Sequence[str] | None = None,
               web_ui: bool = True, openai_api: bool = True,
               close_on_shutdown: bool | None = None, title: str = "chatstream_lab",
               body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S, **chat_stream_options: Any) -> FastAPI:
    """Build the app for a :class:`ChatStream`, a :class:`~chatstream_lab.service.Service`, or
    ``ChatStream(**chat_stream_options)``.

    Args:
        served: the seed facade to serve (its sessions and cookies), or a Service (a facade with
            default session settings is made over it); made from ``chat_stream_options`` when None.
        token: require ``Authorization: Bearer <token>`` on every route but ``/health`` and the page.
        cors_origins: origins allowed to call the API from a browser (credentials allowed unless
            ``"*"`` is among them, in which case credentials are not allowed); they may also write
            cross-origin.
        allowed_hosts: ``Host`` names accepted besides loopback ones (``"*.example.org"``, ``"*"``);
            None: requests that arrive on loopback must name a loopback host, others are not
            checked (``server/guard.py``).
        web_ui / openai_api: include the chat page / the ``/v1`` routes.
        close_on_shutdown: close the engine when the app shuts down (default: when this call made
            the ChatStream).
        body_timeout_s: a request body must arrive within this many seconds of the request
            start, or it is answered 408 (slow-body clients).

    Example::

        app = create_app(model=scripted_model("Hi!"))
        BackgroundServer(app).start()
    """
    if served is not None and chat_stream_options:
        raise ConfigError(f"pass options either to ChatStream or to create_app, not both: "
                          f"{sorted(chat_stream_options)}", name=sorted(chat_stream_options)[0])
    owns = served is None
    if isinstance(served, Service):
        cs = ChatStream(service=served)
    elif served is None:
        cs = ChatStream(**chat_stream_options)
    else:
        cs = served
    if close_on_shutdown is None:
        close_on_shutdown = owns
    service = cs.service

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.attach()  # served again after a stop
        service.warm()  # the engine builds on its own thread; /health says "starting" meanwhile
        yield
        if close_on_shutdown:
            cs.close()

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.chat_stream = cs
    app.state.service = service
    # called by BackgroundServer.stop() before uvicorn closes connections: refuse new generations
    # and cancel the open ones, so every stream ends with its final event at once
    app.state.begin_shutdown = service.detach
    install_handlers(app)
    _add_seed_routes(app, cs)
    _add_ops_routes(app, cs)
    if openai_api:
        app.include_router(openai_routes.make_router(service))
    if web_ui:
        app.include_router(web.make_router())

    cs.append_middlewares(app, allowed_hosts=allowed_hosts, allowed_origins=cors_origins)
    if token:
        app.add_middleware(BearerAuthMiddleware, token=token)
    if cors_origins:
        origins = list(cors_origins)
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials="*" not in origins,
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "Accept"],
                           expose_headers=[MESSAGE_ID_HEADER, "Retry-After"])
    # slow bodies are cut before anything waits on them
    app.add_middleware(BodyTimeoutMiddleware, body_timeout_s=body_timeout_s)
    app.add_middleware(ErrorShieldMiddleware)  # outermost
    return app


def _add_seed_routes(app: FastAPI, cs: ChatStream) -> None:
    @app.post("/chat_stream", response_model=None)
    async def chat_stream(request: Request) -> Any:
        return await cs.handle_chat_stream_request(request)

    @app.post("/clear_context")
    async def clear_context(request: Request) -> Response:
        return await cs.handle_clear_context_request(request)

    @app.get("/get_prompt")
    async def get_prompt(request: Request) -> Response:
        return await cs.handle_get_prompt_request(request)

    @app.get("/get_generation_params")
    async def get_generation_params(request: Request) -> Response:
        return await cs.handle_get_generation_params_request(request)

    @app.post("/set_generation_params")
    async def set_generation_params(request: Request) -> Response:
        return await cs.handle_set_generation_params_request(request)

    @app.post("/set_feedback")
    async def set_feedback(request: Request) -> Response:
        return await cs.handle_set_feedback_request(request)

    @app.get("/get_load")
    async def get_load(request: Request) -> Response:
        return await cs.handle_get_load_request(request)


def _precision_info(model: Any) -> dict[str, Any]:
    """The model's precision and who chose it (``LoadedModel.precision_info``; seed-style models: dtype)."""
    info = getattr(model, "precision_info", None)
    return dict(info()) if callable(info) else {"precision": str(getattr(model, "dtype", "unknown")),
                                                "source": "dtype"}


def _add_ops_routes(app: FastAPI, cs: ChatStream) -> None:
    service = cs.service

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 while the generator can serve; 503 with ``Retry-After`` while its engine is still
        being built (``starting``), when it cannot serve, or while the server is stopping
        (``shutting_down``: a load balancer stops sending requests here while the open ones drain)."""
        state = service.health()
        if state.ok and service.accepting:
            return JSONResponse({"status": "ok", "engine": state.as_dict()})
        if not service.accepting:
            status = "shutting_down"
        else:
            status = "starting" if state.state is EngineState.STARTING else "unavailable"
        return JSONResponse({"status": status, "engine": state.as_dict()}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/stats")
    async def stats(history: bool = False) -> JSONResponse:
        snap = service.stats(with_history=history)
        limits = service.limits
        return JSONResponse({**snap.as_dict(with_history=history), "model": service.model.name,
                             "backend": service.backend,
                             "precision": _precision_info(service.model),
                             "limit": limits.num_of_concurrent_executions,
                             "max_queue_size": limits.max_queue_size,
                             "sessions": {**cs.sessions.usage(), "feedback_records": len(cs.feedback),
                                          "feedback_chars": cs.feedback.chars},
                             "request_limits": service.request_limits.as_dict()})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.exporter.render(), media_type=service.exporter.content_type)
