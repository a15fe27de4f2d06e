"""``GridResult``: what ``lab.grid(...)`` returns at once, filled in live by the runner.

It is data first: ``rows`` (frozen :class:`~chatstream_lab.experiments.rows.GridRow` values),
``to_records()`` / ``to_pandas()``, ``to_jsonl(path)`` / ``GridResult.load(path)`` (a header
line with the grid's configurations, then one row per line), ``diff(other)`` by key. Statistics:
``summary()``, ``compare(a, b)``, ``plot()``. In a notebook it shows itself as a live table
with a progress bar and Stop; ``wait()`` blocks until every row is done (in a cell too: the
kernel's loop keeps running, so the table keeps filling).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from ..config import ServeConfig
from ..errors import ConfigError
from .records import row_record, to_dataframe
from .rows import GridRow, RowOrigin, RowStatus
from .runner import GridRunner, GridState
from .summary import REFERENCE, GridSummary, compare_groups, is_binary, plot_summary, variant_stats

GRID_FILE_FORMAT = 1


@dataclass(frozen=True)
class GridLayout:
    """The grid's axes: models and variants in order, the checks' column names, the seeds, and
    each (model, variant)'s configuration (without a seed)."""

    models: tuple[str, ...]
    variants: tuple[str, ...]
    check_names: tuple[str, ...]
    seeds: tuple[int | None, ...]
    configs: Mapping[tuple[str, str], ServeConfig] = field(default_factory=dict)

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(m, v) for m in self.models for v in self.variants]


class GridResult:
    """Rows of a grid (see the module docstring). Made by ``lab.grid`` or :meth:`load`."""

    def __init__(self, state: GridState, layout: GridLayout, runner: GridRunner | None = None) -> None:
        self._state = state
        self.layout = layout
        self._runner = runner

    # -- progress ------------------------------------------------------------------------------------
    @property
    def rows(self) -> list[GridRow]:
        """Every row, in order (model, input, variant, seed)."""
        return self._state.rows()

    def __len__(self) -> int:
        return len(self._state.rows())

    @property
    def done(self) -> bool:
        """True once every row finished (done, cancelled or failed)."""
        return self._state.finished.is_set()

    @property
    def reused(self) -> int:
        """How many rows came from earlier results (same key) instead of being generated."""
        return sum(r.origin is RowOrigin.REUSED for r in self.rows)

    @property
    def generated(self) -> int:
        """How many generations this grid ran."""
        return sum(r.origin is RowOrigin.GENERATED for r in self.rows)

    @property
    def elapsed_s(self) -> float:
        return self._state.elapsed_s

    def counts(self) -> dict[str, int]:
        """Rows per status."""
        out = {s.value: 0 for s in RowStatus}
        for r in self.rows:
            out[r.status.value] += 1
        return out

    def stop(self) -> None:
        """Cancel what runs and submit nothing more; finished rows are kept."""
        if self._runner is not None:
            self._runner.stop()

    def wait(self, timeout: float | None = None) -> GridResult:
        """Block until every row is done (raises TimeoutError after ``timeout`` s). In a notebook
        cell the kernel's loop keeps running meanwhile, so the live table keeps filling."""
        from ..notebook._loop import run_sync, running_loop

        if running_loop() is not None and not self.done:
            run_sync(self._await(timeout))
        elif not self._state.finished.wait(timeout):
            raise TimeoutError(f"the grid did not finish within {timeout} s")
        return self

    async def _await(self, timeout: float | None = None) -> GridResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the grid did not finish within {timeout} s")
            await asyncio.sleep(0.05)
        return self

    def __await__(self) -> Any:
        return self._await().__await__()

    # -- data ----------------------------------------------------------------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        """One flat dict per row (see ``experiments/records.py`` for the columns)."""
        return [row_record(r, self.layout.check_names) for r in self.rows]

    def to_pandas(self) -> Any:
        """A DataFrame, one row per model x variant x input x seed (pandas: the notebook extra)."""
        return to_dataframe(self.to_records())

    def to_jsonl(self, path: str | Path) -> Path:
        """Save: a header line (axes, configurations) then one JSON row per line; ``load`` reads it."""
        target = Path(path)
        header = {"chatstream_lab_grid": GRID_FILE_FORMAT, "models": list(self.layout.models),
                  "variants": list(self.layout.variants), "checks": list(self.layout.check_names),
                  "seeds": list(self.layout.seeds),
                  "configs": [{"model": m, "variant": v, "config": c.to_file_data()}
                              for (m, v), c in self.layout.configs.items()]}
        with target.open("w", encoding="utf-8") as f:
            f.write(json.dumps(header, ensure_ascii=False) + "\n")
            for row in self.rows:
                f.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
        return target

    @classmethod
    def load(cls, path: str | Path) -> GridResult:
        """A saved grid (``to_jsonl``), finished; ``lab.grid(..., reuse=result)`` re-uses its rows."""
        from ..prompts.config_file import config_from_data

        target = Path(path)
        lines = [line for line in target.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise ConfigError(f"{str(target)!r} is empty, not a saved grid", name="path")
        header = json.loads(lines[0])
        if header.get("chatstream_lab_grid") != GRID_FILE_FORMAT:
            raise ConfigError(f"{str(target)!r} is not a grid saved by GridResult.to_jsonl", name="path")
        rows = [GridRow.from_dict(json.loads(line)) for line in lines[1:]]
        configs = {(c["model"], c["variant"]): config_from_data(c["config"], origin=f"{target} ({c['variant']})")
                   for c in header.get("configs", ())}
        layout = GridLayout(tuple(header["models"]), tuple(header["variants"]), tuple(header["checks"]),
                            tuple(header.get("seeds", ())), configs)
        state = GridState(rows)
        state.finish()
        return cls(state, layout)

    def diff(self, other: GridResult) -> GridDiff:
        """Rows of this result and ``other`` matched by key: changed outputs, and keys only one has."""
        mine = {r.key: r for r in self.rows if r.key is not None and r.status is RowStatus.DONE}
        theirs = {r.key: r for r in other.rows if r.key is not None and r.status is RowStatus.DONE}
        changed = tuple((mine[k], theirs[k]) for k in mine.keys() & theirs.keys()
                        if mine[k].output != theirs[k].output)
        return GridDiff(tuple(mine[k] for k in mine.keys() - theirs.keys()),
                        tuple(theirs[k] for k in theirs.keys() - mine.keys()), changed,
                        len(mine.keys() & theirs.keys()))

    def config(self, variant: str, model: str | None = None) -> ServeConfig:
        """The configuration of ``variant`` (on ``model``; default: the first model), seed-free:
        ``lab.configure(result.config("chatml"))`` then ``lab.serve()`` serves it."""
        model = model or self.layout.models[0]
        try:
            return self.layout.configs[(model, variant)]
        except KeyError:
            raise ConfigError(f"no configuration for variant {variant!r} on model {model!r}; variants: "
                              f"{list(self.layout.variants)}, models: {list(self.layout.models)}",
                              name="variant") from None

    # -- statistics ----------------------------------------------------------------------------------
    def metrics(self) -> list[str]:
        """The columns statistics are computed on: the checks, then the reference log-prob."""
        out = list(self.layout.check_names)
        if any(r.input.reference is not None for r in self.rows):
            out.append(REFERENCE)
        return out

    def _primary(self, metric: str | None) -> str:
        if metric is not None:
            if metric not in (*self.metrics(), "completion_tokens", "latency_s", "ttft_s"):
                raise ConfigError(f"unknown metric {metric!r}; known: {self.metrics()}", name="metric")
            return metric
        metrics = self.metrics()
        if not metrics:
            raise ConfigError("this grid has no checks and no reference: pass metric='completion_tokens' "
                              "(or run it with checks=... / reference=...)", name="metric")
        return metrics[0]

    def compare(self, a: str, b: str, metric: str | None = None, *, model: str | None = None,
                variant: str | None = None) -> Any:
        """Variant ``a`` against variant ``b`` (or model ``a`` against model ``b``), paired over the
        same inputs: exact McNemar for a pass/fail check with one seed, else a paired permutation test
        on per-input means. Returns a Comparison (``p_value``, ``effect``, ``sentence()``)."""
        metric = self._primary(metric)
        if a in self.layout.variants and b in self.layout.variants:
            model = model or self._only(self.layout.models, "model")
            groups = ((model, a), (model, b))
        elif a in self.layout.models and b in self.layout.models:
            variant = variant or self._only(self.layout.variants, "variant")
            groups = ((a, variant), (b, variant))
        else:
            raise ConfigError(f"compare() takes two variants {list(self.layout.variants)} or two models "
                              f"{list(self.layout.models)}, got {a!r} and {b!r}", name="a")
        return compare_groups(self.rows, groups[0], groups[1], metric, (a, b))

    def _only(self, names: Sequence[str], what: str) -> str:
        if len(names) != 1:
            raise ConfigError(f"this grid has several {what}s {list(names)}: pass {what}=...", name=what)
        return names[0]

    def summary(self, metric: str | None = None) -> GridSummary:
        """Per model x variant: pass rates (Wilson 95%), means (bootstrap 95%), seed spread; and each
        variant against the first on ``metric`` (default: the first check, else the reference)."""
        rows = self.rows
        metrics = self.metrics()
        table = tuple(variant_stats(rows, m, v, metrics) for m, v in self.layout.columns)
        comparisons = []
        primary = self._primary(metric) if metrics or metric else None
        if primary is not None and len(self.layout.variants) > 1:
            for m in self.layout.models:
                base = self.layout.variants[0]
                for v in self.layout.variants[1:]:
                    for name in dict.fromkeys([primary, *([REFERENCE] if REFERENCE in metrics else [])]):
                        try:
                            comparisons.append(compare_groups(rows, (m, v), (m, base), name, (v, base)))
                        except ConfigError:
                            continue
        notes = []
        same = sum(r.origin is RowOrigin.SAME_KEY for r in rows)
        if same:
            notes.append(f"{same} rows share a generation with another seed (greedy: the seed does not change "
                         "the output)")
        binary = [n for n in metrics if is_binary(rows, n)]
        header = (f"{len(rows)} rows: {self.generated} generated, {self.reused} reused, {same} same-key"
                  f"{' · pass/fail: ' + ', '.join(binary) if binary else ''}")
        return GridSummary(table, tuple(comparisons), tuple(metrics), header, tuple(notes))

    def plot(self, metric: str | None = None) -> Any:
        """A matplotlib figure (shown as PNG in a notebook; ``.figure``, ``.savefig``): each model x
        variant's estimate with its 95% interval, per metric."""
        summary = self.summary()
        if metric is not None:
            summary = GridSummary(summary.table, (), (self._primary(metric),))
        return plot_summary(summary)

    # -- display -------------------------------------------------------------------------------------
    def show(self, row: Any) -> Any:
        """One row's output with its token colours (a widget); ``row`` is its index, a GridRow,
        or a row of ``to_pandas()``."""
        from ..notebook.grid import row_view

        index = row.index if isinstance(row, GridRow) else int(row["row"] if hasattr(row, "__getitem__")
                                                                 and not isinstance(row, int) else row)
        r = self._state.row(index)
        checks = " · ".join(f"{k}: {v}" for k, v in r.checks.items())
        title = (f"<small><b>{escape(r.model)} · {escape(r.variant)}</b> · seed {r.seed} · config "
                 f"<code>{escape(r.config_id)}</code> · {escape(r.input.text[:100])}</small>")
        details = escape(f"{r.status.value} · {r.finish_reason or ''} · {r.completion_tokens} tokens · "
                         f"{_seconds(r.latency_s)}" + (f" · {checks}" if checks else "")
                         + ("" if r.tokens else " · no token probabilities (this engine reports none)"))
        return row_view(title, r.output, r.tokens, details)

    def frame(self) -> Any:
        """The live view's current frame (counts, status, table)."""
        from ..notebook.grid import LiveFrame, status_line
        from .display import grid_table_html

        rows = self.rows
        counts = self.counts()
        finished = sum(r.status.final for r in rows)
        parts = [f"{counts['done']} done", f"{counts['running']} running",
                 f"{self.reused} reused" if self.reused else "",
                 f"{counts['cancelled']} cancelled" if counts["cancelled"] else "",
                 f"{counts['failed']} failed" if counts["failed"] else "", f"{self.elapsed_s:.1f} s"]
        if self.done:
            parts.append("finished")
        return LiveFrame(finished, len(rows), status_line(finished, len(rows), parts),
                         grid_table_html(rows, self.layout.columns, self.layout.check_names), self.done,
                         self._state.version + (1_000_000 if self.done else 0))

    def view(self) -> Any:
        """The live widget: progress bar, Stop, and the table filling in as rows finish."""
        from ..notebook.grid import LiveGridView

        return LiveGridView(self.frame, self.stop).start()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.view())

    def _repr_html_(self) -> str:
        frame = self.frame()
        return f"<div><small>{frame.status}</small>{frame.table_html}</div>"

    def __repr__(self) -> str:
        counts = self.counts()
        state = "done" if self.done else "running"
        return (f"<GridResult {state}: {len(self)} rows ({counts['done']} done, {self.reused} reused, "
                f"{counts['failed']} failed, {counts['cancelled']} cancelled) models={list(self.layout.models)} "
                f"variants={list(self.layout.variants)}>")


def _seconds(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f} s"


@dataclass(frozen=True)
class GridDiff:
    """Two results matched by row key."""

    only_here: tuple[GridRow, ...]
    only_there: tuple[GridRow, ...]
    changed: tuple[tuple[GridRow, GridRow], ...]
    shared: int

    def __repr__(self) -> str:
        return (f"<GridDiff {self.shared} shared keys, {len(self.changed)} with another output, "
                f"{len(self.only_here)} only here, {len(self.only_there)} only there>")


__all__ = ["GridDiff", "GridLayout", "GridResult"]
