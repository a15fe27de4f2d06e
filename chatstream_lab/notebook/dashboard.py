"""``Dashboard``: live matplotlib plots of the same snapshot ``/stats`` returns.

Running and queued requests, completed and rejected so far, aggregate tokens/s, and TTFT p50/p95,
over time. A task on the kernel's loop samples ``source()`` (``StatsRecorder.snapshot``) about once
a second and redraws; matplotlib is touched only there, never from the engine or server threads.
The timer keeps a fixed rate (ticks at start + k * interval, a late tick skipped, never made up in a
burst), so the time a redraw takes does not stretch the period. The header shows the current
throughput only while requests run or wait; otherwise "idle" (the plot keeps the windowed rate
decaying), and "endpoint stopped" on the last frame of a stopped endpoint.

Two ways to show it:

* inline (default, works everywhere including nbclient/nbconvert): an Agg figure rendered to PNG
  and shown through a display handle, updated in place (``display_id``);
* ipympl (when ``%matplotlib widget`` is active): the figure's canvas widget, updated with
  ``draw_idle``.

``save_png(path)`` writes the current figure (the README screenshot).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..stats import StatsSnapshot
from ._loop import running_loop

_SERIES = {  # axis index -> (label, Sample field, style)
    0: (("running", "running", "-"), ("queued", "queued", "--")),
    1: (("completed", "completed", "-"), ("rejected", "rejected", "--"), ("cancelled", "cancelled", ":")),
    2: (("tokens/s (all requests)", "throughput", "-"),),
    3: (("TTFT p50", "ttft_p50", "-"), ("TTFT p95", "ttft_p95", "--")),
}
_TITLES = ("requests now", "requests so far", "aggregate throughput (tokens/s)", "time to first token (s)")


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    running: int
    queued: int
    rejected: int
    completed: int
    cancelled: int
    throughput: float
    ttft_p50: float | None
    ttft_p95: float | None

    @classmethod
    def of(cls, t: float, s: StatsSnapshot) -> Sample:
        return cls(t, s.running, s.queued, s.rejected, s.completed, s.cancelled + s.errors,
                   s.throughput_tokens_per_s, s.ttft_p50, s.ttft_p95)


def next_tick(tick: float, now: float, interval: float) -> float:
    """The next tick of a fixed-rate timer (``tick`` + k * ``interval``) after ``now``: a redraw that
    took part of the interval shortens the wait; ticks missed meanwhile are skipped, not bunched."""
    tick += interval
    if tick <= now:
        tick += interval * (1 + (now - tick) // interval)
    return tick


def header_text(s: StatsSnapshot, title: str = "", *, stopped: bool = False) -> str:
    """The figure's header: config, counts, and the throughput only while something runs or waits."""
    ttft = f"{s.ttft_p50:.2f}/{s.ttft_p95:.2f} s" if s.ttft_p50 is not None and s.ttft_p95 is not None else "–"
    if stopped:
        rate = "endpoint stopped"
    elif s.running or s.queued:
        rate = f"{s.throughput_tokens_per_s:.1f} tok/s"
    else:
        rate = "idle"
    return (f"{title} config {s.config_id} · running {s.running} · queued {s.queued} · rejected {s.rejected} · "
            f"completed {s.completed} · {rate} · TTFT p50/p95 {ttft}").strip()


def ipympl_active() -> bool:
    """True when ``%matplotlib widget`` (ipympl) was enabled in this kernel."""
    return "ipympl.backend_nbagg" in sys.modules


class Dashboard:
    """Live plots of ``source()`` snapshots.

    Args:
        source: returns a :class:`~chatstream_lab.stats.StatsSnapshot` (thread-safe; read on the loop).
        interval: seconds between redraws (about 1).
        max_points: samples kept (a ring buffer).
        alive: when it returns False the dashboard draws a last frame and stops (endpoint stopped).
        mode: "auto" (ipympl when active, else inline PNG), "inline" or "ipympl".
    """

    def __init__(self, source: Callable[[], StatsSnapshot], *, interval: float = 1.0, max_points: int = 600,
                 alive: Callable[[], bool] | None = None, title: str = "", mode: str = "auto") -> None:
        if mode not in ("auto", "inline", "ipympl"):
            raise ValueError(f"mode must be 'auto', 'inline' or 'ipympl', got {mode!r}")
        self.source = source
        self.interval = interval
        self.alive = alive
        self.title = title
        self.mode = ("ipympl" if ipympl_active() else "inline") if mode == "auto" else mode
        self.samples: deque[Sample] = deque(maxlen=max_points)
        self.frames = 0
        self.task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()
        self._fig: Any = None
        self._lines: dict[str, Any] = {}
        self._handle: Any = None
        self._stopping = False
        self._ended = False  # ``alive()`` said the endpoint stopped: the last frame says so
        self.last: StatsSnapshot | None = None
        self.model_marks: list[tuple[float, str]] = []  # (seconds on this plot, the model switched to)
        self._mark_artists: list[Any] = []

    # -- data and drawing (kernel loop only) -------------------------------------------------------
    def sample(self) -> Sample:
        snap = self.source()
        self.last = snap
        s = Sample.of(time.monotonic() - self._t0, snap)
        self.samples.append(s)
        # a model switch, placed on this plot's clock (the recorder counts from its own start)
        self.model_marks = [(s.t - (snap.uptime_s - change.t), change.new) for change in snap.model_changes]
        return s

    @property
    def figure(self) -> Any:
        if self._fig is None:
            self._fig = self._make_figure()
        return self._fig

    def _make_figure(self) -> Any:
        if self.mode == "ipympl":
            import matplotlib.pyplot as plt

            with plt.ioff():
                fig = plt.figure(figsize=(10, 6))
        else:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            fig = Figure(figsize=(10, 6), dpi=80)
            FigureCanvasAgg(fig)
        axes = fig.subplots(2, 2, sharex=True)
        for i, ax in enumerate(axes.flat):
            ax.set_title(_TITLES[i], fontsize=10, y=1.0)  # (a fixed y: no title placement per redraw)
            ax.grid(alpha=0.3)
            for label, field, style in _SERIES[i]:
                (self._lines[field],) = ax.plot([], [], style, label=label, drawstyle="steps-post"
                                                if i < 2 else "default")
            ax.legend(loc="upper left", fontsize=8)
        for ax in axes[1]:
            ax.set_xlabel("seconds")
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        # laid out once: with a layout engine set (even tight_layout's placeholder) every savefig draws
        # the figure twice. Both savings halve a redraw's Python work (~290k -> ~115k calls), which is
        # what a redraw waits on while the engine thread holds the GIL
        fig.set_layout_engine(None)
        return fig

    def draw(self) -> None:
        """Update the lines from the samples (no new sample)."""
        fig = self.figure
        xs = [s.t for s in self.samples]
        for field, line in self._lines.items():
            ys = [getattr(s, field) for s in self.samples]
            line.set_data(xs, [float("nan") if y is None else y for y in ys])
        for ax in fig.axes:
            ys = [y for line in ax.get_lines() for y in line.get_ydata() if y == y]  # (NaN != NaN)
            ax.set_xlim(xs[0] if xs else 0, max(xs[-1] if xs else 1, (xs[0] if xs else 0) + 10))
            ax.set_ylim(0, max([1.0, *ys]) * 1.1)
        self._draw_model_marks(fig, xs[0] if xs else 0.0)
        s = self.last
        if s is not None:
            model = f"model {self.model_marks[-1][1]} · " if self.model_marks else ""
            fig.suptitle(header_text(s, f"{self.title} {model}".strip(), stopped=self._ended), fontsize=10)
        if self.mode == "ipympl":
            fig.canvas.draw_idle()
        self.frames += 1

    def _draw_model_marks(self, fig: Any, start: float) -> None:
        """A dotted line where the served model was switched, named on the first plot."""
        for artist in self._mark_artists:
            artist.remove()
        self._mark_artists = []
        for t, model in self.model_marks:
            if t < start:
                continue
            for ax in fig.axes:
                self._mark_artists.append(ax.axvline(t, color="grey", linestyle=":", linewidth=1))
            self._mark_artists.append(fig.axes[0].annotate(
                f"→ {model}", (t, 1.0), xycoords=("data", "axes fraction"), fontsize=8, color="grey",
                xytext=(2, -10), textcoords="offset points"))

    def refresh(self, *, force: bool = True) -> bool:
        """Take a sample, redraw, and update the displayed figure. With ``force=False`` (the
        timer) nothing is redrawn while the numbers stay the same: an idle dashboard costs nothing
        (an Agg redraw takes ~0.1 s of the kernel's thread). Returns whether it redrew."""
        previous = self.samples[-1] if self.samples else None
        current = self.sample()
        if not force and previous is not None and self.frames and \
                dataclasses.replace(previous, t=current.t) == current:
            return False
        self.draw()
        if self._handle is not None:
            self._handle.update(self._image())
        return True

    def render_png(self) -> bytes:
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        return buf.getvalue()

    def save_png(self, path: str | Path) -> Path:
        """Write the current figure as a PNG (a sample is taken first if there is none)."""
        if not self.samples:
            self.refresh()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.render_png())
        return path

    def _image(self) -> Any:
        from IPython.display import Image

        return Image(data=self.render_png(), format="png")

    # -- the timer ---------------------------------------------------------------------------------
    def start(self) -> Dashboard:
        """Start redrawing every ``interval`` on the running loop (no-op without one)."""
        loop = running_loop()
        if loop is not None and (self.task is None or self.task.done()):
            self._stopping = False
            self.task = loop.create_task(self._run())
        return self

    def stop(self) -> None:
        """Stop redrawing (the last frame stays)."""
        self._stopping = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = loop.time() + self.interval
        try:
            while not self._stopping:
                await asyncio.sleep(max(0.0, tick - loop.time()))
                self._ended = self.alive is not None and not self.alive()
                self.refresh(force=self._ended)
                if self._ended:
                    break
                tick = next_tick(tick, loop.time(), self.interval)
        except asyncio.CancelledError:
            pass

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self.refresh()
        if self.mode == "ipympl":
            display(self.figure.canvas)
        else:
            self._handle = display(self._image(), display_id=True)
        self.start()

    def __repr__(self) -> str:
        state = "live" if self.running else "stopped"
        return f"<Dashboard {state}, {len(self.samples)} samples, {self.frames} frames>"
