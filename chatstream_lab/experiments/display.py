"""HTML of a grid for the notebook: one line per input, one column per model x variant, each
cell the output (cut) with its checks; filled in as rows finish."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from .rows import CheckError, GridRow, RowStatus

MAX_INPUTS_SHOWN = 40
CELL_CHARS = 90
_CELL = "text-align:left;vertical-align:top;padding:2px 8px;border-top:1px solid #eee;max-width:22em"


def _mark(value: object) -> str:
    if isinstance(value, CheckError):
        return f"<span title='{escape(value.reason, quote=True)}' style='color:#b60'>?</span>"
    if isinstance(value, bool):
        return "<span style='color:#080'>✓</span>" if value else "<span style='color:#c00'>✗</span>"
    if isinstance(value, float):
        return f"{value:.2g}"
    return "–"


def _cell(rows: Sequence[GridRow], check_names: Sequence[str]) -> str:
    """One model x variant x input: the first seed's output, and each check over the seeds."""
    if not rows:
        return ""
    first = rows[0]
    done = [r for r in rows if r.status is RowStatus.DONE]
    if not done:
        state = {RowStatus.PENDING: "…", RowStatus.RUNNING: "▶ generating",
                 RowStatus.CANCELLED: "cancelled", RowStatus.FAILED: f"failed: {first.error or ''}"}[first.status]
        return f"<span style='color:#888'>{escape(state)}</span>"
    text = done[0].output.strip().replace("\n", " ")
    cut = text[:CELL_CHARS] + ("…" if len(text) > CELL_CHARS else "")
    marks = []
    for name in check_names:
        values = [r.checks.get(name) for r in done]
        if len(done) > 1 and all(isinstance(v, bool) for v in values):
            marks.append(f"{sum(bool(v) for v in values)}/{len(done)}")
        else:
            marks.append(_mark(values[0]))
    seeds = f" <small style='color:#888'>{len(done)}/{len(rows)} seeds</small>" if len(rows) > 1 else ""
    return (f"<span title='{escape(text, quote=True)}'>{escape(cut) or '<i>(empty)</i>'}</span><br>"
            f"<small>{' '.join(marks)}</small>{seeds}")


def grid_table_html(rows: Sequence[GridRow], columns: Sequence[tuple[str, str]], check_names: Sequence[str],
                    max_inputs: int = MAX_INPUTS_SHOWN) -> str:
    """The table: ``columns`` are (model, variant) pairs in order."""
    by_cell: dict[tuple[int, str, str], list[GridRow]] = {}
    inputs: dict[int, str] = {}
    for r in rows:
        by_cell.setdefault((r.input.index, r.model, r.variant), []).append(r)
        inputs.setdefault(r.input.index, r.input.text)
    several_models = len({m for m, _ in columns}) > 1
    head = "".join(f"<th style='{_CELL}'>{escape(f'{m} · {v}' if several_models else v)}</th>" for m, v in columns)
    legend = ("<small>checks: " + ", ".join(f"<code>{escape(n)}</code>" for n in check_names) + "</small>"
              if check_names else "")
    shown = sorted(inputs)[:max_inputs]
    body = []
    for i in shown:
        text = inputs[i]
        label = escape(text[:60] + ("…" if len(text) > 60 else ""))
        cells = "".join(f"<td style='{_CELL}'>{_cell(by_cell.get((i, m, v), []), check_names)}</td>"
                        for m, v in columns)
        body.append(f"<tr><td style='{_CELL}' title='{escape(text, quote=True)}'><b>{i}</b> {label}</td>{cells}</tr>")
    more = (f"<div><small>… {len(inputs) - len(shown)} more inputs (to_pandas() has every row)</small></div>"
            if len(inputs) > len(shown) else "")
    return (f"<div style='max-height:32em;overflow:auto'><table style='border-collapse:collapse;font-size:90%'>"
            f"<thead><tr><th style='{_CELL}'>input</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"{more}</div>{legend}")


__all__ = ["grid_table_html"]
