"""Per-variant statistics of a grid's rows, paired comparisons, the one-line summary and the plot.

Pure functions of the rows (the grid's result calls them); the numbers come from
:mod:`chatstream_lab.experiments.stats`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from ..errors import ConfigError
from .rows import CheckError, GridRow, RowStatus, numeric
from .stats import Comparison, Interval, bootstrap_mean, compare_paired, wilson_interval, within_input_sd

REFERENCE = "reference_logprob"
UNITS = {REFERENCE: "nats/token"}


def metric_value(row: GridRow, metric: str) -> float:
    """``row``'s value of ``metric`` (a check's name, ``reference_logprob``, ``completion_tokens``,
    ``latency_s`` or ``ttft_s``) as a number; NaN when missing or failed."""
    if metric == REFERENCE:
        return numeric(row.reference_logprob)
    if metric in row.checks:
        return numeric(row.checks[metric])
    if metric in ("completion_tokens", "latency_s", "ttft_s"):
        value = getattr(row, metric)
        return math.nan if value is None else float(value)
    return math.nan


def is_binary(rows: Sequence[GridRow], metric: str) -> bool:
    """True when every value of ``metric`` that exists is a bool (a pass/fail check)."""
    values = [r.checks.get(metric) for r in rows if metric in r.checks]
    values = [v for v in values if not isinstance(v, CheckError)]
    return bool(values) and all(isinstance(v, bool) for v in values)


def failures(rows: Sequence[GridRow], metric: str) -> list[str]:
    """Distinct reasons why ``metric`` has no value on some rows."""
    reasons = []
    for r in rows:
        value = r.reference_logprob if metric == REFERENCE else r.checks.get(metric)
        if isinstance(value, CheckError) and value.reason not in reasons:
            reasons.append(value.reason)
    return reasons


def per_input(rows: Sequence[GridRow], metric: str) -> dict[int, list[float]]:
    """Input index -> the metric's values over seeds (finished rows only)."""
    out: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r.status is RowStatus.DONE:
            out[r.input.index].append(metric_value(r, metric))
    return dict(out)


@dataclass(frozen=True)
class MetricStats:
    """One metric of one model x variant: its estimate with an interval and the seed spread."""

    metric: str
    binary: bool
    interval: Interval
    seed_sd: float
    not_scored: tuple[str, ...] = ()

    def cell(self) -> str:
        if self.interval.n == 0:
            return "; ".join(self.not_scored) or "–"
        if self.binary:
            text = (f"{self.interval.estimate:.0%} [{self.interval.low:.0%}, {self.interval.high:.0%}]")
        else:
            text = f"{self.interval.estimate:.3g} [{self.interval.low:.3g}, {self.interval.high:.3g}]"
        return text + (f" ±{self.seed_sd:.2g} seeds" if self.seed_sd else "")


def metric_stats(rows: Sequence[GridRow], metric: str) -> MetricStats:
    """Pass rate with a Wilson interval (pass/fail) or mean with a bootstrap interval."""
    binary = is_binary(rows, metric)
    values = [metric_value(r, metric) for r in rows if r.status is RowStatus.DONE]
    values = [v for v in values if not math.isnan(v)]
    interval = wilson_interval(int(sum(values)), len(values)) if binary else bootstrap_mean(values)
    return MetricStats(metric, binary, interval, within_input_sd(list(per_input(rows, metric).values())),
                       tuple(failures(rows, metric)))


@dataclass(frozen=True)
class VariantStats:
    model: str
    variant: str
    rows: int
    done: int
    metrics: tuple[MetricStats, ...]
    mean_tokens: float
    mean_latency_s: float

    def as_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"model": self.model, "variant": self.variant, "rows": self.rows, "done": self.done}
        for m in self.metrics:
            rec[m.metric] = m.interval.estimate
            rec[f"{m.metric}_low"] = m.interval.low
            rec[f"{m.metric}_high"] = m.interval.high
            if m.seed_sd:
                rec[f"{m.metric}_seed_sd"] = m.seed_sd
        rec["mean_tokens"] = self.mean_tokens
        rec["mean_latency_s"] = self.mean_latency_s
        return rec


def _mean(values: Sequence[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return sum(clean) / len(clean) if clean else math.nan


def variant_stats(rows: Sequence[GridRow], model: str, variant: str, metrics: Sequence[str]) -> VariantStats:
    mine = [r for r in rows if r.model == model and r.variant == variant]
    done = [r for r in mine if r.status is RowStatus.DONE]
    return VariantStats(model, variant, len(mine), len(done), tuple(metric_stats(mine, m) for m in metrics),
                        _mean([float(r.completion_tokens) for r in done]),
                        _mean([r.latency_s for r in done if r.latency_s is not None]))


def compare_groups(rows: Sequence[GridRow], a: tuple[str, str], b: tuple[str, str], metric: str,
                   names: tuple[str, str]) -> Comparison:
    """Paired comparison of the (model, variant) groups ``a`` and ``b`` over their shared inputs."""
    ra = [r for r in rows if (r.model, r.variant) == a]
    rb = [r for r in rows if (r.model, r.variant) == b]
    if not ra or not rb:
        raise ConfigError(f"nothing to compare: no rows for {names[0] if not ra else names[1]!r}", name="variant")
    va, vb = per_input(ra, metric), per_input(rb, metric)
    shared = sorted(set(va) & set(vb))
    if all(math.isnan(v) for i in shared for v in va[i] + vb[i]):
        reasons = failures(ra + rb, metric)
        raise ConfigError(f"no values of {metric!r} to compare" + (f": {reasons[0]}" if reasons else ""),
                          name="metric")
    return compare_paired(names[0], names[1], metric, [va[i] for i in shared], [vb[i] for i in shared],
                          binary=is_binary(ra + rb, metric), unit=UNITS.get(metric, ""))


@dataclass(frozen=True)
class GridSummary:
    """Per model x variant statistics (``table``), comparisons with the first variant
    (``comparisons``), and one line for each (``lines``); str() is the text, the notebook shows HTML."""

    table: tuple[VariantStats, ...]
    comparisons: tuple[Comparison, ...]
    metrics: tuple[str, ...]
    header: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def lines(self) -> list[str]:
        return [c.sentence() for c in self.comparisons]

    def to_records(self) -> list[dict[str, Any]]:
        return [v.as_record() for v in self.table]

    def to_pandas(self) -> Any:
        from ..notebook.records import require_pandas

        return require_pandas().DataFrame.from_records(self.to_records())

    def __str__(self) -> str:
        cols = ["model", "variant", "done", *self.metrics, "tokens", "latency_s"]
        body = [[v.model, v.variant, f"{v.done}/{v.rows}", *(m.cell() for m in v.metrics),
                 f"{v.mean_tokens:.1f}", f"{v.mean_latency_s:.2f}"] for v in self.table]
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *body)]
        lines = [self.header] if self.header else []
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [cols, *body]]
        return "\n".join([*lines, "", *self.lines, *self.notes]).rstrip()

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        cols = ["model", "variant", "done", *self.metrics, "tokens", "latency (s)"]
        head = "".join(f"<th style='text-align:left;padding-right:1em'>{escape(c)}</th>" for c in cols)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left;padding-right:1em'>{escape(str(x))}</td>" for x in
                             [v.model, v.variant, f"{v.done}/{v.rows}", *(m.cell() for m in v.metrics),
                              f"{v.mean_tokens:.1f}", f"{v.mean_latency_s:.2f}"]) + "</tr>" for v in self.table)
        sentences = "".join(f"<li>{escape(c.sentence())}{' <b>*</b>' if c.significant() else ''}</li>"
                            for c in self.comparisons)
        notes = "".join(f"<div><small>{escape(n)}</small></div>" for n in self.notes)
        return (f"<div><small>{escape(self.header)}</small><table><thead><tr>{head}</tr></thead><tbody>{body}"
                f"</tbody></table><ul>{sentences}</ul>{notes}"
                "<small>intervals: 95% (Wilson for pass rates, bootstrap for means); * p &lt; 0.05</small></div>")


class Plot:
    """A matplotlib figure that shows itself in a notebook (as PNG) without pyplot; every figure
    attribute (``savefig``, ``axes``...) is the figure's."""

    def __init__(self, figure: Any) -> None:
        self.figure = figure

    def __getattr__(self, name: str) -> Any:
        return getattr(self.figure, name)

    def _repr_png_(self) -> bytes:
        import io

        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        return buf.getvalue()

    def __repr__(self) -> str:
        return f"<Plot {', '.join(ax.get_title() for ax in self.figure.axes)}>"


def plot_summary(summary: GridSummary) -> Any:
    """A figure: one panel per metric, each model x variant's estimate with its 95% interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = list(summary.metrics) or ["completion_tokens"]
    fig = Figure(figsize=(min(4.2 * len(metrics), 14), 3.4), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    labels = [v.variant if len({x.model for x in summary.table}) == 1 else f"{v.model}\n{v.variant}"
              for v in summary.table]
    for ax, metric in zip(axes, metrics):
        ys, lows, highs = [], [], []
        for v in summary.table:
            stats = next((m for m in v.metrics if m.metric == metric), None)
            iv = stats.interval if stats else Interval(math.nan, math.nan, math.nan, 0)
            ys.append(iv.estimate)
            lows.append(iv.estimate - iv.low if iv.n else 0.0)
            highs.append(iv.high - iv.estimate if iv.n else 0.0)
        xs = list(range(len(ys)))
        ax.errorbar(xs, ys, yerr=[lows, highs], fmt="o", capsize=4)
        ax.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(metric + (f" ({UNITS[metric]})" if metric in UNITS else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return Plot(fig)


__all__ = ["GridSummary", "MetricStats", "Plot", "REFERENCE", "VariantStats", "compare_groups", "is_binary",
           "metric_stats", "metric_value", "per_input", "plot_summary", "variant_stats"]
