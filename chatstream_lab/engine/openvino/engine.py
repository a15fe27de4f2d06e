"""A request-level engine on OpenVINO GenAI's continuous-batching pipeline (CPU).

:class:`OpenVINOEngine` is a :class:`~chatstream_lab.engine.core.protocol.Generator` like the torch
:class:`~chatstream_lab.engine.batching.engine.Engine`: ``submit`` -> ``RequestStream`` (``Queued* Delta*
Finished``, exactly one ``Finished``), ``QueueFull`` raised synchronously by the shared admission
gate, ``cancel()`` from any thread, every request through
:class:`~chatstream_lab.engine.core.lifecycle.RequestLifecycle`. The forward passes, the paged KV
cache (with OpenVINO's own prefix caching) and token selection run inside
``openvino_genai.ContinuousBatchingPipeline``.

What stays ours, the same code as the torch path:

* the prompt: token ids rendered by our templates (``add_request`` takes an ``ov.Tensor`` of
  ids; OpenVINO's tokenizer IR and chat template are never used), so the model sees exactly what
  ``inspect_prompt`` shows;
* the text: each step's new ids (``GenerationHandle.read()``) go through our
  :class:`~chatstream_lab.engine.core.detokenize.Detokenizer` (UTF-8-safe deltas) and
  :class:`~chatstream_lab.engine.core.textfilter.TextFilter` (stop strings held back across tokens,
  output replacements); stop token ids are also given to OpenVINO so it stops at once. When *we*
  stop a request, its handle is cancelled and OpenVINO frees its blocks at the next ``step()``.

What is OpenVINO's: token selection. Greedy is argmax; temperature, top-k + top-p, min-p,
repetition penalty and seed map onto ``GenerationConfig`` (per request; an unseeded request gets
a random seed, since OpenVINO's default is the same seed for everyone). Anything it cannot honour
raises :class:`~chatstream_lab.errors.InvalidParameter` naming the parameter at submit.

One thread owns the pipeline: it is built, stepped and destroyed on that thread only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...admission import AdmissionGate
from ...config import Limits, SamplingParams
from ...errors import ConfigError, EngineUnavailable, InvalidParameter, ModelLoadError
from ...stats import KVCacheStats
from ...types import Delta, Finished, FinishReason, LifecycleObserver, RequestId, TokenLogprob
from ..core.detokenize import Detokenizer, DetokenizerFactory, special_stop_ids
from ..core.lifecycle import RequestLifecycle, make_usage
from ..core.protocol import EngineHealth, EngineState
from ..core.stream import RequestStream
from ..core.textfilter import TextFilter

log = logging.getLogger(__name__)

_HEARTBEAT_S = 1.0
_IDLE_WAIT_S = 0.25
_YIELD_S = 0.0005
NO_LOGPROBS = ("token log-probabilities and scoring need the weights' full distribution, which the "
               "OpenVINO backend does not report; load the model with backend='torch' for them")

# SamplingParams fields mapped onto GenerationConfig. Any other field that is not at its default
# is refused with InvalidParameter naming it, so a parameter added later is never silently ignored.
MAPPED_FIELDS = frozenset({"max_new_tokens", "temperature", "top_k", "top_p", "min_p",
                           "repetition_penalty", "seed", "stop"})


def _import_runtime() -> tuple[Any, Any]:
    try:
        import openvino as ov
        import openvino_genai as ov_genai
    except ImportError as exc:  # the optional dependency
        raise ModelLoadError('the OpenVINO backend needs pip install "chatstream-lab[openvino]" '
                             f"(openvino, openvino-genai): {exc}") from exc
    return ov, ov_genai


def generation_config(ov_genai: Any, params: SamplingParams, *, max_new_tokens: int,
                      stop_token_ids: Sequence[int]) -> Any:
    """SamplingParams -> a validated ``openvino_genai.GenerationConfig``.

    Stop *strings* are not passed: our TextFilter applies them, so hold-back and replacements
    behave as on the torch path. Stop token ids are, so OpenVINO stops at once.

    Raises:
        InvalidParameter: a parameter OpenVINO cannot honour (named in ``.name``).
    """
    defaults = type(params)()
    for f in dataclasses.fields(params):
        if f.name not in MAPPED_FIELDS and getattr(params, f.name) != getattr(defaults, f.name):
            raise InvalidParameter(f"the OpenVINO backend does not support {f.name!r}; use "
                                   "backend='torch' for it", name=f.name)
    cfg = ov_genai.GenerationConfig()
    cfg.max_new_tokens = int(max_new_tokens)
    cfg.stop_token_ids = {int(t) for t in stop_token_ids}
    cfg.repetition_penalty = float(params.repetition_penalty)  # under greedy too, as ours
    if params.greedy:
        cfg.do_sample = False
    else:
        cfg.do_sample = True
        cfg.temperature = float(params.temperature)
        cfg.top_p = float(params.top_p)
        if params.top_k > 0:  # ours: 0 = off; OpenVINO's default top_k is "all"
            cfg.top_k = int(params.top_k)
        cfg.min_p = float(params.min_p)
        cfg.rng_seed = int(params.seed) if params.seed is not None else random.getrandbits(63)
    try:
        cfg.validate()
    except Exception as exc:  # a C++ check message
        raise InvalidParameter(f"OpenVINO refused the generation parameters: {exc}",
                               name="params") from exc
    return cfg


@dataclass(eq=False)
class _Row:
    """One request: our text state, plus OpenVINO's handle once admitted."""

    stream: RequestStream
    prompt_ids: list[int]
    config: Any  # GenerationConfig, built and validated in submit()
    max_new: int
    stop_ids: frozenset[int]
    detok: Detokenizer
    text_filter: TextFilter
    t_submit: float = field(default_factory=time.perf_counter)
    t_admit: float | None = None
    t_first: float | None = None
    handle: Any = None
    generated: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    finished: Finished | None = None

    @property
    def id(self) -> RequestId:
        return self.stream.id


class OpenVINOEngine:
    """Runs generation for many consumers on one thread that owns an OpenVINO pipeline.

    Args:
        model: a :class:`~chatstream_lab.models.LoadedModel` with ``backend="openvino"``
            (``load_model(backend="openvino")``): its ``model`` names the IR, its tokenizer is
            the HF one our templates and detokenizer use.
        num_of_concurrent_executions / max_queue_size: the limits of a gate made here when
            ``gate`` is not given.
        observer: lifecycle observer (the stats recorder).
        gate: the admission gate to share (the Service makes it).
        cache_size_gb: OpenVINO's KV cache (``SchedulerConfig.cache_size``, whole GB).
        enable_prefix_caching: OpenVINO's block-level prefix cache (a session's earlier turns and
            a shared system prompt are not prefilled again).
        session_kv_budget_mb: the torch engine's option, for the same configuration: 0 turns the
            prefix cache off; other values leave its size to ``cache_size_gb``.
        threads: inference threads (default: every core).
        gather_s: as the torch engine's: after idle, admit a burst that is still arriving before
            the first step (``8 * gather_s`` at most).
    """

    def __init__(self, model: Any, *, num_of_concurrent_executions: int = 2, max_queue_size: int = 5,
                 observer: LifecycleObserver | None = None, gate: AdmissionGate[Any] | None = None,
                 cache_size_gb: int = 1, enable_prefix_caching: bool = True,
                 session_kv_budget_mb: float | None = None, threads: int | None = None,
                 gather_s: float = 0.01) -> None:
        if isinstance(gather_s, bool) or not isinstance(gather_s, (int, float)) or not 0 <= gather_s <= 1:
            raise ConfigError(f"gather_s must be a number of seconds in [0, 1], got {gather_s!r}",
                              name="gather_s")
        if isinstance(cache_size_gb, bool) or not isinstance(cache_size_gb, int) or cache_size_gb < 1:
            raise ConfigError(f"cache_size_gb must be a whole number of GB >= 1, got {cache_size_gb!r}",
                              name="cache_size_gb")
        if not hasattr(getattr(model, "model", None), "ir_dir"):
            raise ConfigError("OpenVINOEngine needs a model loaded with load_model(backend='openvino')",
                              name="model")
        self.model = model
        self.gate: AdmissionGate[_Row] = gate if gate is not None else AdmissionGate(
            Limits(num_of_concurrent_executions, max_queue_size))
        self.lifecycle: RequestLifecycle[_Row] = RequestLifecycle(self.gate, observer)
        self.cache_size_gb = cache_size_gb
        # OpenVINO keeps a session's earlier turns by content in its block-level prefix cache (inside
        # cache_size_gb); the torch engine's per-session budget maps onto it: 0 turns reuse off
        self.enable_prefix_caching = enable_prefix_caching and session_kv_budget_mb != 0
        self.threads = threads
        self.gather_s = float(gather_s)
        self._detokenizers = DetokenizerFactory(model.tokenizer)
        self._lock = threading.Lock()
        self._cancelled: set[RequestId] = set()
        self._active: dict[RequestId, _Row] = {}  # engine thread only
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_error: BaseException | None = None
        self._crash: str | None = None
        self._ov_ids = 0
        self._ov_tensor: Any = None  # openvino.Tensor and GenerationStatus, set by _build_pipeline
        self._status: Any = None
        self.steps = 0
        self.load_s: float | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 300.0) -> OpenVINOEngine:
        """Start the thread and wait until it compiled the model (idempotent).

        Raises:
            ModelLoadError: OpenVINO could not read or compile the IR.
        """
        from ..batching.engine import EngineClosed

        with self._lock:
            if self._closing.is_set():
                raise EngineClosed("this engine was closed; create a new one")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chatstream-openvino", daemon=True)
                self._thread.start()
        if not self._ready.wait(timeout):
            raise ModelLoadError(f"OpenVINO did not load {self.model.model.ir_dir} within {timeout} s")
        if self._load_error is not None:
            raise ModelLoadError(f"OpenVINO could not load {self.model.model.ir_dir}: "
                                 f"{self._load_error}") from self._load_error
        return self

    def health(self) -> EngineHealth:
        name = "openvino"
        if self._closing.is_set():
            return EngineHealth(EngineState.CLOSED, name)
        if self._thread is None:
            return EngineHealth(EngineState.IDLE, name)
        if self._load_error is not None or not self._thread.is_alive():
            return EngineHealth(EngineState.FAILED, name, self._crash or "the OpenVINO engine stopped")
        return EngineHealth(EngineState.RUNNING, name)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every request, stop the thread (which releases the pipeline) and wait for it."""
        self._closing.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.lifecycle.fail_waiting(FinishReason.CANCELLED)

    def __enter__(self) -> OpenVINOEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
               stop_strings: Sequence[str] = (), output_replacements: Sequence[tuple[str, str]] = (),
               stop_token_ids: Sequence[int] = (), session_key: str | None = None,
               messages: Sequence[dict[str, str]] | None = None) -> RequestStream:
        """Queue a request; returns its stream at once (the contract of ``Engine.submit``).

        ``session_key`` needs nothing here: OpenVINO's prefix cache reuses a session's earlier
        blocks by content.

        Raises:
            QueueFull: every slot is busy and the queue is full.
            InvalidParameter: empty or too long prompt, or a parameter OpenVINO cannot honour.
            EngineUnavailable: the engine failed (503).
        """
        params = params or SamplingParams()
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise InvalidParameter("the prompt is empty" if not messages else
                                   "the OpenVINO backend takes rendered token ids, not messages",
                                   name="prompt" if not messages else "messages")
        window = int(self.model.context_window)
        if len(ids) >= window:
            raise InvalidParameter(f"the prompt has {len(ids)} tokens; the model's context window is "
                                   f"{window}. Shorten the conversation.", name="prompt")
        stops = tuple(dict.fromkeys(tuple(stop_strings) + params.stop))
        stop_ids = frozenset(self.model.stop_token_ids) | {int(t) for t in stop_token_ids} \
            | special_stop_ids(self.model.tokenizer, stops)
        max_new = max(1, min(params.max_new_tokens, window - len(ids)))
        _, ov_genai = _import_runtime()
        cfg = generation_config(ov_genai, params, max_new_tokens=max_new, stop_token_ids=sorted(stop_ids))
        self.start()
        if self._crash is not None or not self.running:
            raise EngineUnavailable(self._crash or "the OpenVINO engine stopped; restart the server")
        stream = RequestStream(self.lifecycle.new_id(), self._cancel)
        row = _Row(stream=stream, prompt_ids=ids, config=cfg, max_new=max_new, stop_ids=stop_ids,
                   detok=self._detokenizers(), text_filter=TextFilter(stops, tuple(output_replacements)))
        self.lifecycle.enqueue(row)
        if self._crash is not None or self._closing.is_set():  # lost the race with a crash or close
            self.lifecycle.fail_waiting(FinishReason.ERROR if self._crash else FinishReason.CANCELLED,
                                        self._crash and "the engine failed")
        self._wake.set()
        return stream

    def score(self, ids: Sequence[int], start: int, *, top: int = 0) -> Future[tuple[TokenLogprob, ...]]:
        """Not available: OpenVINO's pipeline gives no teacher-forced logprobs."""
        raise InvalidParameter(NO_LOGPROBS, name="logprobs")

    def forget(self, session_key: str) -> None:
        """Nothing to drop by session: OpenVINO's prefix cache is by content, evicted by its LRU."""

    def kv_cache_stats(self) -> KVCacheStats | None:
        return None

    def _cancel(self, rid: RequestId) -> None:
        if self.lifecycle.withdraw(rid):  # still queued: it never reaches OpenVINO
            return
        with self._lock:
            self._cancelled.add(rid)
        self._wake.set()

    # -- engine thread -------------------------------------------------------------------
    def _build_pipeline(self) -> Any:
        ov, ov_genai = _import_runtime()
        self._ov_tensor, self._status = ov.Tensor, ov_genai.GenerationStatus  # once, not per step
        sc = ov_genai.SchedulerConfig()
        sc.cache_size = self.cache_size_gb
        sc.max_num_seqs = max(1, self.gate.limit)
        sc.enable_prefix_caching = self.enable_prefix_caching
        ovm = self.model.model
        return ov_genai.ContinuousBatchingPipeline(str(ovm.ir_dir), sc, "CPU",
                                                   ovm.compile_properties(self.threads))

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            pipe = self._build_pipeline()
        except BaseException as exc:
            self._load_error = exc
            self._crash = f"OpenVINO could not load the model ({type(exc).__name__})"
            self._ready.set()
            self.lifecycle.fail_waiting(FinishReason.ERROR, "the engine failed")
            return
        self.load_s = time.perf_counter() - t0
        self._ready.set()
        try:
            self._loop(pipe)
        except BaseException as exc:  # never leave consumers hanging, whatever happened
            log.exception("OpenVINO engine thread crashed")
            self._crash = f"the OpenVINO engine crashed ({type(exc).__name__}); restart the server"
            self._end_everything(FinishReason.ERROR, "the engine failed")
        finally:
            self._end_everything(FinishReason.CANCELLED)
            with contextlib.suppress(Exception):
                for _ in range(10_000):  # let OpenVINO drop what we cancelled, then release it
                    if not pipe.has_non_finished_requests():
                        break
                    pipe.step()
            del pipe

    def _loop(self, pipe: Any) -> None:
        last_heartbeat = time.monotonic()
        while not self._closing.is_set():
            self._wake.clear()
            before = self.gate.snapshot().waiting
            woke_idle = not self._active
            self._admit(pipe)
            self._apply_cancels()
            now = time.monotonic()
            if self.gate.snapshot().waiting != before or now - last_heartbeat >= _HEARTBEAT_S:
                self.lifecycle.announce_positions()
                last_heartbeat = now
            if not self._active and not pipe.has_non_finished_requests():
                self._wake.wait(_IDLE_WAIT_S)
                continue
            if woke_idle and self._active:
                self._gather_burst(pipe)
            try:
                pipe.step()
            except Exception as exc:  # fail the running requests, keep serving
                log.exception("OpenVINO step failed")
                for row in list(self._active.values()):
                    self._finish(row, FinishReason.ERROR, f"{type(exc).__name__}: {exc}")
                continue
            self.steps += 1
            self._collect()
            # pipe.step() holds the GIL for the whole step (~25 ms here): without a pause, the
            # consumers of the deltas just pushed (the server's event loop) wait one more step
            time.sleep(_YIELD_S)

    def _admit(self, pipe: Any) -> None:
        for row in self.lifecycle.admit():
            row.t_admit = time.perf_counter()
            self._active[row.id] = row
            try:
                self._ov_ids += 1
                tensor = self._ov_tensor(np.asarray([row.prompt_ids], dtype=np.int64))
                row.handle = pipe.add_request(self._ov_ids, tensor, row.config)
            except Exception as exc:  # a bad prompt fails its own request only
                self._finish(row, FinishReason.ERROR, f"{type(exc).__name__}: {exc}")

    def _gather_burst(self, pipe: Any) -> None:
        """After idle, admit the rest of a burst still arriving (see ``Engine._gather_burst``)."""
        if self.gather_s <= 0:
            return
        deadline = time.monotonic() + 8 * self.gather_s
        while not self._closing.is_set() and self.gate.snapshot().running < self.gate.limit:
            left = deadline - time.monotonic()
            self._wake.clear()
            if left <= 0 or not self._wake.wait(min(self.gather_s, left)):
                return
            self._admit(pipe)

    def _apply_cancels(self) -> None:
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
        for rid in cancelled:
            row = self._active.get(rid)
            if row is not None:
                self._finish(row, FinishReason.CANCELLED)

    def _collect(self) -> None:
        """Read each running handle's new ids and turn them into events."""
        status_enum = self._status
        for row in list(self._active.values()):
            h = row.handle
            length_stop = False
            if h.can_read():
                for out in h.read().values():  # one sequence per request (no n / beams)
                    for token in out.generated_ids:
                        self._take(row, int(token))
                        if row.finished is not None:
                            break
                    length_stop = getattr(out.finish_reason, "name", "") == "LENGTH"
            if row.finished is not None:
                continue
            status = h.get_status()
            if status == status_enum.RUNNING:
                continue
            if status == status_enum.FINISHED:  # OpenVINO ended it before our checks did
                self._flush(row)
                self._finish(row, FinishReason.LENGTH if length_stop else FinishReason.STOP)
            else:  # IGNORED / CANCEL without our asking: the scheduler dropped it (out of KV cache)
                self._finish(row, FinishReason.ERROR, f"OpenVINO dropped the request ({status}); "
                             "raise cache_size_gb or lower the concurrency limit")

    def _take(self, row: _Row, token: int) -> None:
        """Detokenize, filter and emit one token (the torch decoder's ``_take`` after sampling)."""
        row.generated.append(token)
        if row.t_first is None:
            row.t_first = time.perf_counter()
            self.lifecycle.first_token(row.id)
        if token in row.stop_ids:
            self._flush(row)
            self._finish(row, FinishReason.STOP)
            return
        result = row.text_filter.push(row.detok.add(token))
        if result.text:
            row.parts.append(result.text)
        row.stream._push(Delta(row.id, result.text, (token,)))
        if result.stopped:
            self._finish(row, FinishReason.STOP)
        elif len(row.generated) >= row.max_new:
            self._flush(row)
            self._finish(row, FinishReason.LENGTH)

    def _flush(self, row: _Row) -> None:
        tail = row.text_filter.push(row.detok.finalize(), final=True).text
        if tail:
            row.parts.append(tail)
            row.stream._push(Delta(row.id, tail, ()))

    def _finish(self, row: _Row, reason: FinishReason, error: str | None = None) -> None:
        """The final event of a row: cancel its handle if OpenVINO still runs it, free the slot."""
        if row.finished is not None:
            return
        usage = make_usage(len(row.prompt_ids), len(row.generated), t_submit=row.t_submit,
                           t_admit=row.t_admit, t_first=row.t_first)
        row.finished = Finished(row.id, reason, "".join(row.parts), usage, error)
        if row.handle is not None:
            with contextlib.suppress(Exception):
                row.handle.cancel()  # freed by OpenVINO at the next step()
        self._active.pop(row.id, None)
        self.lifecycle.retire(row.stream, row.finished)

    def _end_everything(self, reason: FinishReason, error: str | None = None) -> None:
        """Finish every admitted and queued request (each exactly once), however the loop ended."""
        for row in list(self._active.values()):
            self._finish(row, reason, error)
        self.lifecycle.fail_waiting(reason, error)


__all__ = ["MAPPED_FIELDS", "OpenVINOEngine", "generation_config"]
