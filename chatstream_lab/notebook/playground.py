"""``Playground``: pick a preset, edit the template and system prompt, move the sampling sliders,
see the exact prompt (text, tokens, lint warnings), and preview the reply.

Every valid edit calls ``configure`` (for ``Lab.playground``: ``lab.configure``), so what the
playground shows is what ``lab.serve()`` serves, under the same configuration id. An invalid edit
(a format string without
``{content}``, a template that cannot render) is reported in the widget and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

import ipywidgets as widgets

from ..config import ServeConfig
from ..errors import ChatStreamLabError
from ..prompts import DeclarativeTemplate, base_template, inspect_prompt, presets, system_prompt_of
from .labels import template_label
from .preview import StreamPreview

MODEL_OWN = "(model's own template)"
CURRENT = "(current template)"
FORMAT_FIELDS = ("system", "user", "assistant", "generation_prefix")
_SLIDERS = {  # name -> (widget class, min, max, step)
    "temperature": (widgets.FloatSlider, 0.0, 2.0, 0.05),
    "top_p": (widgets.FloatSlider, 0.05, 1.0, 0.05),
    "top_k": (widgets.IntSlider, 0, 200, 1),
    "min_p": (widgets.FloatSlider, 0.0, 1.0, 0.01),
    "repetition_penalty": (widgets.FloatSlider, 0.5, 2.0, 0.05),
}
# max_new_tokens on a linear 1..1024 slider moved ~4 tokens per pixel (a small drag jumped from 32 to
# 206): a ladder of round values instead, each notch at most ~1.5x the one before
MAX_NEW_TOKENS_STEPS = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512,
                        640, 768, 1024)


def max_new_tokens_slider(value: int, label_width: str) -> widgets.SelectionSlider:
    """A slider over :data:`MAX_NEW_TOKENS_STEPS` (plus ``value`` when it is not one of them)."""
    steps = sorted({*MAX_NEW_TOKENS_STEPS, int(value)})
    return widgets.SelectionSlider(options=steps, value=int(value), description="max_new_tokens",
                                   continuous_update=False, style={"description_width": label_width},
                                   layout=widgets.Layout(width="100%"))


# wide enough for "repetition_penalty" in JupyterLab's font (9em cut it to "repetition_pena…")
SLIDER_LABEL_WIDTH = "12em"


def _area(description: str, value: str = "", rows: int = 2) -> widgets.Textarea:
    return widgets.Textarea(value=value, description=description, rows=rows,
                            style={"description_width": "9em"}, layout=widgets.Layout(width="98%"))


class Playground(widgets.VBox):
    """Widgets: ``preset``, ``fields`` (declarative turn formats and ``stop_strings``), ``jinja_source``,
    ``system_prompt``, ``sliders``, ``message``; outputs: ``config_label``, ``error``, ``inspection_html``,
    ``preview_box``. ``config`` is the current configuration; ``preview()`` streams a reply.

    Args:
        tokenizer: the model's tokenizer (for the prompt inspection).
        current: returns the current configuration.
        configure: ``configure(template=..., system_prompt=..., **params) -> ServeConfig`` makes a new
            current configuration (raises ChatStreamLabError when invalid).
        preview: ``preview(message) -> StreamPreview`` streams a reply with the current configuration.
        context_window: the model's, for the inspection's length warning.
    """

    def __init__(self, tokenizer: Any, *, current: Callable[[], ServeConfig],
                 configure: Callable[..., ServeConfig], preview: Callable[[str], StreamPreview],
                 context_window: int | None = None, message: str = "What is the capital of France?") -> None:
        self.tokenizer = tokenizer
        self._current = current
        self._configure = configure
        self._preview = preview
        self.context_window = context_window
        self._updating = False
        self.inspection: Any = None
        self.last_preview: StreamPreview | None = None
        current_template = current().template
        base = base_template(current_template)
        self._own = self._model_own_source()
        self._current_base = base
        options = [MODEL_OWN, *presets.names()]
        registered = presets.name_of(base)
        if registered is None and not self._is_model_own(base):
            options.insert(0, CURRENT)
        start = registered or (MODEL_OWN if self._is_model_own(base) else CURRENT)
        self.preset = widgets.Dropdown(options=options, value=start, description="preset",
                                       style={"description_width": "9em"})
        self.fields = {f: _area(f, rows=2) for f in FORMAT_FIELDS}
        self.fields["stop_strings"] = _area("stop strings", rows=2)
        self.fields["stop_strings"].placeholder = "one per line"
        self.jinja_source = _area("jinja source", rows=8)
        self.system_prompt = _area("system prompt", system_prompt_of(current_template) or "", rows=2)
        p = current().params
        self.sliders = {name: cls(value=getattr(p, name), min=lo, max=hi, step=step, description=name,
                                  continuous_update=False, style={"description_width": SLIDER_LABEL_WIDTH},
                                  layout=widgets.Layout(width="100%"))
                        for name, (cls, lo, hi, step) in _SLIDERS.items()}
        self.sliders["max_new_tokens"] = max_new_tokens_slider(p.max_new_tokens, SLIDER_LABEL_WIDTH)
        self.message = widgets.Text(value=message, description="message", style={"description_width": "9em"},
                                    layout=widgets.Layout(width="98%"))
        self.preview_button = widgets.Button(description="Preview", button_style="primary", icon="play")
        self.config_label = widgets.HTML()
        self.error = widgets.HTML()
        self.inspection_html = widgets.HTML()
        self.preview_box = widgets.VBox()
        self.template_box = widgets.VBox()
        self._fill_template_fields(base)

        self.preview_button.on_click(lambda _b: self.preview())
        self.preset.observe(self._on_preset, names="value")
        for w in [*self.fields.values(), self.jinja_source, self.system_prompt, *self.sliders.values(),
                  self.message]:
            w.observe(self._on_edit, names="value")
        left = widgets.VBox([self.preset, self.template_box, self.system_prompt],
                            layout=widgets.Layout(width="60%"))
        right = widgets.VBox(list(self.sliders.values()), layout=widgets.Layout(width="40%"))
        super().__init__([widgets.HBox([left, right]), self.message,
                          widgets.HBox([self.preview_button, self.config_label]), self.error,
                          self.inspection_html, self.preview_box])
        self.apply()

    # -- templates <-> fields ------------------------------------------------------------------------
    def _model_own_source(self) -> str:
        try:
            from ..prompts import resolve_template

            return str(getattr(resolve_template(None, self.tokenizer), "source", ""))
        except ChatStreamLabError:
            return ""

    def _is_model_own(self, template: Any) -> bool:
        return bool(self._own) and getattr(template, "source", None) == self._own and \
            not isinstance(template, DeclarativeTemplate)

    def _fill_template_fields(self, template: Any) -> None:
        self._updating = True
        try:
            self._current_base = template
            if isinstance(template, DeclarativeTemplate):
                for f in FORMAT_FIELDS:
                    self.fields[f].value = getattr(template, f)
                self.fields["stop_strings"].value = "\n".join(template.stop_strings)
                self.template_box.children = tuple(self.fields.values())
            else:
                self.jinja_source.value = str(getattr(template, "source", ""))
                self.template_box.children = (self.jinja_source,)
        finally:
            self._updating = False

    def _on_preset(self, change: dict[str, Any]) -> None:
        name = change["new"]
        if name == MODEL_OWN:
            from ..prompts import resolve_template

            template = resolve_template(None, self.tokenizer)
        elif name == CURRENT:
            template = base_template(self.config.template)
        else:
            template = presets.get(name)
        self._fill_template_fields(template)
        self._updating = True
        self.system_prompt.value = system_prompt_of(template) or ""
        self._updating = False
        self.apply()

    def _on_edit(self, change: dict[str, Any]) -> None:
        if not self._updating:
            self.apply()

    def build_template(self) -> Any:
        """The template the fields describe (raises ConfigError / TemplateError when invalid)."""
        base = self._current_base
        if isinstance(base, DeclarativeTemplate):
            changes: dict[str, Any] = {f: self.fields[f].value for f in FORMAT_FIELDS}
            changes["stop_strings"] = tuple(s for s in self.fields["stop_strings"].value.split("\n") if s)
            edited = base.replace(**changes)
            if edited != base:
                edited = edited.replace(name=f"{base.name.removesuffix(' (edited)')} (edited)")
            return edited
        source = self.jinja_source.value
        if source == self._own:
            return None  # the model's own template
        return source

    # -- the configuration ------------------------------------------------------------------------------
    @property
    def config(self) -> ServeConfig:
        return self._current()

    def apply(self) -> ServeConfig | None:
        """Configure from the widgets; shows the prompt inspection. None if invalid."""
        try:
            params = {name: w.value for name, w in self.sliders.items()}
            config = self._configure(template=self.build_template(),
                                     system_prompt=self.system_prompt.value or None, **params)
            messages = [{"role": "user", "content": self.message.value or "…"}]
            self.inspection = inspect_prompt(config.template, self.tokenizer, messages,
                                             context_window=self.context_window)
        except (ChatStreamLabError, ValueError) as exc:
            self.error.value = f"<pre style='color:#b00'>{escape(str(exc))}</pre>"
            return None
        self.error.value = ""
        self.inspection_html.value = self.inspection._repr_html_()
        self.config_label.value = (f"<small>config <code>{config.config_id}</code> · "
                                   f"{template_label(config).html()} · {self.inspection.num_tokens} prompt "
                                   "tokens · <code>lab.serve()</code> serves this configuration</small>")
        return config

    def __repr__(self) -> str:
        return f"<Playground config_id={self.config.config_id} template={self.config.template_name!r}>"

    def preview(self, message: str | None = None) -> StreamPreview:
        """Stream a reply to ``message`` (default: the message field) with the current configuration."""
        if self.last_preview is not None:
            self.last_preview.stop()
        view = self._preview(message if message is not None else self.message.value)
        self.last_preview = view
        self.preview_box.children = (view,)
        return view
