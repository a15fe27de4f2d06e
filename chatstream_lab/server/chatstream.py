"""The seed's facade: ``ChatStream`` serves one model configuration to many HTTP users.

It glues the stages together for HTTP and holds no generation logic: a request's body is
validated, the session's turn begun (:mod:`~chatstream_lab.sessions`), the working conversation
encoded (:mod:`~chatstream_lab.prompts`), submitted to the engine (which may refuse with
``QueueFull`` -> 429 *before* any byte is streamed), and the events written by
:class:`~chatstream_lab.server.streaming.EventStreamResponse`. The turn is committed and the
user's callback fired exactly once, when the engine has retired the request.

Works in a user's own FastAPI app, with or without :meth:`ChatStream.append_middlewares`; without
it, the session cookie is handled inside :meth:`handle_chat_stream_request`. Constructing it
starts nothing: the engine thread starts on the first request (or :meth:`start`).
"""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..config import Limits, RequestLimits, SamplingParams, ServeConfig, template_fingerprint
from ..errors import ChatStreamLabError, ConfigError
from ..prompts import encode_chat_prompt
from ..service import Service
from ..sessions import SessionStore, Turn
from ..types import Finished
from . import conversation
from .body_limit import BodyLimitMiddleware
from .errors import BadRequest, error_response
from .feedback import FeedbackLog
from .framing import MESSAGE_ID_HEADER, Framing, make_encoder
from .guard import RequestGuardMiddleware
from .requests import generation_param_changes, parse_chat_stream, parse_json_object
from .session_cookie import CookieSettings, LazySessionHandle, SessionCookies, SessionMiddleware, is_https
from .shutdown import LifespanDrainMiddleware
from .streaming import EventStreamResponse, Outcome

log = logging.getLogger(__name__)

Callback = Callable[[Request, str], Any]
FeedbackSink = Callable[[dict[str, Any]], Any]

# Seed constructor options that have no meaning here; accepted so seed code runs unchanged.
_IGNORED_SEED_OPTIONS = frozenset({
    "name", "num_gpus", "device", "too_many_request_as_http_error", "logger", "locale", "client_roles",
    "request_handler", "add_special_tokens", "repetition_penalty_method", "context_len", "mock_params",
})


class ChatStream:
    """Streaming chat over HTTP for one model configuration (the seed's API).

    Args:
        model: a :class:`~chatstream_lab.models.LoadedModel`, or an HF causal LM (then pass
            ``tokenizer``).
        tokenizer: the HF tokenizer when ``model`` is a bare HF model.
        chat_prompt_clazz: a ChatPrompt class instantiated per session (seed style).
        template: a template object or preset name (None: the tokenizer's own chat template).
        num_of_concurrent_executions: requests generating at once (batched by the engine).
        max_queue_size: requests allowed to wait; beyond that, HTTP 429 with ``Retry-After``.
        max_new_tokens, temperature, top_k, top_p, repetition_penalty: session defaults.
        session_secret: signs session cookies; random per launch when None.
        cookie: cookie name / SameSite / Secure settings.
        max_input_chars: longest accepted user message (default: ``request_limits``' 8000).
        request_limits: bounds on one HTTP request (body size, JSON depth, stop lists, messages,
            feedback size; :class:`~chatstream_lab.config.RequestLimits`).
        session_ttl_s, max_sessions, max_history_turns, max_session_chars: session store bounds.
        feedback_sink: receives each ``/set_feedback`` record (sync or async callable).
        service: serve an already-built :class:`~chatstream_lab.service.Service` (e.g. a notebook
            Lab's: same engine, gate and numbers); model, template, limits and sampling options
            are then taken from it.
        session_kv_budget_mb: memory for each session's KV kept across its turns (None: the
            engine's default; 0: off); ignored with ``service`` (the service's engine decides).
        use_mock_response: seed option; serves the scripted model instead of ``model``.
        params: a whole SamplingParams (overrides the loose sampling fields above).

    Example::

        chat_stream = ChatStream(model=load_model())
        @app.post("/chat_stream")
        async def stream_api(request: Request):
            return await chat_stream.handle_chat_stream_request(request)
    """

    def __init__(self, model: Any = None, tokenizer: Any = None, chat_prompt_clazz: Any = None,
                 template: Any = None, *, num_of_concurrent_executions: int = 2, max_queue_size: int = 5,
                 max_new_tokens: int = 256, temperature: float = 0.3, top_k: int = 0, top_p: float = 0.9,
                 repetition_penalty: float = 1.0, session_secret: str | bytes | None = None,
                 cookie: CookieSettings | None = None, max_input_chars: int | None = None,
                 request_limits: RequestLimits | None = None,
                 session_ttl_s: float = 3600.0, max_sessions: int = 1000, max_history_turns: int = 50,
                 max_session_chars: int = 100_000,
                 feedback_sink: FeedbackSink | None = None, service: Service | None = None,
                 use_mock_response: bool = False, params: SamplingParams | None = None,
                 session_kv_budget_mb: float | None = None, **seed_options: Any) -> None:
        unknown = set(seed_options) - _IGNORED_SEED_OPTIONS
        if unknown:
            raise ConfigError(f"unknown ChatStream option(s) {sorted(unknown)}", name=sorted(unknown)[0])
        if service is None:
            loaded = conversation.as_loaded_model(model, tokenizer, use_mock_response=use_mock_response)
            resolved = conversation.resolve(template, chat_prompt_clazz, loaded.tokenizer)
            # ``params`` (a whole SamplingParams) wins over the seed's loose fields
            defaults = params or SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
            kv: dict[str, Any] = {} if session_kv_budget_mb is None else {"session_kv_budget_mb": session_kv_budget_mb}
            service = Service.build(loaded, config=ServeConfig(loaded.name, resolved, defaults),
                                    limits=Limits(num_of_concurrent_executions, max_queue_size),
                                    max_input_chars=max_input_chars, request_limits=request_limits, **kv)
        elif request_limits is not None or max_input_chars is not None:
            raise ConfigError("with service=, the request limits are the service's "
                              "(Service.build(request_limits=...))", name="request_limits")
        self.service = service
        self._chat_prompt_clazz = chat_prompt_clazz
        self._session_template = template_fingerprint(service.template)  # what the conversations follow
        self.sessions = SessionStore(conversation.prompt_factory(chat_prompt_clazz, service.template),
                                     service.default_params, ttl_s=session_ttl_s, max_sessions=max_sessions,
                                     max_history_turns=max_history_turns, max_session_chars=max_session_chars,
                                     on_forget=service.forget)
        self.cookies = SessionCookies(session_secret, cookie)
        self.feedback_sink = feedback_sink
        self.feedback = FeedbackLog()  # kept when no sink is given (bounded in records and size)

    # -- what is served (the service's) -----------------------------------------------------------
    @property
    def model(self) -> Any:
        return self.service.model

    @property
    def template(self) -> Any:
        return self.service.template

    @property
    def default_params(self) -> SamplingParams:
        return self.service.default_params

    @property
    def config_id(self) -> str:
        return self.service.config_id

    @property
    def recorder(self) -> Any:
        return self.service.recorder

    @property
    def num_of_concurrent_executions(self) -> int:
        return self.service.limits.num_of_concurrent_executions

    @property
    def max_queue_size(self) -> int:
        return self.service.limits.max_queue_size

    @property
    def max_input_chars(self) -> int:
        return self.service.max_input_chars

    @property
    def request_limits(self) -> RequestLimits:
        return self.service.request_limits

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def engine(self) -> Any:
        """The generator, created and started on first use (never in the constructor)."""
        return self.service.generator.start()

    def start(self) -> ChatStream:
        self.service.start()
        return self

    async def start_queue_worker(self) -> None:
        """Seed compatibility: the engine starts itself on first use; this only starts it early."""
        self.start()

    def close(self) -> None:
        """Stop the engine this object made (cancels what is in flight); safe to call twice.

        A later request makes a fresh engine, so a server can be stopped and started again.
        """
        self.service.close()

    def follow_template(self, notice: str) -> int:
        """The service now renders with another template (a model switch): if it differs from the
        one the conversations were kept for, every session's conversation starts over and its user
        is told ``notice`` (``/get_prompt`` ``notice``, until their next turn). Returns how many
        conversations were cleared."""
        template = self.service.template
        if template_fingerprint(template) == self._session_template:
            return 0
        self._session_template = template_fingerprint(template)
        cleared = self.sessions.reset_all(conversation.prompt_factory(self._chat_prompt_clazz, template), notice)
        log.info("cleared %d conversations: %s", cleared, notice)
        return cleared

    def append_middlewares(self, app: Any, *, allowed_hosts: Sequence[str] | None = None,
                           allowed_origins: Sequence[str] = ()) -> None:
        """Add the session middleware (seed name) so every route sees ``request.state.session``,
        inside the request-body limit and the Host / cross-site guard (``server/guard.py``)."""
        app.add_middleware(SessionMiddleware, store=self.sessions, cookies=self.cookies)
        app.add_middleware(BodyLimitMiddleware, max_body_bytes=self.request_limits.max_body_bytes)
        app.add_middleware(RequestGuardMiddleware, allowed_hosts=allowed_hosts,
                           allowed_origins=tuple(allowed_origins))
        # under plain uvicorn: streams cancelled at its graceful timeout still send their final event
        app.add_middleware(LifespanDrainMiddleware)

    # -- sessions -------------------------------------------------------------------------------
    def session_of(self, request: Request) -> LazySessionHandle:
        """``request.state.session`` if it is ours, else one made from the request's cookie."""
        handle = getattr(request.state, "session", None)
        if isinstance(handle, LazySessionHandle) and handle.store is self.sessions:
            return handle
        handle = LazySessionHandle(self.sessions, self.cookies.from_scope(request.scope))
        request.state.session = handle
        return handle

    def _cookie_headers(self, request: Request, handle: LazySessionHandle) -> dict[str, str]:
        """Set-Cookie for a new session when no middleware of ours will add it."""
        if not handle.is_new:  # (our middleware skips its own Set-Cookie when this one is present)
            return {}
        return {"set-cookie": self.cookies.set_cookie_value(handle.session_id, https=is_https(request.scope))}

    def _with_cookie(self, request: Request, response: Response) -> Response:
        handle = self.session_of(request)
        for k, v in self._cookie_headers(request, handle).items():
            response.headers.append(k, v)
        return response

    # -- /chat_stream -----------------------------------------------------------------------------
    async def handle_chat_stream_request(self, request: Request, request_body: bytes | str | None = None,
                                         callback: Callback | None = None) -> Response | EventStreamResponse:
        """Validate, begin the session's turn, submit, and return the streaming response.

        Refusals (bad input 4xx, busy session 409, full queue 429) are answered before any byte
        is streamed and leave the session unchanged. ``callback(request, message)`` (sync or
        async) is called exactly once per call with an :class:`Outcome` value: after the stream
        ended, or with ``unknown_error_occurred`` when the request was refused.
        """
        handle = self.session_of(request)
        turn: Turn | None = None
        try:
            raw = request_body if request_body is not None else await request.body()
            body = parse_chat_stream(parse_json_object(raw, self.request_limits),
                                     max_input_chars=self.max_input_chars)
            turn = self.sessions.begin_turn(handle.session_id, body.user_input, regenerate=body.regenerate)
            # a conversation that outgrew the window loses its oldest turns (committed with the reply)
            encoded, dropped = conversation.fit_to_window(
                turn.prompt, lambda p: encode_chat_prompt(p, self.template, self.model.tokenizer),
                conversation.prompt_budget(self.model, turn.params.max_new_tokens))
            stream = self.service.submit_encoded(encoded, turn.params, session_key=handle.session_id)
        except Exception as exc:
            if turn is not None:
                self.sessions.finish_turn(turn, None)
            await _fire(callback, request, Outcome.UNKNOWN_ERROR_OCCURRED)
            return self._with_cookie(request, error_response(exc))

        message_id = uuid.uuid4().hex
        framing = Framing.from_accept(request.headers.get("accept"))
        sessions, the_turn = self.sessions, turn

        async def on_done(outcome: Outcome, finished: Finished | None) -> None:
            sessions.finish_turn(the_turn, finished, message_id=message_id, dropped_turns=dropped)
            await _fire(callback, request, outcome)

        headers = {MESSAGE_ID_HEADER: message_id, **self._cookie_headers(request, handle)}
        return EventStreamResponse(stream, make_encoder(framing, message_id), on_done=on_done,
                                   media_type=framing.media_type, headers=headers,
                                   on_abandon=lambda: sessions.finish_turn(the_turn, None))

    # -- the other seed endpoints ------------------------------------------------------------------
    async def handle_clear_context_request(self, request: Request, request_body: Any = None,
                                           callback: Any = None) -> Response:
        sid = self.session_of(request).existing()
        if sid is not None:  # no session: nothing to clear, and none is made for it
            self.sessions.clear(sid)
        return self._with_cookie(request, JSONResponse(
            {"success": True, "message": "Context successfully cleared"}))

    async def handle_get_prompt_request(self, request: Request) -> Response:
        session = self._existing_session(request)
        prompt = session.prompt if session is not None else self.sessions.blank_prompt()
        return self._with_cookie(request, JSONResponse({
            "success": True, "message": "success",
            "prompt": conversation.prompt_text(prompt),
            "messages": conversation.messages_of(prompt),
            # oldest turns trimmed to fit the window / the cap
            "dropped_turns": session.dropped_turns if session is not None else 0,
            # why the conversation was cleared (the served model's chat template changed)
            "notice": session.notice if session is not None else None,
        }))

    async def handle_get_generation_params_request(self, request: Request) -> Response:
        session = self._existing_session(request)
        params = session.params if session is not None else self.sessions.default_params
        return self._with_cookie(request, JSONResponse(
            {"success": True, "message": "success", "generation_params": params.as_dict()}))

    async def handle_set_generation_params_request(self, request: Request) -> Response:
        try:
            changes = generation_param_changes(parse_json_object(await request.body(), self.request_limits),
                                               self.request_limits)
            handle = self.session_of(request)
            params = self.sessions.set_params(handle.session_id, **changes)
        except ChatStreamLabError as exc:
            return self._with_cookie(request, error_response(exc))
        return self._with_cookie(request, JSONResponse(
            {"success": True, "message": "success", "generation_params": params.as_dict()}))

    async def handle_set_feedback_request(self, request: Request) -> Response:
        try:
            data = parse_json_object(await request.body(), self.request_limits)
            message_id = data.get("message_id")
            is_like = data.get("is_like")
            if not isinstance(message_id, str) or not message_id:
                raise BadRequest("message_id must be a non-empty string", param="message_id")
            if is_like is not None and not isinstance(is_like, bool):
                raise BadRequest("is_like must be a boolean", param="is_like")
            _check_form_data(data.get("form_data"), self.request_limits)
            session = self._existing_session(request)
            known = session.message_ids if session is not None else {}
            if message_id not in known:
                raise BadRequest(f"unknown message_id {message_id!r} for this session",
                                 param="message_id", status=404)
            record = {"message_id": message_id, "is_like": is_like, "form_data": data.get("form_data"),
                      "target_message": known[message_id],
                      "prompt": conversation.prompt_text(session.prompt),
                      "generation_params": session.params.as_dict(), "config_id": self.config_id}
            await self._deliver_feedback(record)
        except ChatStreamLabError as exc:
            return self._with_cookie(request, error_response(exc))
        return self._with_cookie(request, JSONResponse({"success": True, "message": "feedback received"}))

    def _existing_session(self, request: Request) -> Any:
        """The request's live session, or None (read-only routes never create one)."""
        sid = self.session_of(request).existing()
        return None if sid is None else self.sessions.get(sid)

    async def _deliver_feedback(self, record: dict[str, Any]) -> None:
        if self.feedback_sink is None:
            self.feedback.append(record)
            return
        result = self.feedback_sink(record)
        if inspect.isawaitable(result):
            await result

    async def handle_get_load_request(self, request: Request) -> Response:
        snap = self.load()
        return JSONResponse({"success": True, "message": "success", "chatstream_workers": [{
            "name": self.model.name, "processing": snap["running"], "waiting": snap["queued"],
            "max_processing": snap["limit"], "max_waiting": snap["max_queue_size"],
        }]})

    def load(self) -> dict[str, int]:
        """Running / queued counts and limits (the gate's), without starting the engine."""
        gate = self.service.gate.snapshot()
        return {"running": gate.running, "queued": gate.waiting, "limit": gate.limit,
                "max_queue_size": gate.max_queue_size, "rejected": gate.rejected_total}

    def __repr__(self) -> str:
        load = self.load()
        return (f"<ChatStream model={self.model.name!r} config_id={self.config_id} "
                f"running={load['running']}/{load['limit']} "
                f"queued={load['queued']}/{load['max_queue_size']}>")


def _check_form_data(form_data: Any, limits: RequestLimits) -> None:
    size = len(json.dumps(form_data, ensure_ascii=False))
    if size > limits.max_feedback_bytes:
        raise BadRequest(f"form_data is {size} characters as JSON; the limit is {limits.max_feedback_bytes} "
                         "(max_feedback_bytes)", param="form_data", status=413)


async def _fire(callback: Callback | None, request: Request, outcome: Outcome) -> None:
    """Call the user's callback (sync or async); its exceptions are logged, never re-raised."""
    if callback is None:
        return
    try:
        result = callback(request, outcome.value)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("the chat_stream callback raised (message %r)", outcome.value)

