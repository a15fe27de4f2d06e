"""``Lab``: the one object a notebook keeps. It wires the stages together and holds no logic.

    >>> import chatstream_lab as csl
    >>> lab = csl.Lab(temperature=0)                       # bundled model   # doctest: +SKIP
    >>> lab.preview("What is the capital of France?")      # a widget, streaming   # doctest: +SKIP
    >>> lab.configure(template="chatml", max_new_tokens=64)                          # doctest: +SKIP
    >>> ep = lab.serve()                                   # same configuration, over HTTP  # doctest: +SKIP
    >>> ep.dashboard()                                     # live plot of the same numbers  # doctest: +SKIP
    >>> lab.close()                                                                  # doctest: +SKIP

What it owns: one :class:`~chatstream_lab.engine.Engine` (created on first use, so the
constructor starts no thread), one :class:`~chatstream_lab.stats.StatsRecorder` as the engine's
observer, the current :class:`LabConfig`, and at most one :class:`~chatstream_lab.notebook.Endpoint`.
Previews, chats, comparisons and HTTP clients all submit to that one engine, so they share one
admission gate (one concurrency limit, one queue) and one set of numbers.

A configuration is frozen; :meth:`Lab.configure` makes a new one (with a new ``config_id``), and
every request keeps the configuration it was submitted with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .admission import AdmissionGate
from .config import SamplingParams, config_id
from .errors import ConfigError
from .stats import StatsRecorder, StatsSnapshot

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine, RequestStream
    from .models import LoadedModel
    from .notebook import ChatWidget, CompareView, Endpoint, Playground, StreamPreview

_UNSET: Any = object()


@dataclass(frozen=True)
class LabConfig:
    """Model name + chat template + sampling parameters: what a preview and an endpoint run with.

    ``config_id`` is a short hash of all three, shown by previews, ``_repr_html_`` and ``/stats``.
    Make a changed copy with :meth:`replace` (or ``Lab.configure``).
    """

    model_name: str
    template: Any
    params: SamplingParams = field(default_factory=SamplingParams)
    config_id: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        from .notebook._templates import fingerprint

        object.__setattr__(self, "config_id", config_id(self.model_name, fingerprint(self.template),
                                                        self.params.as_dict()))

    @property
    def template_name(self) -> str:
        from .notebook._templates import template_name

        return template_name(self.template)

    @property
    def system_prompt(self) -> str | None:
        from .notebook._templates import system_prompt_of

        return system_prompt_of(self.template)

    def replace(self, *, template: Any = _UNSET, **params: Any) -> LabConfig:
        """A copy with another (already resolved) template and/or changed sampling parameters."""
        return LabConfig(self.model_name, self.template if template is _UNSET else template,
                         self.params.replace(**params))

    def as_dict(self) -> dict[str, Any]:
        return {"config_id": self.config_id, "model": self.model_name, "template": self.template_name,
                "system_prompt": self.system_prompt, "params": self.params.as_dict()}

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.params.as_dict().items()
                   if v != getattr(SamplingParams(), k) and not (k == "stop" and not v)}
        return (f"LabConfig({self.config_id}: model={self.model_name!r}, template={self.template_name!r}, "
                f"params={changed})")


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
            :class:`~chatstream_lab.models.LoadedModel` (``load_model(...)``, ``scripted_model(...)``),
            or a path ``load_model`` understands.
        template: None (the model's own chat template), a preset name, Jinja source, or a template.
        num_of_concurrent_executions / max_queue_size: the engine's admission limits, shared by
            previews and HTTP clients (``serve`` may change them while nothing runs).
        system_prompt: a system message for conversations that bring none.
        **params: :class:`~chatstream_lab.config.SamplingParams` fields (``temperature=0`` is greedy).

    Creating a Lab starts no thread; the engine starts on the first preview or request.
    """

    def __init__(self, model: Any = None, template: Any = None, *, num_of_concurrent_executions: int = 2,
                 max_queue_size: int = 5, system_prompt: str | None = None, **params: Any) -> None:
        AdmissionGate(num_of_concurrent_executions, max_queue_size)  # validates, starts nothing
        self.model: LoadedModel = _load(model)
        self.num_of_concurrent_executions = num_of_concurrent_executions
        self.max_queue_size = max_queue_size
        self.config = LabConfig(self.model.name,
                                self._resolve(template, _UNSET if system_prompt is None else system_prompt),
                                SamplingParams().replace(**params))
        self.recorder = StatsRecorder(self.config.config_id)
        self._engine: Engine | None = None
        self._endpoint: Endpoint | None = None
        self._lock = threading.RLock()
        self._closed = False

    # -- configuration -----------------------------------------------------------------------------
    def _resolve(self, template: Any, system_prompt: Any = _UNSET) -> Any:
        from .notebook._templates import with_system_prompt
        from .prompts import resolve_template

        resolved = resolve_template(template, self.model.tokenizer)
        return resolved if system_prompt is _UNSET else with_system_prompt(resolved, system_prompt)

    def configure(self, *, template: Any = _UNSET, system_prompt: Any = _UNSET, **params: Any) -> LabConfig:
        """Make a new current configuration (template, system prompt and/or sampling parameters).

        Returns the new :class:`LabConfig`. Requests already submitted keep theirs; a running
        endpoint keeps serving the configuration it was started with (``serve()`` again to switch).
        """
        self.config = self.variant({"template": template, "system_prompt": system_prompt, **params})
        if self._endpoint is None or not self._endpoint.running:
            self.recorder.config_id = self.config.config_id
        return self.config

    def variant(self, spec: Any) -> LabConfig:
        """The current configuration changed by ``spec``: a LabConfig (taken as is), a template or
        preset name, a SamplingParams, or a dict of ``template`` / ``system_prompt`` / parameters."""
        base = self.config
        if isinstance(spec, LabConfig):
            return spec
        if isinstance(spec, SamplingParams):
            return LabConfig(base.model_name, base.template, spec)
        if not isinstance(spec, dict):
            spec = {"template": spec}
        spec = {k: v for k, v in spec.items() if v is not _UNSET}
        template, system_prompt = spec.pop("template", _UNSET), spec.pop("system_prompt", _UNSET)
        if template is _UNSET:
            from .notebook._templates import base_template

            template = base_template(base.template) if system_prompt is not _UNSET else base.template
            if system_prompt is _UNSET:
                return base.replace(**spec)
        return base.replace(template=self._resolve(template, system_prompt), **spec)

    # -- the engine ---------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The shared engine (created on first use; its thread starts with the first request)."""
        with self._lock:
            if self._closed:
                raise ConfigError("this Lab was closed; create a new one", name="lab")
            if self._engine is None:
                from .engine import Engine

                self._engine = Engine(self.model, num_of_concurrent_executions=self.num_of_concurrent_executions,
                                      max_queue_size=self.max_queue_size, observer=self.recorder)
            return self._engine

    def _set_limits(self, num_of_concurrent_executions: int | None, max_queue_size: int | None) -> None:
        """Change the admission limits; replaces the engine, which must be idle."""
        n = self.num_of_concurrent_executions if num_of_concurrent_executions is None \
            else num_of_concurrent_executions
        q = self.max_queue_size if max_queue_size is None else max_queue_size
        if (n, q) == (self.num_of_concurrent_executions, self.max_queue_size):
            return
        AdmissionGate(n, q)
        with self._lock:
            old = self._engine
            if old is not None:
                gate = old.gate.snapshot()
                if gate.running or gate.waiting:
                    raise ConfigError(f"cannot change the limits while {gate.running} request(s) run and "
                                      f"{gate.waiting} wait; stop them (or wait) and serve() again",
                                      name="num_of_concurrent_executions")
                old.close()
                self._engine = None
            self.num_of_concurrent_executions, self.max_queue_size = n, q

    def submit(self, messages: Any, config: LabConfig | None = None) -> RequestStream:
        """Encode ``messages`` (a string is one user message) with ``config`` and submit it.

        Raises QueueFull at once when every slot is busy and the queue is full.
        """
        config = config or self.config
        msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        tmpl = config.template
        ids = tmpl.encode(self.model.tokenizer, msgs, add_generation_prompt=True)
        return self.engine.submit(ids, config.params, stop_strings=tuple(tmpl.stop_strings or ()),
                                  output_replacements=tuple(tmpl.output_replacements or ()))

    def generate(self, messages: Any, timeout: float | None = None, **params: Any) -> str:
        """The whole reply, blocking (no widget); ``params`` override the current configuration."""
        config = self.config.replace(**params) if params else self.config
        return self.submit(messages, config).text(timeout)

    def stats(self) -> StatsSnapshot:
        """The same snapshot ``/stats`` and the dashboard show."""
        return self.recorder.snapshot()

    # -- notebook faces -----------------------------------------------------------------------------
    def preview(self, message: Any, *, config: LabConfig | None = None, **params: Any) -> StreamPreview:
        """A widget, returned at once, that streams the reply (with a Stop button)."""
        from .notebook import StreamPreview

        config = config or (self.config.replace(**params) if params else self.config)
        return StreamPreview.start(self, message, config)

    def chat(self, system_prompt: str | None = None) -> ChatWidget:
        """A multi-turn chat widget (Send, Stop, Regenerate, Clear) on the current configuration."""
        from .notebook import ChatWidget

        return ChatWidget(self, system_prompt=system_prompt)

    def playground(self, message: str = "What is the capital of France?") -> Playground:
        """Edit template, system prompt and sampling; inspect the prompt; preview. Edits configure
        this Lab, so ``serve()`` serves what the playground shows."""
        from .notebook import Playground

        return Playground(self, message)

    def compare(self, variants: dict[str, Any], message: Any) -> CompareView:
        """Stream ``message`` through each variant side by side; a table follows when all finish."""
        from .notebook import CompareView

        return CompareView.start(self, {name: self.variant(spec) for name, spec in variants.items()},
                                 message)

    # -- serving --------------------------------------------------------------------------------------
    def serve(self, port: int | None = None, host: str = "127.0.0.1", *,
              num_of_concurrent_executions: int | None = None, max_queue_size: int | None = None,
              token: str | None = None, timeout: float = 10.0, **app_options: Any) -> Endpoint:
        """Serve the current configuration over HTTP from this kernel; returns an Endpoint.

        Runs uvicorn on its own thread and loop. Previews and HTTP clients share the engine and its
        gate. Calling it again stops this Lab's previous server first (re-running a cell is safe).
        ``port=None`` picks a free port; a busy port raises ServerStartError at once.
        """
        from .notebook.endpoint import Endpoint

        with self._lock:
            self.stop_serving()
            self._set_limits(num_of_concurrent_executions, max_queue_size)
            self.recorder.config_id = self.config.config_id
            self._endpoint = Endpoint.start(self, self.config, host=host, port=port or 0, token=token,
                                            timeout=timeout, **app_options)
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
            engine, self._engine = self._engine, None
            self._closed = True
        if engine is not None:
            engine.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- display ----------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        snap = self.recorder.snapshot(with_history=False)
        ep = self.endpoint
        return {"running": snap.running, "queued": snap.queued, "url": ep.url if ep else None,
                "served_config_id": ep.config.config_id if ep else None}

    def __repr__(self) -> str:
        s = self._state()
        serving = f" serving {s['url']} ({s['served_config_id']})" if s["url"] else ""
        return (f"<Lab model={self.model.name!r} template={self.config.template_name!r} "
                f"config_id={self.config.config_id}{serving} running={s['running']} queued={s['queued']}>")

    def _repr_html_(self) -> str:
        s, cfg = self._state(), self.config
        params = ", ".join(f"{k}={v!r}" for k, v in cfg.params.as_dict().items()
                           if not (k == "stop" and not v) and not (k == "seed" and v is None))
        url = (f"<a href='{escape(s['url'])}' target='_blank'>{escape(s['url'])}</a> "
               f"(config <code>{escape(s['served_config_id'])}</code>)") if s["url"] else "not serving"
        rows = [("model", escape(self.model.name)), ("template", escape(cfg.template_name)),
                ("system prompt", escape(cfg.system_prompt or "(template default)")),
                ("params", f"<code>{escape(params)}</code>"),
                ("config id", f"<code>{escape(cfg.config_id)}</code>"), ("serving", url),
                ("running / queued", f"{s['running']} / {s['queued']} (limit "
                                     f"{self.num_of_concurrent_executions}, queue {self.max_queue_size})")]
        body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{k}</th><td style='text-align:left'>"
                       f"{v}</td></tr>" for k, v in rows)
        return f"<table><caption style='text-align:left'><b>chatstream_lab.Lab</b></caption>{body}</table>"


__all__ = ["Lab", "LabConfig"]
