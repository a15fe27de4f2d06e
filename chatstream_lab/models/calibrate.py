"""Choose the fastest correct precision for this machine, once per model and CPU signature.

Which precision is fastest depends on the CPU (int8 weights won on an AVX-512 host without AMX,
fp16 on a host with AMX; bf16 compute exists only on some), and low precisions can change the
greedy reply. So the first time a model is served on the OpenVINO backend (or on
``load_model(precision="auto")`` / ``--precision auto``) :func:`resolve_precision`:

1. exports the candidate IRs (:class:`CalibrationPlan`: fp16, int8 asymmetric per channel, int4;
   each once per model, cached) and computes the torch fp32 gate reference (once per model);
2. runs every candidate precision (each weight format x each compute precision the CPU offers)
   through the correctness gate (:mod:`.gate`);
3. times the candidates that pass: one stream and ``streams`` streams of ``new_tokens`` greedy
   tokens each, interleaved over ``rounds`` rounds within one window (so load from other work hits
   them alike), medians;
4. keeps the one with the best geometric mean of its two speeds, each relative to the best
   candidate's (one stream is what a researcher feels in a preview; 16 streams what a demo gets);
5. caches the choice under the CPU signature (:mod:`.cpu`), with the measurements and load average.

It runs in the calling process on OpenVINO's own pipeline API (no server, no engine), with a
progress bar naming what is being measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from statistics import median
from typing import Any, ClassVar

from ..errors import ModelLoadError
from .cpu import CpuSignature, current_signature
from .gate import GATE_PROMPTS, NEAR_TIE_NATS, REPLY_TOKENS, TOP_K, Reference, build_reference, judge
from .precision import CandidateResult, ChoiceSource, Compute, GateResult, Precision, PrecisionChoice, Weights
from .precision_cache import PrecisionCache

log = logging.getLogger(__name__)

FALLBACK = Precision(Weights.FLOAT32, Compute.F32)  # agrees with torch by construction


@dataclass(frozen=True)
class CalibrationPlan:
    """What calibration measures. ``computes=None``: f32, plus bf16 where the CPU has it."""

    weights: tuple[Weights, ...] = (Weights.FLOAT16, Weights.INT8, Weights.INT4)
    computes: tuple[Compute, ...] | None = None
    rounds: int = 3
    new_tokens: int = 64
    streams: int = 16
    VERSION: ClassVar[int] = 1  # bump when the measurement or the choice rule changes: caches re-measure

    @property
    def key(self) -> str:
        fields = {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}
        blob = json.dumps({**fields, "version": self.VERSION, "gate": gate_id()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CalibrationTarget:
    """The model to calibrate: its HF directory (what the exporter and the reference read), the
    key its IRs are cached under, its tokenizer and stop ids."""

    name: str
    hf_dir: Path
    source_key: str
    cache_dir: Path
    tokenizer: Any
    stop_ids: tuple[int, ...]

    @property
    def cache(self) -> PrecisionCache:
        return PrecisionCache(self.cache_dir / "openvino", self.source_key)


def gate_id() -> str:
    """Names the gate (prompts, reply length, rule): a cached reference is for one gate only."""
    blob = json.dumps([GATE_PROMPTS, REPLY_TOKENS, TOP_K, round(NEAR_TIE_NATS, 6)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve_precision(target: CalibrationTarget, *, recalibrate: bool = False, plan: CalibrationPlan | None = None,
                      signature: CpuSignature | None = None, cache: PrecisionCache | None = None,
                      progress: bool = True) -> PrecisionChoice:
    """The cached choice for this model and CPU signature, or a fresh calibration (then cached).

    ``recalibrate`` measures again even when a choice is cached (``--precision auto``). ``cache``:
    where choices are kept (default: next to the model's IRs; the gate reference always is).
    """
    plan = plan or CalibrationPlan()
    signature = signature or current_signature()
    cache = cache or target.cache
    key = f"{signature.key}-{plan.key}"
    with cache.locked():  # a second process waits here, then finds the first one's choice
        cached = None if recalibrate else cache.choice(key)
        if cached is not None:
            return cached.with_source(ChoiceSource.CACHED)
        choice = calibrate(target, plan, signature, progress=progress)
        cache.store_choice(key, choice)
    log.info("precision of %s on this CPU: %s", target.name, choice.label)
    return choice


def calibrate(target: CalibrationTarget, plan: CalibrationPlan, signature: CpuSignature, *,
              progress: bool = True) -> PrecisionChoice:
    """Export, gate, time and choose (see the module doc); does not touch the choice cache."""
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    computes = plan.computes or available_computes()
    candidates = [Precision(w, c) for w in plan.weights for c in computes]
    steps = len(plan.weights) + 1 + len(candidates) + plan.rounds * len(candidates)
    with _Progress(steps, f"Choosing a precision for {target.name}", progress) as bar:
        irs, failed = _export_candidates(target, plan.weights, bar)
        results = {p: CandidateResult(p, error=failed[p.weights]) for p in candidates if p.weights in failed}
        with bar.step("greedy reference: torch fp32 (once per model)"):
            reference = load_reference(target)
        pipes: dict[Precision, Any] = {}
        try:
            for p in candidates:
                if p not in results:
                    with bar.step(f"correctness gate: {p}"):
                        results[p] = _gate_candidate(irs[p.weights], p, reference, plan, pipes)
                else:
                    bar.skip(1)
            bar.skip(plan.rounds * (len(candidates) - len(pipes)))  # only those that passed are timed
            for p, (one, batch) in _time_candidates(pipes, reference, plan, bar).items():
                results[p] = dataclasses.replace(results[p], one_stream_tok_s=median(one), batch_tok_s=median(batch),
                                                 one_stream_runs=tuple(one), batch_runs=tuple(batch))
        finally:
            pipes.clear()
            gc.collect()
        ordered = tuple(results[p] for p in candidates)
        winner = choose(ordered)
        load_after = os.getloadavg()[0]
        choice = PrecisionChoice(
            winner.precision if winner is not None else FALLBACK, ChoiceSource.CALIBRATED, ordered,
            signature.as_dict(), datetime.now(timezone.utc).isoformat(timespec="seconds"),
            (round(load_before, 2), round(load_after, 2)), time.monotonic() - t0,
            _note(winner, load_before, signature.cores))
        choice = PrecisionChoice.from_dict(choice.as_dict())  # in the cached form (rounded), so both compare equal
        bar.done(f"Precision for {target.name}: {choice.label}")
    for r in ordered:
        log.info("calibration %s: %s", target.name, r.summary)
    if choice.note:
        log.warning("calibration of %s: %s", target.name, choice.note)
    return choice


def _export_candidates(target: CalibrationTarget, weights: Sequence[Weights],
                       bar: _Progress) -> tuple[dict[Weights, Path], dict[Weights, str]]:
    """The IR of each weight format (exported once per model); the formats that failed, and why."""
    from . import openvino as ov

    irs: dict[Weights, Path] = {}
    failed: dict[Weights, str] = {}
    for w in weights:
        with bar.step(f"exporting the {w} IR (once per model)"):
            try:
                irs[w] = ov.export_ir(target.hf_dir, w, ov.ir_dir_for(target.source_key, w, target.cache_dir),
                                      cache_dir=target.cache_dir, progress=False, label=target.name)
            except ModelLoadError as exc:  # e.g. an architecture NNCF cannot compress to int4
                log.warning("calibration: no %s IR for %s: %s", w, target.name, exc)
                failed[w] = f"export failed: {_first_line(exc)}"
    return irs, failed


def _gate_candidate(ir_dir: Path, precision: Precision, reference: Reference, plan: CalibrationPlan,
                    pipes: dict[Precision, Any]) -> CandidateResult:
    """Gate one candidate; one that passes keeps its pipeline in ``pipes`` for timing."""
    try:
        pipe = _pipeline(ir_dir, precision, plan.streams)
        gate = run_gate(pipe, reference)
    except Exception as exc:  # a precision this CPU or runtime cannot compile or run
        return CandidateResult(precision, error=f"{type(exc).__name__}: {_first_line(exc)}")
    if gate.passed:
        pipes[precision] = pipe
    return CandidateResult(precision, gate=gate)


def _note(winner: CandidateResult | None, load_before: float, cores: int) -> str:
    """What the choice should carry a warning about. ``load_before``: the 1-min load average when
    calibration started (afterwards it includes calibration's own threads); above half the cores,
    other work shared the cores and the ranking may not be an idle machine's."""
    notes = [] if winner is not None else [f"no candidate passed the gate: {FALLBACK} (agrees with torch)"]
    if load_before > cores / 2:
        notes.append(f"measured under load {load_before:.1f} on {cores} cores; --precision auto measures again")
    return "; ".join(notes)


def choose(results: Sequence[CandidateResult]) -> CandidateResult | None:
    """The eligible candidate (gate passed, timed) with the best geometric mean of its one-stream
    and batch speeds, each relative to the best eligible candidate's; None if none is eligible.
    Ties go to the earlier candidate."""
    eligible = [r for r in results if r.eligible]
    if not eligible:
        return None
    best_one = max(r.one_stream_tok_s or 0.0 for r in eligible) or 1.0
    best_batch = max(r.batch_tok_s or 0.0 for r in eligible) or 1.0

    def score(r: CandidateResult) -> float:
        return ((r.one_stream_tok_s or 0.0) / best_one * (r.batch_tok_s or 0.0) / best_batch) ** 0.5

    return max(eligible, key=score)


def available_computes() -> tuple[Compute, ...]:
    """f32, plus bf16 where OpenVINO's CPU plugin reports it (elsewhere a bf16 hint runs in f32)."""
    import openvino as ov

    try:
        caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # an old runtime without the property: f32 is always there
        caps = set()
    return (Compute.F32, Compute.BF16) if "BF16" in caps else (Compute.F32,)


def check_precision(ir_dir: Path, precision: Precision, reference: Reference) -> GateResult:
    """The correctness gate for one IR in one precision (compiles it, replies, judges)."""
    pipe = _pipeline(ir_dir, precision, len(reference.prompts))
    try:
        return run_gate(pipe, reference)
    finally:
        del pipe


def load_reference(target: CalibrationTarget) -> Reference:
    """The torch fp32 gate reference of ``target``: cached next to its IRs, computed once (~10-30 s)."""
    cache = target.cache
    gid = gate_id()
    reference = cache.reference(gid)
    if reference is None or tuple(reference.stop_ids) != tuple(target.stop_ids):
        reference = build_reference(target.hf_dir, target.tokenizer, target.stop_ids)
        cache.store_reference(gid, reference)
        gc.collect()
    return reference


def _pipeline(ir_dir: Path, precision: Precision, streams: int) -> Any:
    """The pipeline the engine would build for this precision (same compile properties)."""
    import openvino_genai as ov_genai

    from .openvino import OpenVINOModel

    sc = ov_genai.SchedulerConfig()
    sc.cache_size = 1
    sc.max_num_seqs = max(streams, len(GATE_PROMPTS))
    sc.enable_prefix_caching = False  # every timed run pays its prefill, as the first one does
    return ov_genai.ContinuousBatchingPipeline(str(ir_dir), sc, "CPU",
                                               OpenVINOModel(ir_dir, precision).compile_properties())


def _generate(pipe: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, stop_ids: Sequence[int],
              ignore_eos: bool = False) -> tuple[list[list[int]], float]:
    """Greedy replies (ids) to ``prompts`` submitted together, and the wall time."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    cfg = ov_genai.GenerationConfig()
    cfg.max_new_tokens, cfg.do_sample, cfg.ignore_eos = max_new_tokens, False, ignore_eos
    cfg.stop_token_ids = {int(t) for t in stop_ids}
    tensors = [ov.Tensor(np.asarray([list(p)], dtype=np.int64)) for p in prompts]
    t0 = time.perf_counter()
    results = pipe.generate(tensors, [cfg] * len(tensors))
    wall = time.perf_counter() - t0
    return [[int(t) for t in r.m_generation_ids[0]] for r in results], wall


# -- measuring ------------------------------------------------------------------------------
def run_gate(pipe: Any, reference: Reference) -> GateResult:
    """The candidate's greedy replies to the gate prompts (batched, and the first alone), judged."""
    n, stops = reference.reply_tokens, reference.stop_ids
    batched, _ = _generate(pipe, reference.prompt_ids, max_new_tokens=n, stop_ids=stops)  # together, as under load
    alone, _ = _generate(pipe, reference.prompt_ids[:1], max_new_tokens=n, stop_ids=stops)  # alone, as in a preview
    return judge(reference, batched, alone[0])


def _time_candidates(pipes: dict[Precision, Any], reference: Reference, plan: CalibrationPlan,
                     bar: _Progress) -> dict[Precision, tuple[list[float], list[float]]]:
    """tok/s of one stream and of ``plan.streams`` streams per candidate, interleaved by round."""
    runs: dict[Precision, tuple[list[float], list[float]]] = {p: ([], []) for p in pipes}
    order = list(pipes)
    prompts = [reference.prompt_ids[i % len(reference.prompt_ids)] for i in range(plan.streams)]
    for r in range(plan.rounds if order else 0):
        shift = r % len(order)  # each round starts with another candidate
        for p in order[shift:] + order[:shift]:
            with bar.step(f"timing {p}: 1 and {plan.streams} streams (round {r + 1}/{plan.rounds})"):
                for i, batch in enumerate((prompts[:1], prompts)):
                    outs, wall = _generate(pipes[p], batch, max_new_tokens=plan.new_tokens,
                                           stop_ids=reference.stop_ids, ignore_eos=True)
                    runs[p][i].append(sum(map(len, outs)) / wall)
    return runs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class _Progress:
    """A tqdm bar of ``total`` steps whose description says what is being measured; it redraws
    every second (an export runs a minute with no step done), and goes quiet when disabled."""

    def __init__(self, total: int, title: str, enabled: bool) -> None:
        self.total, self.title, self.enabled = total, title, enabled
        self._bar: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.title, unit="step")
            self._ticker = threading.Thread(target=self._tick, name="calibration-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.close()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                self._bar.refresh()

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        if self._bar is not None:
            self._bar.set_description(f"{self.title}: {what}")
        try:
            yield
        finally:
            if self._bar is not None:
                self._bar.update(1)

    def skip(self, n: int) -> None:
        if self._bar is not None and n > 0:
            self._bar.update(n)

    def done(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description(text)
            self._bar.update(self.total - self._bar.n)
