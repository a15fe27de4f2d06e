"""``Lab``: the one object a notebook keeps. It wires the stages together and holds no logic.

    >>> import chatstream_lab as csl
    >>> lab = csl.Lab(temperature=0)                       # bundled model   # doctest: +SKIP
    >>> lab.preview("What is the capital of France?")      # a widget, streaming   # doctest: +SKIP
    >>> lab.configure(template="chatml", max_new_tokens=64)                          # doctest: +SKIP
    >>> ep = lab.serve()                                   # same configuration, over HTTP  # doctest: +SKIP
    >>> ep.dashboard()                                     # live plot of the same numbers  # doctest: +SKIP
    >>> lab.close()                                                                  # doctest: +SKIP

What it holds: one :class:`~chatstream_lab.service.Service` (generator, gate, recorder; the engine
starts on first use), the current :class:`~chatstream_lab.config.ServeConfig`, and at most one
:class:`~chatstream_lab.notebook.Endpoint`. Previews, chats, comparisons and HTTP clients all submit
through that one service, so they share one admission gate (one concurrency limit, one queue) and
one set of numbers. A configuration is frozen; :meth:`Lab.configure` makes a new one (with a new
``config_id``), and every request keeps the configuration it was submitted with.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import UNSET, Limits, RequestLimits, ServeConfig
from .errors import ConfigError
from .prompts.variants import derive_config, resolve_with_system
from .service import Service
from .stats import StatsSnapshot
from .types import ReplyScore

if TYPE_CHECKING:  # pragma: no cover
    from .engine import RequestStream
    from .engine.protocol import Generator
    from .models import LoadedModel
    from .notebook.chat import ChatWidget
    from .notebook.compare import CompareView
    from .notebook.endpoint import Endpoint
    from .notebook.playground import Playground
    from .notebook.preview import StreamPreview

LabConfig = ServeConfig  # the name this value had before it moved to config.py


def _load(model: Any) -> LoadedModel:
    from .models import LoadedModel, load_model

    if model is None:
        return load_model(progress=False)
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model, progress=False)
    raise ConfigError(f"model must be None (the bundled default), a LoadedModel or a path, got "
                      f"{type(model).__name__}; for a bare HF model use ChatStream(model=..., tokenizer=...)",
                      name="model")


class Lab:
    """A model, a chat template and sampling parameters, to preview, compare and serve.

    Args:
        model: None (the bundled SmolLM2-135M-Instruct via ``load_model()``), a
            :class:`~chatstream_lab.models.LoadedModel` (``load_model(...)``, ``scripted_model(...)``,
            ``remote_model(url)``), or a path ``load_model`` understands.
        template: None (the model's own chat template), a preset name, Jinja source, or a template.
        num_of_concurrent_executions / max_queue_size: the admission limits, shared by previews and
            HTTP clients (``serve`` may change them while nothing runs).
        system_prompt: a system message for conversations that bring none.
        session_kv_budget_mb: memory for the KV of a chat session's finished turns, so its next
            turn prefills only the new part (None: the engine's default, 512; 0: off). Applies to
            sessions of the served endpoint (cookie) and OpenAI requests that send ``user``.
        **params: :class:`~chatstream_lab.config.SamplingParams` fields (``temperature=0`` is greedy).

    Creating a Lab starts no thread; the engine starts on the first preview or request.
    """

    def __init__(self, model: Any = None, template: Any = None, *, num_of_concurrent_executions: int = 2,
                 max_queue_size: int = 5, system_prompt: str | None = None,
                 session_kv_budget_mb: float | None = None, **params: Any) -> None:
        limits = Limits(num_of_concurrent_executions, max_queue_size)  # validates, starts nothing
        self.model: LoadedModel = _load(model)
        self.config = ServeConfig(self.model.name, resolve_with_system(
            template, self.model.tokenizer, UNSET if system_prompt is None else system_prompt),
            self.model.default_params.replace(**params))
        engine_options: dict[str, Any] = ({} if session_kv_budget_mb is None
                                          else {"session_kv_budget_mb": session_kv_budget_mb})
        self.service = Service.build(self.model, config=self.config, limits=limits, **engine_options)
        self._endpoint: Endpoint | None = None
        self._lock = threading.RLock()
        self._closed = False

    # -- configuration -----------------------------------------------------------------------------
    def configure(self, *, template: Any = UNSET, system_prompt: Any = UNSET, **params: Any) -> ServeConfig:
        """Make a new current configuration (template, system prompt and/or sampling parameters).

        Returns the new :class:`~chatstream_lab.config.ServeConfig`. Requests already submitted keep
        theirs; a running endpoint keeps serving the configuration it was started with (``serve()``
        again to switch).
        """
        self.config = self.variant({"template": template, "system_prompt": system_prompt, **params})
        return self.config

    def variant(self, spec: Any) -> ServeConfig:
        """The current configuration changed by ``spec``: a ServeConfig (taken as is), a template or
        preset name, a SamplingParams, or a dict of ``template`` / ``system_prompt`` / parameters."""
        return derive_config(self.config, spec, self.model.tokenizer)

    @property
    def num_of_concurrent_executions(self) -> int:
        return self.service.limits.num_of_concurrent_executions

    @property
    def max_queue_size(self) -> int:
        return self.service.limits.max_queue_size

    @property
    def engine(self) -> Generator:
        """The shared generator (its thread starts with the first request)."""
        self._check_open()
        return self.service.generator

    @property
    def recorder(self) -> Any:
        return self.service.recorder

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this Lab was closed; create a new one", name="lab")

    def submit(self, messages: Any, config: ServeConfig | None = None, *,
               session_key: str | None = None) -> RequestStream:
        """Encode ``messages`` (a string is one user message) with ``config`` and submit it.

        ``session_key``: turns of one conversation share it, so the engine keeps each finished
        turn's KV and the next turn prefills only what is new (see ``session_kv_budget_mb``).
        Raises QueueFull at once when every slot is busy and the queue is full.
        """
        self._check_open()
        return self.service.submit(messages, config or self.config, session_key=session_key)

    def submit_continuation(self, messages: Any, config: ServeConfig | None, prefix_ids: Any) -> RequestStream:
        """Submit ``messages`` with the reply forced to start with ``prefix_ids`` (the prompt's ids +
        ``prefix_ids`` are the prompt; what streams is what follows them): a widget's branch."""
        from .prompts import EncodedPrompt

        self._check_open()
        config = config or self.config
        encoded = self.service.encode(messages, config)
        forced = EncodedPrompt((*encoded.ids, *(int(i) for i in prefix_ids)), encoded.stop_strings,
                               encoded.output_replacements)
        return self.service.submit_encoded(forced, config.params)

    def score(self, messages: Any, reply: str, *, template: Any = UNSET, top: int = 0,
              timeout: float | None = 120.0) -> ReplyScore:
        """Per-token logprobs of ``reply`` as the assistant's answer to ``messages`` (teacher-forced,
        one forward on the engine thread) under the current configuration's template, or ``template``."""
        self._check_open()
        config = self.config if template is UNSET else self.variant({"template": template})
        return self.service.score(messages, reply, config, top=top, timeout=timeout)

    def _widget_config(self, config: ServeConfig) -> ServeConfig:
        """Widgets ask a torch model for the top 5 logprobs (colours, hover, branches); OpenVINO and
        remote models report none. Logprobs are not part of ``config_id``."""
        if config.params.logprobs is None and self.model.backend.reports_logprobs:
            return config.replace(logprobs=5)
        return config

    def generate(self, messages: Any, timeout: float | None = None, **params: Any) -> str:
        """The whole reply, blocking (no widget); ``params`` override the current configuration."""
        config = self.config.replace(**params) if params else self.config
        return self.submit(messages, config).text(timeout)

    def stats(self) -> StatsSnapshot:
        """The same snapshot ``/stats`` and the dashboard show (labelled with the current config)."""
        return self.service.with_config(self.config).stats()

    # -- notebook faces -----------------------------------------------------------------------------
    def preview(self, message: Any, *, config: ServeConfig | None = None, **params: Any) -> StreamPreview:
        """A widget, returned at once, that streams the reply (with a Stop button)."""
        from .notebook.preview import StreamPreview

        config = self._widget_config(config or (self.config.replace(**params) if params else self.config))
        local = getattr(self.model, "backend", "torch") != "remote"
        return StreamPreview.start(self.submit, message, config,
                                   continuation=self.submit_continuation if local else None)

    def chat(self, system_prompt: str | None = None) -> ChatWidget:
        """A multi-turn chat widget (Send, Stop, Regenerate, Clear) on the current configuration."""
        from .notebook.chat import ChatWidget

        local = getattr(self.model, "backend", "torch") != "remote"
        key = f"lab-chat-{uuid.uuid4().hex}"  # one conversation: its turns reuse the kept KV
        return ChatWidget(lambda messages: self.submit(messages, self._widget_config(self.config), session_key=key),
                          system_prompt=system_prompt,
                          continuation=(lambda messages, prefix: self.submit_continuation(
                              messages, self._widget_config(self.config), prefix)) if local else None)

    def playground(self, message: str = "What is the capital of France?") -> Playground:
        """Edit template, system prompt and sampling; inspect the prompt; preview. Edits configure
        this Lab, so ``serve()`` serves what the playground shows."""
        from .notebook.playground import Playground

        return Playground(self.model.tokenizer, current=lambda: self.config, configure=self.configure,
                          preview=self.preview, context_window=self.model.context_window, message=message)

    def compare(self, variants: dict[str, Any], message: Any, *, reference: str | None = None) -> CompareView:
        """Stream ``message`` through each variant side by side; a table follows when all finish.

        ``reference``: a reply to score under each variant's template; the table adds its mean
        log-probability per token (``mean_logprob``: higher = the template makes it likelier).
        """
        from .notebook.compare import CompareView

        configs = {name: self.variant(spec) for name, spec in variants.items()}
        scorer = None
        if reference is not None:
            def scorer(config: ServeConfig) -> float:
                return self.service.score(message, reference, config).mean_logprob
        return CompareView.start(self.submit, configs, message, scorer=scorer)

    # -- serving --------------------------------------------------------------------------------------
    def serve(self, port: int | None = None, host: str = "127.0.0.1", *,
              num_of_concurrent_executions: int | None = None, max_queue_size: int | None = None,
              token: str | None = None, timeout: float = 10.0, request_limits: RequestLimits | None = None,
              **app_options: Any) -> Endpoint:
        """Serve the current configuration over HTTP from this kernel; returns an Endpoint.

        Runs uvicorn on its own thread and loop. Previews and HTTP clients share the engine and its
        gate. Calling it again stops this Lab's previous server first (re-running a cell is safe).
        ``port=None`` picks a free port; a busy port raises ServerStartError at once.
        ``request_limits`` bounds each HTTP request (body size, stop lists...; ARCHITECTURE.md,
        "Limits"); ``app_options`` go to ``create_app`` (``cors_origins``, ``allowed_hosts``...).
        """
        from .notebook.endpoint import Endpoint

        with self._lock:
            self._check_open()
            self.stop_serving()
            limits = Limits(self.num_of_concurrent_executions if num_of_concurrent_executions is None
                            else num_of_concurrent_executions,
                            self.max_queue_size if max_queue_size is None else max_queue_size)
            self.service.set_limits(limits)
            view = self.service.with_config(self.config, tracked=True, request_limits=request_limits)
            self._endpoint = Endpoint.start(view, host=host,
                                            port=port or 0, token=token, timeout=timeout, **app_options)
            return self._endpoint

    @property
    def endpoint(self) -> Endpoint | None:
        """The running endpoint, if any."""
        ep = self._endpoint
        return ep if ep is not None and ep.running else None

    def stop_serving(self) -> None:
        """Stop this Lab's server (idempotent); the engine keeps running for previews."""
        ep, self._endpoint = self._endpoint, None
        if ep is not None:
            ep.stop()

    def close(self) -> None:
        """Stop the server and the engine (cancels what is in flight). Idempotent."""
        with self._lock:
            self.stop_serving()
            self._closed = True
        self.service.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- display ----------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        snap, ep = self.service.gate.snapshot(), self.endpoint
        serving = f" serving {ep.url} ({ep.config_id})" if ep else ""
        return (f"<Lab model={self.model.name!r} template={self.config.template_name!r} "
                f"config_id={self.config.config_id}{serving} running={snap.running} queued={snap.waiting}>")

    def _repr_html_(self) -> str:
        from .notebook.display import lab_html, model_label

        snap, ep = self.service.gate.snapshot(), self.endpoint
        return lab_html(self.model.name, model_label(self.model), self.config,
                        running=snap.running, queued=snap.waiting, limit=snap.limit,
                        max_queue_size=snap.max_queue_size, url=ep.url if ep else None,
                        served_config_id=ep.config_id if ep else None)


__all__ = ["Lab", "LabConfig"]
