"""``Service``: one served configuration and the machinery that serves it.

It is the composition root of the data path and the ONLY place that constructs the admission
gate, the generator (the local engine or a remote one), the stats recorder and the Prometheus
exporter. The seed facade (:class:`~chatstream_lab.server.ChatStream`), the app
(:func:`~chatstream_lab.server.create_app`), the OpenAI routes, the notebook widgets and ``Lab``
all receive a Service (or a callable of it) and never build any of these themselves.

A Service is cheap to *view* under another configuration (:meth:`with_config`): the view shares the
generator, gate and recorder, so previews in a notebook and HTTP clients of the endpoint share one
concurrency limit, one queue and one set of numbers, while each reports the configuration it serves.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from .admission import AdmissionGate, GateSnapshot
from .config import Limits, RequestLimits, SamplingParams, ServeConfig
from .engine.core.capabilities import Capabilities
from .engine.core.protocol import EngineHealth, EngineState, Generator
from .engine.core.stream import RequestStream
from .engine.factory import backend_name, build_generator, capabilities_of
from .errors import ConfigError, ShuttingDown
from .prompts import EncodedPrompt, encode_messages, encode_reply, with_system_prompt
from .prompts.output_format import OutputFormat
from .prompts.resolve import resolve_served_template
from .prompts.tools import ToolSpec
from .stats import KVCacheStats, PrometheusExporter, StatsRecorder, StatsSnapshot
from .switch import ModelSwitch, SwitchSides
from .types import ReplyScore


class _Machinery:
    """What views of one Service share: gate, generator, recorder, exporter.

    The generator object (and its gate) is made on first use (cheap: its *engine* is built on the
    generator's own thread when it starts); after :meth:`close` the next use makes a fresh one, so
    an app can be served, stopped and served again. A shared generator (passed in) is never closed
    here.
    """

    def __init__(self, model: Any, limits: Limits, engine_options: dict[str, Any],
                 generator: Generator | None) -> None:
        self.model = model
        self.limits = generator.gate.limits if generator is not None else limits
        self.engine_options = engine_options
        self._shared = generator
        self._generator: Generator | None = generator
        self._gate: AdmissionGate[Any] = generator.gate if generator is not None else AdmissionGate(limits)
        self.capabilities: Capabilities = generator.capabilities if generator is not None else capabilities_of(model)
        self.recorder = StatsRecorder(load=self._load, kv_cache=self._kv_cache_stats)
        self.exporter = PrometheusExporter(self.recorder)
        self._lock = threading.Lock()
        self._switch: ModelSwitch | None = None
        self._draining: tuple[Generator | None, AdmissionGate[Any]] | None = None  # the old side of a switch

    def _load(self) -> GateSnapshot:
        """Running and waiting for the numbers: during a switch, the old engine's still count."""
        snap = self._gate.snapshot()
        draining = self._draining
        if draining is None:
            return snap
        old = draining[1].snapshot()
        return dataclasses.replace(snap, running=snap.running + old.running, waiting=snap.waiting + old.waiting)

    @property
    def gate(self) -> AdmissionGate[Any]:
        return self._gate

    @property
    def built(self) -> Generator | None:
        return self._generator

    @property
    def switching(self) -> ModelSwitch | None:
        """The switch in progress, if any."""
        switch = self._switch
        return switch if switch is not None and not switch.done else None

    def _kv_cache_stats(self) -> KVCacheStats | None:
        built = self._generator
        return built.kv_cache_stats() if built is not None else None

    def generator(self) -> Generator:
        with self._lock:
            if self._generator is None:
                self._generator = build_generator(self.model, self._gate, self.recorder, **self.engine_options)
            return self._generator

    def close(self) -> None:
        with self._lock:
            generator, draining = self._generator, self._draining
            self._draining = None
            if draining is not None and draining[0] is not None:
                draining[0].close()  # a switch in progress: its old engine too
            if self._shared is not None or generator is None:
                return
            self._generator = None
            self._gate = AdmissionGate(self.limits)
        generator.close()

    def switch(self, model: Any, *, drain_s: float, close_previous: bool,
               on_switch: Callable[[Any], None]) -> ModelSwitch:
        """Serve ``model`` from now on (see ``switch.py``); ``on_switch(model)`` runs at the instant
        the served model changes (and again with the old one if the switch rolls back)."""
        _check_open(model)
        with self._lock:
            if self._shared is not None:
                raise ConfigError("this service serves a generator it was given; switch that generator's "
                                  "owner instead", name="model")
            if self._switch is not None and not self._switch.done:
                raise ConfigError(f"a switch is in progress ({self._switch!r}); wait for it "
                                  "(.result() or await) before the next one", name="model")
            old_model, old_gen, old_gate, old_caps = self.model, self._generator, self._gate, self.capabilities
            new_gate: AdmissionGate[Any] = AdmissionGate(self.limits)
            new_gate.hold()  # new requests wait there while the old engine drains
            new_gen = build_generator(model, new_gate, self.recorder, **self.engine_options)
            self.model, self._generator, self._gate = model, new_gen, new_gate
            self.capabilities = capabilities_of(model)
            self._draining = (old_gen, old_gate)
            on_switch(model)
            self.recorder.on_model_change(old_model.name, model.name)

            def close_old() -> None:
                with self._lock:
                    self._draining = None
                if old_gen is not None:
                    old_gen.close()  # cancels what the drain left, each with its final event
                if close_previous and old_model is not model:
                    old_model.close()

            def rollback(error: BaseException) -> None:
                with self._lock:
                    self.model, self._generator, self._gate, self.capabilities = old_model, old_gen, old_gate, old_caps
                    self._draining = None
                    on_switch(old_model)
                    self.recorder.on_model_change(model.name, old_model.name)
                new_gen.close()

            sides = SwitchSides(old_model.name, model.name, old_gen, old_gate, new_gen, new_gate)
            self._switch = ModelSwitch(sides, drain_s=drain_s, close_old=close_old, rollback=rollback)
        new_gen.start()  # builds on its own thread
        return self._switch.start()

    def relimit(self, limits: Limits) -> None:
        if limits == self.limits:
            return
        if self._shared is not None:
            raise ConfigError("this service serves a generator it was given; its limits are that "
                              "generator's", name="num_of_concurrent_executions")
        snap = self._gate.snapshot()
        if snap.running or snap.waiting:
            raise ConfigError(f"cannot change the limits while {snap.running} request(s) run and "
                              f"{snap.waiting} wait; stop them (or wait) and serve() again",
                              name="num_of_concurrent_executions")
        self.close()
        with self._lock:
            self.limits = limits
            self._gate = AdmissionGate(limits)


class Service:
    """A model, its served :class:`~chatstream_lab.config.ServeConfig` and :class:`Limits`, and the
    generator, gate, recorder and exporter behind them. Build one with :meth:`build`.

    Constructing it starts no thread: the engine starts, and is built on its own thread, with the
    first request or :meth:`warm`. No caller waits for that build: a request submitted meanwhile
    is queued (its stream shows ``Queued``) and ``health()`` says ``starting``.
    """

    def __init__(self, machinery: _Machinery, config: ServeConfig, *, max_input_chars: int | None = None,
                 request_limits: RequestLimits | None = None, tracked: bool = False) -> None:
        self._m = machinery
        self.config = config
        self.request_limits = _request_limits(request_limits, max_input_chars)
        self._streams: weakref.WeakSet[RequestStream] | None = weakref.WeakSet() if tracked else None
        self._detached = False
        self._streams_lock = threading.Lock()

    @classmethod
    def build(cls, model: Any, template: Any = None, params: SamplingParams | None = None, *,
              limits: Limits | None = None, system_prompt: str | None = None,
              max_input_chars: int | None = None, request_limits: RequestLimits | None = None,
              generator: Generator | None = None, config: ServeConfig | None = None,
              **engine_options: Any) -> Service:
        """The service for ``model`` (a LoadedModel) with ``template`` (None: the model's own, or a
        preset name, or a template object), sampling ``params`` and admission ``limits``.

        ``request_limits`` bounds what one HTTP request may carry (``max_input_chars`` overrides
        its field of that name). ``config`` (a whole ServeConfig) replaces ``template`` /
        ``params`` / ``system_prompt``;
        ``generator`` shares an already-built one (with its gate); ``engine_options`` go to the
        engine (``prefill_chunk``, ``gather_s``, ``prefix_cache_mb``, ``session_kv_budget_mb``,
        ``onednn``; for a remote model ``timeout_s``, ``retry_after_s``).
        """
        _check_open(model)
        if config is None:
            resolved = resolve_served_template(template, model.tokenizer)
            if system_prompt is not None:
                resolved = with_system_prompt(resolved, system_prompt)
            config = ServeConfig(model.name, resolved, params or SamplingParams())
        machinery = _Machinery(model, limits or Limits(), engine_options, generator)
        # tracked, so a server stopping can end the streams it served (detach)
        return cls(machinery, config, max_input_chars=max_input_chars, request_limits=request_limits,
                   tracked=True)

    def with_config(self, config: ServeConfig, *, tracked: bool = False,
                    request_limits: RequestLimits | None = None) -> Service:
        """A view serving ``config`` through the same generator, gate and recorder.

        ``tracked``: the view remembers the streams submitted through it, so :meth:`detach` can end
        them (an endpoint stopping while the notebook's previews go on). ``request_limits``: the
        view's HTTP request bounds (default: this service's).
        """
        return Service(self._m, config, request_limits=request_limits or self.request_limits, tracked=tracked)

    def switch_model(self, model: Any, *, drain_s: float = 60.0, close_previous: bool = False,
                     on_switch: Callable[[Any], None] | None = None) -> ModelSwitch:
        """Serve ``model`` (a LoadedModel) instead, behind every view of this service; returns a
        :class:`~chatstream_lab.switch.ModelSwitch` at once.

        From this call on, new requests queue for the new engine, which warms on its own thread,
        while the old engine finishes what it had (at most ``drain_s`` seconds; the rest are then
        cancelled, each with its final event); then the new one admits them. The gate's limits,
        the recorder and its history stay. ``close_previous`` closes the old model once drained
        (frees its weights); ``on_switch(model)`` runs at the instant the served model changes (the
        caller moves its views' configurations over). If the new engine cannot be built, the old
        one serves again and the handle's ``result()`` raises why.
        """
        return self._m.switch(model, drain_s=drain_s, close_previous=close_previous,
                              on_switch=on_switch or (lambda _model: None))

    def set_limits(self, limits: Limits) -> None:
        """Serve with other admission ``limits`` from now on: the generator is replaced by a fresh
        one (it must be idle); the recorder and its numbers are kept. Every view sees the change."""
        self._m.relimit(limits)

    def stop_accepting(self) -> None:
        """Refuse new requests through this view (:class:`~chatstream_lab.errors.ShuttingDown`,
        HTTP 503) and let the open ones finish: the first step of a graceful stop."""
        with self._streams_lock:
            self._detached = True

    @property
    def accepting(self) -> bool:
        """False from :meth:`stop_accepting` / :meth:`detach` until :meth:`attach`."""
        return not self._detached

    def detach(self) -> None:
        """Refuse new requests through this view and cancel its open ones (a tracked view's):
        each ends with its engine's ``Finished(CANCELLED)`` within about a decode step."""
        with self._streams_lock:
            self._detached = True
            streams = list(self._streams or ())
        for stream in streams:
            stream.cancel()

    def attach(self) -> None:
        """Accept requests through this view again after :meth:`detach` (a server started again)."""
        with self._streams_lock:
            self._detached = False

    def open_streams(self) -> list[RequestStream]:
        """The unfinished streams submitted through this (tracked) view."""
        with self._streams_lock:
            return [s for s in (self._streams or ()) if not s.done]

    # -- what is served -----------------------------------------------------------------------
    @property
    def model(self) -> Any:
        return self._m.model

    @property
    def limits(self) -> Limits:
        return self._m.limits

    @property
    def max_input_chars(self) -> int:
        return self.request_limits.max_input_chars

    @property
    def template(self) -> Any:
        return self.config.template

    @property
    def default_params(self) -> SamplingParams:
        return self.config.params

    @property
    def config_id(self) -> str:
        return self.config.config_id

    @property
    def capabilities(self) -> Capabilities:
        """What the generator can do (logprobs, scoring...), known without building anything."""
        return self._m.capabilities

    @property
    def backend(self) -> str:
        """What runs the model (``torch``, ``openvino``, ``remote``, ``scripted``), for display."""
        return backend_name(self.model)

    @property
    def generator(self) -> Generator:
        """The generator (made on first use, not started; a fresh one after :meth:`close`)."""
        return self._m.generator()

    @property
    def gate(self) -> AdmissionGate[Any]:
        return self._m.gate

    @property
    def recorder(self) -> StatsRecorder:
        return self._m.recorder

    @property
    def exporter(self) -> PrometheusExporter:
        return self._m.exporter

    # -- requests -------------------------------------------------------------------------------
    def encode(self, messages: str | Sequence[Any], config: ServeConfig | None = None, *,
               tools: ToolSpec | None = None) -> EncodedPrompt:
        """The prompt ``config``'s template (default: the served one) makes of ``messages``
        (with ``tools`` offered to the model, rendered as ``prompts.tools`` describes)."""
        return encode_messages((config or self.config).template, self.model.tokenizer, messages, tools)

    def submit(self, messages: str | Sequence[Any], config: ServeConfig | None = None, *,
               session_key: str | None = None, output: OutputFormat | None = None) -> RequestStream:
        """Encode ``messages`` (a string is one user message) with ``config`` and submit it.

        ``output`` (``prompts.output_format``): the tools to offer (rendered into the prompt) and
        the constraint the reply must match. Raises QueueFull at once when every slot is busy and
        the queue is full.
        """
        config = config or self.config
        params = config.params
        if output is not None and output.constraint is not None:
            params = params.replace(constraint=output.constraint)
        tools = output.tools if output is not None else None
        return self.submit_encoded(self.encode(messages, config, tools=tools), params, session_key=session_key)

    def submit_encoded(self, encoded: EncodedPrompt, params: SamplingParams | None = None, *,
                       session_key: str | None = None) -> RequestStream:
        """Submit an already-encoded prompt (``params`` default: the configuration's).

        Raises QueueFull (every slot busy, queue full), ShuttingDown (the view stops accepting),
        ModelClosed (the model was closed).
        """
        _check_open(self.model)
        with self._streams_lock:
            if self._detached:
                raise ShuttingDown("this endpoint is stopping and takes no new requests; retry on "
                                   "another replica, or once it is back")
            extra: dict[str, Any] = {} if encoded.messages is None else {"messages": encoded.messages}
            stream = self.generator.start().submit(
                encoded.ids, params or self.config.params, stop_strings=encoded.stop_strings,
                output_replacements=encoded.output_replacements, session_key=session_key, **extra)
            if self._streams is not None:
                self._streams.add(stream)
        return stream

    def score(self, messages: str | Sequence[Any], reply: str, config: ServeConfig | None = None, *,
              top: int = 0, timeout: float | None = 120.0) -> ReplyScore:
        """Per-token logprobs of ``reply`` as the assistant's answer to ``messages`` under
        ``config``'s template (default: the served one), computed on the generator's thread.

        Raises InvalidParameter for a generator that cannot score (a remote model).
        """
        encoded = self.encode(messages, config)
        reply_ids = encode_reply(self.model.tokenizer, reply)
        ids = [*encoded.ids, *reply_ids]
        tokens = self.generator.start().score(ids, len(encoded.ids), top=top).result(timeout)
        return ReplyScore(tokens, len(encoded.ids))

    def forget(self, session_key: str) -> None:
        """Drop what the generator keeps warm for ``session_key`` (its KV across turns): the
        session's conversation was cleared or ended. Starts nothing; any thread."""
        built = self._m.built
        if built is not None:
            built.forget(session_key)

    # -- numbers ----------------------------------------------------------------------------------
    def stats(self, *, with_history: bool = True) -> StatsSnapshot:
        """The numbers of every request through this generator, labelled with this configuration."""
        snap = self.recorder.snapshot(with_history=with_history)
        return dataclasses.replace(snap, config_id=self.config_id)

    def health(self) -> EngineHealth:
        """The generator's state (``idle`` before the first request or :meth:`warm`, ``starting``
        while its thread builds the engine; ``running`` with a detail during a model switch, which
        takes requests: they wait for the new engine)."""
        switching = self._m.switching
        if switching is not None:
            return EngineHealth(EngineState.RUNNING, self.backend, f"switching models: {switching!r}")
        built = self._m.built
        if built is None:
            return EngineHealth(EngineState.IDLE, self.backend)
        return built.health()

    def warm(self, *, wait: bool = False, timeout: float | None = None) -> Service:
        """Start building the engine on its own thread; returns at once unless ``wait`` (then it
        blocks until the engine can serve: EngineUnavailable if the build failed, TimeoutError)."""
        generator = self.generator.start()
        if wait:
            generator.wait_ready(timeout)
        return self

    def start(self) -> Service:
        """The same as :meth:`warm` (returns at once)."""
        return self.warm()

    def close(self) -> None:
        """Stop the generator this service built (cancels what is in flight); a later request
        builds a fresh one. A generator passed to :meth:`build` is left running. Idempotent."""
        self._m.close()

    def __repr__(self) -> str:
        snap = self.gate.snapshot()
        return (f"<Service model={self.model.name!r} config_id={self.config_id} "
                f"running={snap.running}/{snap.limit} queued={snap.waiting}/{snap.max_queue_size}>")


def _request_limits(limits: RequestLimits | None, max_input_chars: int | None) -> RequestLimits:
    """``limits`` (default: the defaults) with ``max_input_chars`` applied when given."""
    limits = limits or RequestLimits()
    if max_input_chars is None or max_input_chars == limits.max_input_chars:
        return limits
    return dataclasses.replace(limits, max_input_chars=max_input_chars)


def _check_open(model: Any) -> None:
    """ModelClosed for a closed LoadedModel (other model objects have no lifecycle)."""
    check = getattr(model, "check_open", None)
    if callable(check):
        check()
