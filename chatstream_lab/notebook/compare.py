"""``CompareView``: one message through several configurations, side by side, then a table.

Each variant is a preview column; all are submitted at once through one service (so they
batch together and respect the same limit: variants beyond it wait in the queue). When all have
finished, a table of finish reason, tokens, time to first token and tokens/s follows; with a
``reference`` reply (``Lab.compare(..., reference=...)``) it adds the reference's mean
log-probability per token under each variant (scored on the engine thread, off the kernel's loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from html import escape
from typing import Any

import ipywidgets as widgets

from ..config import ServeConfig
from ..errors import ChatStreamLabError
from ..types import Finished
from ._loop import spawn
from .labels import template_label
from .preview import StreamPreview, Submit

COLUMNS = ("variant", "config_id", "template", "finish_reason", "tokens", "ttft_s", "tokens_per_s", "total_s")


def _row(name: str, config: ServeConfig, fin: Finished | None, error: str | None = None) -> dict[str, Any]:
    u = fin.usage if fin is not None else None
    return {"variant": name, "config_id": config.config_id, "template": template_label(config).short,
            "finish_reason": fin.finish_reason.value if fin else f"refused: {error}",
            "tokens": u.completion_tokens if u else 0, "ttft_s": u.ttft_s if u else None,
            "tokens_per_s": u.tokens_per_s if u else None, "total_s": u.total_s if u else None,
            "text": fin.text if fin else ""}


Scorer = Callable[[ServeConfig], float]
"""The mean logprob of the reference reply under a configuration (blocking; run off the loop)."""

# one line, cut with an ellipsis (the full text on hover): a long template name must not wrap
# and push its column below the others
_TITLE_LINE = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:100%"
COLUMN_MAX_HEIGHT = "18em"  # a long or degenerate reply scrolls inside its column


def column_title(name: str, config: ServeConfig) -> str:
    """The variant's name, then its template (own name, where it came from) and config id, each on
    one line cut with an ellipsis; the full texts (the template's identifier) on hover."""
    label = template_label(config)
    hover = f"{label.title} · config {config.config_id}"
    return (f"<div style='{_TITLE_LINE}' title='{escape(name, quote=True)}'><b>{escape(name)}</b></div>"
            f"<div style='{_TITLE_LINE}' title='{escape(hover, quote=True)}'><small>"
            f"{escape(label.short)} <span style='color:#667'>({escape(label.origin)})</span> · "
            f"<code>{config.config_id}</code></small></div>")


def table_html(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any) -> str:
        return "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else escape(str(v)))

    columns = [*COLUMNS, "mean_logprob"] if any("mean_logprob" in r for r in rows) else list(COLUMNS)
    head = "".join(f"<th style='text-align:left;padding-right:1em'>{c}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left;padding-right:1em;white-space:nowrap'>"
                                    f"{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table style='line-height:1.5'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class CompareView(widgets.VBox):
    """Columns of streaming replies, then ``table`` (HTML) and ``rows`` (dicts, one per variant)."""

    def __init__(self, variants: dict[str, ServeConfig], scorer: Scorer | None = None) -> None:
        self.variants = dict(variants)
        self.scorer = scorer
        self.previews: dict[str, StreamPreview] = {}
        self.errors: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []
        self.table = widgets.HTML("<small>streaming…</small>")
        # columns that do not fit side by side wrap onto the next row (never clipped at the right)
        self.columns = widgets.HBox(layout=widgets.Layout(align_items="flex-start", flex_flow="row wrap"))
        super().__init__([self.columns, self.table])
        self.task: asyncio.Task[list[dict[str, Any]]] | None = None
        self.message: Any = None

    @classmethod
    def start(cls, submit: Submit, variants: dict[str, ServeConfig], message: Any, *,
              scorer: Scorer | None = None) -> CompareView:
        if not variants:
            raise ChatStreamLabError("compare() needs at least one variant: {name: template_or_params}")
        view = cls(variants, scorer)
        view.message = message
        columns = []
        for name, config in variants.items():
            preview = StreamPreview(column_title(name, config), max_height=COLUMN_MAX_HEIGHT,
                                    layout=widgets.Layout(flex="1 1 0", min_width="12em", margin="0 6px 8px 0"))
            try:
                stream = submit(message, config)
            except ChatStreamLabError as exc:  # e.g. QueueFull: more variants than limit + queue
                view.errors[name] = str(exc)
                preview.status.value = f"<small>{escape(str(exc))}</small>"
                preview.stop_button.disabled = True
            else:
                preview.stream = stream
            view.previews[name] = preview
            columns.append(preview)
        view.columns.children = tuple(columns)
        for preview in view.previews.values():
            if preview.stream is not None:
                preview.attach(preview.stream)
        view.task = spawn(view._collect())  # None without a running loop: already done
        return view

    async def _collect(self) -> list[dict[str, Any]]:
        rows = []
        for name, preview in self.previews.items():
            fin = await preview.wait() if preview.stream is not None else None
            rows.append(_row(name, self.variants[name], fin, self.errors.get(name)))
        if self.scorer is not None:
            loop = asyncio.get_running_loop()
            for row, config in zip(rows, self.variants.values()):
                try:
                    row["mean_logprob"] = await loop.run_in_executor(None, self.scorer, config)
                except ChatStreamLabError as exc:
                    row["mean_logprob"] = f"not scored: {exc}"
        self.rows = rows
        self.table.value = table_html(rows)
        return rows

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per variant in the grid's row shape (``notebook/records.py``): ``model``,
        ``variant``, ``input``, ``seed``, ``output``, ``completion_tokens``, ``ttft_s``, ``latency_s``,
        then ``config_id``, ``template``, ``finish_reason`` and the reference's ``reference_logprob``."""
        shown = self.message if isinstance(self.message, str) else (
            next((m.get("content", "") for m in reversed(list(self.message or [])) if m.get("role") == "user"), ""))
        scored = {r["variant"]: r.get("mean_logprob") for r in self.rows}
        records = []
        for name, config in self.variants.items():
            preview = self.previews.get(name)
            fin = preview.finished if preview is not None else None
            u = fin.usage if fin is not None else None
            record = {"model": config.model_name, "variant": name, "input": shown, "seed": config.params.seed,
                      "output": fin.text if fin else (preview.text if preview else ""),
                      "completion_tokens": u.completion_tokens if u else None, "ttft_s": u.ttft_s if u else None,
                      "latency_s": u.total_s if u else None, "config_id": config.config_id,
                      "template": config.template_name,
                      "finish_reason": fin.finish_reason.value if fin else self.errors.get(name, "streaming")}
            if isinstance(scored.get(name), float):
                record["reference_logprob"] = scored[name]
            records.append(record)
        return records

    def to_pandas(self) -> Any:
        """:meth:`to_records` as a DataFrame (pandas: the ``notebook`` extra)."""
        from .records import records_frame

        return records_frame(self.to_records())

    def __repr__(self) -> str:
        state = "done" if self.rows else "streaming"
        return f"<CompareView {state}: {', '.join(self.variants)}>"

    def stop(self) -> None:
        for preview in self.previews.values():
            preview.stop()

    async def wait(self) -> list[dict[str, Any]]:
        if self.task is not None:
            return await asyncio.shield(self.task)
        return self.rows
