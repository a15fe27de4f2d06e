"""HTML for the notebook's ``_repr_html_`` of a Lab (kept out of ``Lab``, which only wires)."""

from __future__ import annotations

from html import escape
from typing import Any

from ..config import ServeConfig
from .labels import template_label


def lab_html(model_name: str, backend: str, config: ServeConfig, *, running: int, queued: int, limit: int,
             max_queue_size: int, url: str | None, served_config_id: str | None) -> str:
    params = ", ".join(f"{k}={v!r}" for k, v in config.params.as_dict().items()
                       if not (k == "stop" and not v) and not (k == "seed" and v is None))
    serving = (f"<a href='{escape(url)}' target='_blank'>{escape(url)}</a> "
               f"(config <code>{escape(served_config_id or '')}</code>)") if url else "not serving"
    rows: list[tuple[str, Any]] = [
        ("model", f"{escape(model_name)} <small>({escape(backend)})</small>"),
        ("template", template_label(config).html()),
        ("system prompt", escape(config.system_prompt or "(template default)")),
        ("params", f"<code>{escape(params)}</code>"),
        ("config id", f"<code>{escape(config.config_id)}</code>"), ("serving", serving),
        ("running / queued", f"{running} / {queued} (limit {limit}, queue {max_queue_size})"),
    ]
    body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{k}</th><td style='text-align:left'>"
                   f"{v}</td></tr>" for k, v in rows)
    return f"<table><caption style='text-align:left'><b>chatstream_lab.Lab</b></caption>{body}</table>"


def model_label(model: Any) -> str:
    """``"openvino int8/f32 (calibrated)"``: what runs the model, in which precision, chosen by whom."""
    choice = getattr(model, "precision", None)
    chosen_by = f" ({choice.source})" if choice is not None else ""
    return f"{getattr(model, 'backend', 'torch')} {getattr(model, 'dtype', '')}{chosen_by}".strip()
