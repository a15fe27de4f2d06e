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
from .experiments.cache import GridBook
from .prompts.output_format import OutputFormat, output_format, read_reply, validated
from .prompts.variants import derive_config, resolve_with_system
from .service import Service
from .stats import StatsSnapshot
from .types import ReplyScore

if TYPE_CHECKING:  # pragma: no cover
    from .engine import RequestStream
    from .engine.core.protocol import Generator
    from .experiments import GridResult
    from .models import LoadedModel
    from .notebook.chat import ChatWidget
    from .notebook.compare import CompareView
    from .notebook.endpoint import Endpoint
    from .notebook.playground import Playground
    from .notebook.preview import StreamPreview
    from .switch import ModelSwitch

LabConfig = ServeConfig  # the name this value had before it moved to config.py

# A Lab's admission limits: wide enough for a grid to fill the batch (the engine's throughput grows
# ~10x from 1 to 16 rows on these 2-core machines, README "Prompt experiments"), with a queue as deep
# for a demo's HTTP clients. The seed ChatStream and `chatstream-lab serve` keep ChatStream's 2 + 5.
LAB_CONCURRENCY = 16
LAB_QUEUE = 16


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


def _import_widgets_in_a_kernel() -> None:
    """Inside a Jupyter kernel, import the widget library while the Lab is made (it already waits
    for the model), so the first ``preview()`` / ``chat()`` cell returns at once instead of paying
    ~0.2-0.5 s of ipywidgets imports. Outside a kernel nothing is imported."""
    import sys

    if "ipykernel" in sys.modules:
        from .notebook import preview  # noqa: F401  (imported for its widgets' import cost only)


class Lab:
    """A model, a chat template and sampling parameters, to preview, compare and serve.

    Args:
        model: None (the bundled SmolLM2-135M-Instruct via ``load_model()``), a
            :class:`~chatstream_lab.models.LoadedModel` (``load_model(...)``, ``scripted_model(...)``,
            ``remote_model(url)``), or a path ``load_model`` understands.
        template: None (the model's own chat template), a preset name, Jinja source, or a template.
        num_of_concurrent_executions / max_queue_size: the admission limits, shared by previews,
            grids and HTTP clients (``serve`` may change them while nothing runs). Default 16 + 16:
            a grid keeps the batch full (one slot is left to an endpoint's clients while serving).
        system_prompt: a system message for conversations that bring none.
        session_kv_budget_mb: memory for the KV of a chat session's finished turns, so its next
            turn prefills only the new part (None: the engine's default, 512; 0: off). Applies to
            sessions of the served endpoint (cookie) and OpenAI requests that send ``user``.
        **params: :class:`~chatstream_lab.config.SamplingParams` fields (``temperature=0`` is greedy).

    Creating a Lab loads the model but starts no thread and builds no engine: the engine is built
    on its own thread when the first preview or request arrives (or :meth:`warm`), and no cell
    waits for that build (``preview``, ``chat`` and ``serve`` return at once).
    """

    def __init__(self, model: Any = None, template: Any = None, *, num_of_concurrent_executions: int = LAB_CONCURRENCY,
                 max_queue_size: int = LAB_QUEUE, system_prompt: str | None = None,
                 session_kv_budget_mb: float | None = None, **params: Any) -> None:
        limits = Limits(num_of_concurrent_executions, max_queue_size)  # validates, starts nothing
        self.model: LoadedModel = _load(model)
        self.config = ServeConfig(self.model.name, resolve_with_system(
            template, self.model.tokenizer, UNSET if system_prompt is None else system_prompt),
            self.model.default_params.replace(**params), model_ref=self.model.ref)
        engine_options: dict[str, Any] = ({} if session_kv_budget_mb is None
                                          else {"session_kv_budget_mb": session_kv_budget_mb})
        self.service = Service.build(self.model, config=self.config, limits=limits, **engine_options)
        _import_widgets_in_a_kernel()
        self._endpoint: Endpoint | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._grids = GridBook()  # rows of this Lab's grids, re-used by key; grids to stop on close()

    @classmethod
    def from_config(cls, path: str | Path, model: Any = None, **options: Any) -> Lab:
        """A Lab on the configuration saved at ``path`` (``lab.config.save(path)``), with the same
        ``config_id``; ``model`` overrides the saved model reference (needed for a scripted model,
        or a remote one that rendered with a local tokenizer). ``options``: the Lab's limits."""
        from .models import load_ref
        from .prompts.config_file import load_config

        saved = load_config(path)
        if model is None:
            if saved.model_ref is None:
                raise ConfigError(f"{path} names no model source: pass model=...", name="model")
            model = load_ref(saved.model_ref)
        lab = cls(model, saved.template, **saved.params.as_dict(), **options)
        if lab.config.config_id != saved.config_id:
            import warnings

            warnings.warn(f"the model {lab.model.name!r} is not the saved one ({saved.model_name!r}): "
                          f"config_id {lab.config.config_id}, not {saved.config_id}", UserWarning, stacklevel=2)
        return lab

    # -- configuration -----------------------------------------------------------------------------
    def configure(self, config: ServeConfig | None = None, *, template: Any = UNSET, system_prompt: Any = UNSET,
                  **params: Any) -> ServeConfig:
        """Make a new current configuration (template, system prompt and/or sampling parameters),
        or take ``config`` as it is (a grid's winner: ``lab.configure(result.config("chatml"))``).

        Returns the new :class:`~chatstream_lab.config.ServeConfig`. Requests already submitted keep
        theirs; a running endpoint keeps serving the configuration it was started with (``serve()``
        again to switch).
        """
        base = self.config if config is None else self.variant(config)
        self.config = derive_config(base, {"template": template, "system_prompt": system_prompt, **params},
                                    self.model.tokenizer)
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

    def warm(self, *, wait: bool = False, timeout: float | None = None) -> Lab:
        """Start building the engine on its own thread now, so the first preview or request does
        not wait for it; returns at once unless ``wait`` (then it blocks until the engine can serve).
        Without it the first request starts the build (and waits, queued, in the engine)."""
        self._check_open()
        self.service.warm(wait=wait, timeout=timeout)
        return self

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("this Lab was closed; create a new one", name="lab")

    def submit(self, messages: Any, config: ServeConfig | None = None, *,
               session_key: str | None = None, output: OutputFormat | None = None) -> RequestStream:
        """Encode ``messages`` (a string is one user message) with ``config`` and submit it.

        ``session_key``: turns of one conversation share it, so the engine keeps each finished
        turn's KV and the next turn prefills only what is new (see ``session_kv_budget_mb``).
        ``output``: tools and a reply constraint (``prompts.output_format.output_format(...)``).
        Raises QueueFull at once when every slot is busy and the queue is full.
        """
        self._check_open()
        return self.service.submit(messages, config or self.config, session_key=session_key, output=output)

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
        """Widgets ask a generator that reports logprobs (torch) for the top 5 (colours, hover,
        branches); OpenVINO and remote models report none. Logprobs are not part of ``config_id``.
        Asks the declared capabilities: nothing is built."""
        if config.params.logprobs is None and self.service.capabilities.logprobs:
            return config.replace(logprobs=5)
        return config

    def generate(self, messages: Any, timeout: float | None = None, *, response_format: Any = None,
                 tools: Any = None, tool_choice: Any = None, parallel_tool_calls: bool | None = None,
                 **params: Any) -> Any:
        """The whole reply, blocking (no widget); ``params`` override the current configuration.

        Returns the reply's text; with ``response_format`` (a pydantic model class, a JSON schema
        dict, OpenAI's ``response_format`` object or a ``Constraint``) the reply is constrained to it
        and returned parsed: a validated instance of a pydantic class, else the JSON value (a regex:
        the text). With ``tools`` (OpenAI's list or ``Tool`` objects; ``tool_choice`` ``"auto"``,
        ``"required"``, ``"none"`` or a tool's name) it returns a
        :class:`~chatstream_lab.prompts.output_format.StructuredReply` (``.tool_calls``, ``.text``).
        A structured reply cut by ``max_new_tokens`` raises GenerationError (never broken JSON).
        """
        config = self.config.replace(**params) if params else self.config
        fmt = output_format(response_format, tools, tool_choice, parallel_tool_calls)
        if fmt.constraint is None and fmt.tools is None:
            return self.submit(messages, config).text(timeout)
        reply = read_reply(self.submit(messages, config, output=fmt).result(timeout), fmt)
        if fmt.calls_tools:
            return reply
        if isinstance(response_format, type):
            return validated(reply, response_format)
        return reply.parsed if fmt.json_reply else reply.text

    def extract(self, model: type, messages: Any, timeout: float | None = None, **params: Any) -> Any:
        """An instance of the pydantic ``model`` read from the reply to ``messages`` (constrained to
        its JSON schema, validated by pydantic): ``lab.extract(City, "The capital of France?")``."""
        return self.generate(messages, timeout, response_format=model, **params)

    def stats(self) -> StatsSnapshot:
        """The same snapshot ``/stats`` and the dashboard show (labelled with the current config)."""
        return self.service.with_config(self.config).stats()

    # -- notebook faces -----------------------------------------------------------------------------
    def preview(self, message: Any, *, config: ServeConfig | None = None, response_format: Any = None,
                tools: Any = None, tool_choice: Any = None, parallel_tool_calls: bool | None = None,
                **params: Any) -> StreamPreview:
        """A widget, returned at once, that streams the reply (with a Stop button).

        ``response_format`` / ``tools`` constrain the reply as in :meth:`generate`; on a model
        that reports logprobs each token then also shows how much of the model's raw probability
        its grammar allowed (hover a token with *probabilities* on)."""
        from .notebook.preview import StreamPreview

        config = self._widget_config(config or (self.config.replace(**params) if params else self.config))
        fmt = output_format(response_format, tools, tool_choice, parallel_tool_calls)
        if fmt.constraint is not None or fmt.tools is not None:  # a branch would not follow the grammar
            return StreamPreview.start(lambda m, c: self.submit(m, c, output=fmt), message, config)
        branches = self.service.capabilities.reply_token_ids
        return StreamPreview.start(self.submit, message, config,
                                   continuation=self.submit_continuation if branches else None)

    def chat(self, system_prompt: str | None = None) -> ChatWidget:
        """A multi-turn chat widget (Send, Stop, Regenerate, Clear) on the current configuration."""
        from .notebook.chat import ChatWidget

        branches = self.service.capabilities.reply_token_ids
        key = f"lab-chat-{uuid.uuid4().hex}"  # one conversation: its turns reuse the kept KV
        return ChatWidget(lambda messages: self.submit(messages, self._widget_config(self.config), session_key=key),
                          system_prompt=system_prompt,
                          continuation=(lambda messages, prefix: self.submit_continuation(
                              messages, self._widget_config(self.config), prefix)) if branches else None)

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

    def grid(self, inputs: Any, variants: dict[str, Any] | None = None, models: Any = None, seeds: Any = 1,
             checks: Any = (), reference: Any = None, **options: Any) -> GridResult:
        """Every input through every variant, on every model, ``seeds`` times; returns at once.

        See ``chatstream_lab.experiments`` and the README ("Prompt experiments"). ``options``:
        ``reuse`` (True: rows of this Lab's earlier grids with the same key; a GridResult or a
        saved ``.jsonl`` too; False: none), ``concurrency`` (rows in flight; default: the gate's
        limit, less one slot while this Lab serves an endpoint), ``token_logprobs``, ``scorer`` (the
        same model on the torch backend, to score references where this engine cannot).
        """
        from .experiments.grid import run_grid

        self._check_open()
        reserve = 1 if self.endpoint is not None else 0
        return run_grid(self.service, self.config, inputs, variants, models, seeds, checks, reference,
                        book=self._grids, reserve=reserve, **options)

    # -- the model -------------------------------------------------------------------------------------
    def use_model(self, model: Any, *, template: Any = UNSET, drain_s: float = 60.0,
                  close_previous: bool = False) -> ModelSwitch:
        """Serve another model behind this Lab and its running endpoint; returns at once.

        ``model``: a LoadedModel (torch, OpenVINO, remote, scripted) or what ``Lab(model=)`` takes.
        From this call on, new requests (previews and HTTP alike) wait while the old engine
        finishes what it had (at most ``drain_s`` seconds; the rest are then cancelled) and the new
        one warms on its own thread; then they run on the new one. The URL, the limits, the numbers
        (``/stats``, the dashboard, which marks the switch) and the sessions stay; ``/v1/models``
        names the new model. The template follows the model where it was the model's own (else it
        stays; ``template=`` picks one); if the endpoint's template changes, its sessions'
        conversations are cleared, each user told why (``/get_prompt`` ``notice``).
        ``close_previous`` closes the old model once drained (frees its weights).

        Returns a :class:`~chatstream_lab.switch.ModelSwitch`: ``switch.result()`` (or ``await
        switch``) waits for it; if the new engine cannot start, the old model serves again and
        ``result()`` raises why.
        """
        from .prompts.variants import config_for_model

        with self._lock:
            self._check_open()
            new_model = _load(model)
            old_model, old_config, endpoint = self.model, self.config, self.endpoint
            new_config = config_for_model(old_config, old_model.tokenizer, new_model.name, new_model.tokenizer,
                                          template)
            served_old = endpoint.config if endpoint is not None else None
            served_new = None if served_old is None else config_for_model(
                served_old, old_model.tokenizer, new_model.name, new_model.tokenizer, template)
            notes: list[str] = []

            def on_switch(current: Any) -> None:
                """At the instant the served model changes (and back, if the switch rolls back)."""
                to_new = current is new_model
                self.model, self.config = (new_model, new_config) if to_new else (old_model, old_config)
                self.service.config = self.config
                if endpoint is not None and served_old is not None and served_new is not None:
                    served = served_new if to_new else served_old
                    notice = (f"this conversation was cleared: the server now runs {current.name}, whose chat "
                              f"template ({served.template_name}) renders conversations differently")
                    cleared = endpoint.follow(served, notice)
                    if cleared:
                        notes.append(f"{cleared} session conversation(s) cleared: the chat template changed "
                                     f"to {served.template_name}")

            switch = self.service.switch_model(new_model, drain_s=drain_s, close_previous=close_previous,
                                               on_switch=on_switch)
            switch.notes = notes  # (a rollback adds its own note later)
            return switch

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
        self._grids.stop_all()
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
