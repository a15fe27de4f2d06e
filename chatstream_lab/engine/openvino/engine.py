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
import json
import logging
import random
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...admission import AdmissionGate
from ...config import Limits, SamplingParams
from ...constraint import Constraint, ConstraintKind
from ...errors import ConfigError, InvalidParameter, ModelLoadError
from ...structured import check_constraint, portable_grammar_text
from ...types import FinishReason, LifecycleObserver, RequestId, TokenLogprob
from ..core.capabilities import Capabilities
from ..core.host import EngineHost, HostedGenerator, bind_to_model, check_gather_s
from ..core.lifecycle import RequestLifecycle
from ..core.rows import OutputRow, RowFactory
from ..core.stream import RequestStream
from ..core.validation import check_prompt, tokenizer_vocab_size

log = logging.getLogger(__name__)

_YIELD_S = 0.0005
NO_LOGPROBS = ("token log-probabilities and scoring need the weights' full distribution, which the "
               "OpenVINO backend does not report; load the model with backend='torch' for them")
# OpenVINO keeps earlier turns by content in its block-level prefix cache
CAPABILITIES = Capabilities(grammar=True, kv_reuse=True)

# SamplingParams fields mapped onto GenerationConfig. Any other field that is not at its default
# is refused with InvalidParameter naming it, so a parameter added later is never silently ignored.
MAPPED_FIELDS = frozenset({"max_new_tokens", "temperature", "top_k", "top_p", "min_p",
                           "repetition_penalty", "seed", "stop", "constraint"})


def _import_runtime() -> tuple[Any, Any]:
    try:
        import openvino as ov
        import openvino_genai as ov_genai
    except ImportError as exc:  # the optional dependency
        raise ModelLoadError('the OpenVINO backend needs pip install "chatstream-lab[openvino]" '
                             f"(openvino, openvino-genai): {exc}") from exc
    return ov, ov_genai


def check_supported(params: SamplingParams) -> None:
    """Refuse, naming it, a parameter that is not at its default and that OpenVINO cannot honour
    (pure Python: ``submit`` checks it without the runtime).

    Raises:
        InvalidParameter: the first such parameter (named in ``.name``).
    """
    defaults = type(params)()
    for f in dataclasses.fields(params):
        if f.name not in MAPPED_FIELDS and getattr(params, f.name) != getattr(defaults, f.name):
            raise InvalidParameter(f"the OpenVINO backend does not support {f.name!r}; use "
                                   "backend='torch' for it", name=f.name)


def generation_config(ov_genai: Any, params: SamplingParams, *, max_new_tokens: int,
                      stop_token_ids: Sequence[int]) -> Any:
    """SamplingParams -> a validated ``openvino_genai.GenerationConfig`` (made on the engine thread,
    which imported the runtime while it built the pipeline).

    Stop *strings* are not passed: our TextFilter applies them, so hold-back and replacements
    behave as on the torch path. Stop token ids are, so OpenVINO stops at once.

    Raises:
        InvalidParameter: a parameter OpenVINO cannot honour (named in ``.name``), or one its own
            check refuses.
    """
    check_supported(params)
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
    if params.constraint is not None:
        cfg.structured_output_config = structured_output_config(ov_genai, params.constraint)
    try:
        cfg.validate()
    except Exception as exc:  # a C++ check message
        raise InvalidParameter(f"OpenVINO refused the generation parameters: {exc}",
                               name="params") from exc
    return cfg


def structured_output_config(ov_genai: Any, constraint: Constraint) -> Any:
    """A constraint as OpenVINO GenAI's ``StructuredOutputConfig`` (its built-in xgrammar).

    Checked here first with our xgrammar (a bad schema is InvalidParameter, 400, before queueing).
    A JSON schema, JSON object or regex goes as our compact grammar in plain EBNF (the same one the
    torch engine applies: ``", "`` / ``": "`` separators, no free whitespace, which a small model
    would otherwise fill until ``max_tokens``); a structural tag (tool calls) as its JSON.
    """
    check_constraint(constraint)
    config = ov_genai.StructuredOutputConfig()
    if constraint.kind is ConstraintKind.STRUCTURAL_TAG:
        config.structural_tags_config = constraint.spec
    else:
        config.grammar = portable_grammar_text(constraint)
    return config


@dataclass(eq=False, kw_only=True)
class _Row(OutputRow):
    """One request: the shared output pipeline, plus OpenVINO's config and handle."""

    config: Any = None  # GenerationConfig, made and validated on the engine thread at admission
    handle: Any = None


class OpenVINOEngine(HostedGenerator):
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

    CAPABILITIES = CAPABILITIES

    def __init__(self, model: Any, *, num_of_concurrent_executions: int = 2, max_queue_size: int = 5,
                 observer: LifecycleObserver | None = None, gate: AdmissionGate[Any] | None = None,
                 cache_size_gb: int = 1, enable_prefix_caching: bool = True,
                 session_kv_budget_mb: float | None = None, threads: int | None = None,
                 gather_s: float = 0.01) -> None:
        if isinstance(cache_size_gb, bool) or not isinstance(cache_size_gb, int) or cache_size_gb < 1:
            raise ConfigError(f"cache_size_gb must be a whole number of GB >= 1, got {cache_size_gb!r}",
                              name="cache_size_gb")
        if not hasattr(getattr(model, "model", None), "ir_dir"):
            raise ConfigError("OpenVINOEngine needs a model loaded with load_model(backend='openvino')",
                              name="model")
        self.model = model
        bind_to_model(model, self)  # closing the model closes this engine
        self.gate: AdmissionGate[_Row] = gate if gate is not None else AdmissionGate(
            Limits(num_of_concurrent_executions, max_queue_size))
        self.lifecycle: RequestLifecycle[_Row] = RequestLifecycle(self.gate, observer)
        self.cache_size_gb = cache_size_gb
        # OpenVINO keeps a session's earlier turns by content in its block-level prefix cache (inside
        # cache_size_gb); the torch engine's per-session budget maps onto it: 0 turns reuse off
        self.enable_prefix_caching = enable_prefix_caching and session_kv_budget_mb != 0
        self.threads = threads
        self.gather_s = check_gather_s(gather_s)
        self._host: EngineHost[_Row] = EngineHost(self, self.lifecycle, backend="openvino",
                                                  label="the OpenVINO engine", thread_name="chatstream-openvino",
                                                  gather_s=self.gather_s)
        self._rows = RowFactory(model, on_first_token=self.lifecycle.first_token)
        self._vocab_size: int | None = None  # read from the IR's config.json on the first submit
        self._active: dict[RequestId, _Row] = {}  # engine thread only
        self._pipe: Any = None  # the ContinuousBatchingPipeline, built and stepped on the engine thread
        self._ov_ids = 0
        self._ov_genai: Any = None  # the openvino_genai module, openvino.Tensor and GenerationStatus,
        self._ov_tensor: Any = None  # imported by build() on the engine thread
        self._status: Any = None
        self.steps = 0

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def load_s(self) -> float | None:
        """How long reading and compiling the IR took (None until it is done)."""
        return self._host.build_s

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
            InvalidParameter: empty or too long prompt, an id outside the vocabulary, or a
                parameter OpenVINO cannot honour.
            EngineUnavailable: the engine failed (503).
        """
        params = params or SamplingParams()
        ids = check_prompt(prompt_ids, window=self._rows.window, vocab_size=self.vocab_size,
                           messages=messages, engine="the OpenVINO backend")
        check_supported(params)  # the runtime is imported by the engine's thread, not here
        self.start()
        self._host.check_can_serve()
        stream = RequestStream(self.lifecycle.new_id(), self._host.cancel)
        row = self._rows.new_row(_Row, stream, ids, params, self._rows.stops(params, stop_strings, stop_token_ids),
                                 output_replacements)
        self._host.enqueue(row)
        return stream

    @property
    def vocab_size(self) -> int | None:
        """Prompt ids must be below this: the exported model's ``vocab_size`` (its config.json),
        else the tokenizer's."""
        if self._vocab_size is None:
            try:
                config = json.loads((self.model.model.ir_dir / "config.json").read_text())
                self._vocab_size = int(config["vocab_size"])
            except (OSError, ValueError, KeyError, TypeError):
                self._vocab_size = tokenizer_vocab_size(self.model.tokenizer)
        return self._vocab_size

    def score(self, ids: Sequence[int], start: int, *, top: int = 0) -> Future[tuple[TokenLogprob, ...]]:
        """Not available: OpenVINO's pipeline gives no teacher-forced logprobs."""
        raise InvalidParameter(NO_LOGPROBS, name="logprobs")

    # -- engine thread (the host's Worker and Stepper) ------------------------------------
    def build(self) -> None:
        """Read and compile the IR into a ContinuousBatchingPipeline (seconds: on this thread)."""
        ov, ov_genai = _import_runtime()
        self._ov_genai = ov_genai
        self._ov_tensor, self._status = ov.Tensor, ov_genai.GenerationStatus  # once, not per step
        sc = ov_genai.SchedulerConfig()
        sc.cache_size = self.cache_size_gb
        sc.max_num_seqs = max(1, self.gate.limit)
        sc.enable_prefix_caching = self.enable_prefix_caching
        ovm = self.model.model
        props = ovm.compile_properties(self.threads)
        try:
            try:
                self._pipe = ov_genai.ContinuousBatchingPipeline(str(ovm.ir_dir), sc, "CPU", props)
            except RuntimeError:
                if "CACHE_DIR" not in props:
                    raise
                # the compiled-blob cache is an optimisation: another process writing the same blob
                # at the same time must not fail the build (seen with concurrent test runs)
                log.warning("OpenVINO failed with its blob cache; compiling without it", exc_info=True)
                props = {k: v for k, v in props.items() if k != "CACHE_DIR"}
                self._pipe = ov_genai.ContinuousBatchingPipeline(str(ovm.ir_dir), sc, "CPU", props)
        except Exception as exc:  # a C++ message: say what could not be loaded
            raise ModelLoadError(f"OpenVINO could not load {ovm.ir_dir}: {exc}") from exc
        self._warm_up()

    def _warm_up(self) -> None:
        """Generate two tokens of a chat-sized prompt: OpenVINO's first inference sets itself up
        lazily for the shapes it sees (measured: the first prefill of a 40-token prompt took
        1.3 s after the compile, 0.66 s after a 3-token warm-up, 0.25 s after a 40-token one;
        0.1 s later on), which belongs to the build, not to the first user's request."""
        ids = [int(i) for i in self.model.tokenizer.encode("Hello there. " * 20, add_special_tokens=False)] or [0]
        cfg = self._ov_genai.GenerationConfig()
        cfg.max_new_tokens = 2
        handle = self._pipe.add_request(0, self._ov_tensor(np.asarray([ids], dtype=np.int64)), cfg)
        while self._pipe.has_non_finished_requests():
            self._pipe.step()
        if handle.can_read():
            handle.read()

    def serve(self) -> None:
        self._host.run_steps(self)

    def has_work(self) -> bool:
        return bool(self._active) or bool(self._pipe is not None and self._pipe.has_non_finished_requests())

    def add(self, rows: list[_Row]) -> None:
        for row in rows:
            row.t_admit = time.perf_counter()
            self._active[row.id] = row
            try:
                row.config = generation_config(self._ov_genai, row.params, max_new_tokens=row.max_new,
                                               stop_token_ids=sorted(row.stops.ids))
                self._ov_ids += 1
                tensor = self._ov_tensor(np.asarray([row.prompt_ids], dtype=np.int64))
                row.handle = self._pipe.add_request(self._ov_ids, tensor, row.config)
            except Exception as exc:  # a bad prompt or configuration fails its own request only
                self._finish(row, FinishReason.ERROR, f"{type(exc).__name__}: {exc}")

    def cancel(self, ids: set[RequestId]) -> None:
        for rid in ids:
            row = self._active.get(rid)
            if row is not None:
                self._finish(row, FinishReason.CANCELLED)

    def between_steps(self) -> None:
        """Nothing runs between OpenVINO's steps."""

    def step(self) -> None:
        try:
            self._pipe.step()
        except Exception as exc:  # fail the running requests, keep serving
            log.exception("OpenVINO step failed")
            for row in list(self._active.values()):
                self._finish(row, FinishReason.ERROR, f"{type(exc).__name__}: {exc}")
            return
        self.steps += 1
        self._collect()
        # pipe.step() holds the GIL for the whole step (~25 ms here): without a pause, the
        # consumers of the deltas just pushed (the server's event loop) wait one more step
        time.sleep(_YIELD_S)

    def _collect(self) -> None:
        """Read each running handle's new ids and turn them into events."""
        status_enum = self._status
        for row in list(self._active.values()):
            h = row.handle
            length_stop = False
            if h.can_read():
                for out in h.read().values():  # one sequence per request (no n / beams)
                    for token in out.generated_ids:
                        row.take(int(token))
                        if row.finished is not None:
                            self._retire(row)
                            break
                    length_stop = getattr(out.finish_reason, "name", "") == "LENGTH"
            if row.finished is not None:
                continue
            status = h.get_status()
            if status == status_enum.RUNNING:
                continue
            if status == status_enum.FINISHED:  # OpenVINO ended it before our checks did
                row.flush()
                self._finish(row, FinishReason.LENGTH if length_stop else FinishReason.STOP)
            else:  # IGNORED / CANCEL without our asking: the scheduler dropped it (out of KV cache)
                self._finish(row, FinishReason.ERROR, f"OpenVINO dropped the request ({status}); "
                             "raise cache_size_gb or lower the concurrency limit")

    def _finish(self, row: _Row, reason: FinishReason, error: str | None = None) -> None:
        if row.finish(reason, error):
            self._retire(row)

    def _retire(self, row: _Row) -> None:
        """Cancel the handle if OpenVINO still runs it, free the slot, deliver the final event."""
        assert row.finished is not None
        if row.handle is not None:
            with contextlib.suppress(Exception):
                row.handle.cancel()  # freed by OpenVINO at the next step()
        self._active.pop(row.id, None)
        self.lifecycle.retire(row.stream, row.finished)

    def end_rows(self, reason: FinishReason, error: str | None) -> None:
        """Finish every admitted request (each exactly once), however the loop ended."""
        for row in list(self._active.values()):
            self._finish(row, reason, error)

    def release(self) -> None:
        """Let OpenVINO drop what was cancelled, then release the pipeline (on this thread)."""
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        with contextlib.suppress(Exception):
            for _ in range(10_000):
                if not pipe.has_non_finished_requests():
                    break
                pipe.step()
        del pipe


__all__ = ["CAPABILITIES", "MAPPED_FIELDS", "OpenVINOEngine", "check_supported", "generation_config"]
