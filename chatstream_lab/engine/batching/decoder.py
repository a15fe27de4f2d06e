"""The generation core: rows in, events out, one batched forward per step.

``BatchDecoder.step()`` reads top to bottom as the phases of one engine step:

1. cancel   - rows whose consumer left are retired (finish reason ``cancelled``)
2. prefill  - one chunk of the oldest pending prompt (the whole prompt if nothing is decoding,
              so a single stream never waits); a finished prompt samples its first token and
              joins the batch
3. decode   - ONE forward for every joined row, then per-row sampling
4. retire   - rows that hit EOS / a stop string / max_new_tokens / an error leave the batch
              (a session's row first hands its KV to the backend, for the session's next turn)

The decoder has no thread and no lock: the engine thread drives it for servers, and
``stream()`` drives it inline for a single request. It knows nothing of HTTP or sessions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...config import SamplingParams
from ...types import FinishReason, RequestId, TokenLogprob, TopLogprob
from ..core.detokenize import TokenPieces
from ..core.protocol import StepBackend
from ..core.rows import OutputRow, RowFactory
from ..core.stream import RequestStream
from .sampling import make_generator, sample_token

log = logging.getLogger(__name__)


@dataclass(eq=False, kw_only=True)
class Row(OutputRow):
    """One request inside the decoder: the shared output pipeline plus its sampling state."""

    generator: torch.Generator | None = None
    session_key: str | None = None  # the backend keeps this row's KV for the session's next turn
    prefill: Any = None  # the backend's handle while the prompt is on its way in
    _seen: torch.Tensor | None = None

    def seen(self) -> torch.Tensor:
        """Ids the repetition penalty looks at (prompt + reply, as HF does)."""
        if self._seen is None:
            self._seen = torch.tensor(self.prompt_ids + self.generated, dtype=torch.long)
        return self._seen

    def record(self, token: int) -> None:
        super().record(token)
        if self._seen is not None:
            self._seen = torch.cat([self._seen, torch.tensor([token])])


RetireFn = Callable[[Row], None]


def new_row(rows: RowFactory, stream: RequestStream, prompt_ids: Sequence[int], params: SamplingParams,
            stop_strings: Sequence[str] = (), output_replacements: Sequence[tuple[str, str]] = (),
            stop_token_ids: Sequence[int] = (), session_key: str | None = None) -> Row:
    """A request's row: the shared output pipeline, plus its own sampling generator."""
    return rows.new_row(Row, stream, prompt_ids, params, rows.stops(params, stop_strings, stop_token_ids),
                        output_replacements, generator=None if params.greedy else make_generator(params.seed),
                        session_key=session_key)
_NO_IDS = torch.tensor([], dtype=torch.long)


@dataclass(frozen=True, slots=True)
class RowLogprobs:
    """One row's raw log-probabilities and its top-K (computed only for rows that asked)."""

    logprobs: torch.Tensor  # [V], log_softmax of the raw logits
    top_ids: list[int]
    top_values: list[float]


def logprob_rows(params: Sequence[SamplingParams], logits: torch.Tensor) -> list[RowLogprobs | None]:
    """``log_softmax`` + ``topk`` over the batched logits [N, V], for the rows that asked only.

    Rows with ``logprobs=None`` cost nothing; the others share one ``log_softmax`` and one
    ``topk`` (at the largest K asked), so the work per step is bounded by the rows that asked.
    """
    out: list[RowLogprobs | None] = [None] * len(params)
    asked = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not asked:
        return out
    sub = logits if len(asked) == len(params) else logits.index_select(
        0, torch.tensor(asked, dtype=torch.long, device=logits.device))
    lp = torch.log_softmax(sub.float(), dim=-1)
    k = max(int(params[i].logprobs or 0) for i in asked)
    ids: list[list[int]] = [[] for _ in asked]
    values: list[list[float]] = [[] for _ in asked]
    if k:
        top = torch.topk(lp, min(k, lp.shape[-1]), dim=-1)
        ids, values = top.indices.tolist(), top.values.tolist()
    for j, i in enumerate(asked):
        kk = int(params[i].logprobs or 0)
        out[i] = RowLogprobs(lp[j], ids[j][:kk], values[j][:kk])
    return out


def token_logprob(pieces: TokenPieces, token: int, row_lp: RowLogprobs) -> TokenLogprob:
    """The chosen ``token`` with its logprob and the row's top-K alternatives."""
    text, raw = pieces(token)
    top = tuple(TopLogprob(tid, pieces(tid)[0], value, pieces(tid)[1])
                for tid, value in zip(row_lp.top_ids, row_lp.top_values))
    return TokenLogprob(token, text, float(row_lp.logprobs[token]), top, raw)


class BatchDecoder:
    """Drives a step-level backend over the rows; ``step()`` advances every row by at most one token.

    Args:
        loaded: the model (tokenizer, stop token ids, context window).
        backend: the :class:`~chatstream_lab.engine.core.protocol.StepBackend` that runs the forwards.
        on_retire: called once per row when it leaves (the engine frees the slot there).
        on_first_token: called when a row samples its first token (time to first token).
        prefill_chunk: prompt tokens prefilled per step while other rows decode.
        rows: the row factory to share (default: one made here for ``loaded``).
    """

    def __init__(self, loaded: Any, backend: StepBackend[Any], *, on_retire: RetireFn,
                 on_first_token: Callable[[RequestId], None] | None = None, prefill_chunk: int = 256,
                 rows: RowFactory | None = None) -> None:
        self.loaded = loaded
        self.backend = backend
        self.rows = rows if rows is not None else RowFactory(loaded, on_first_token=on_first_token)
        self.pieces = self.rows.pieces()
        self._on_retire = on_retire
        self.prefill_chunk = prefill_chunk
        self.pending: list[Row] = []  # admitted, prompt not yet in the batch
        self.active: dict[RequestId, Row] = {}  # joined rows
        self._last_token: dict[RequestId, int] = {}

    # -- building rows -------------------------------------------------------------------
    def make_row(self, stream: RequestStream, prompt_ids: Sequence[int], params: SamplingParams,
                 stop_strings: Sequence[str] = (), output_replacements: Sequence[tuple[str, str]] = (),
                 stop_token_ids: Sequence[int] = (), session_key: str | None = None) -> Row:
        return new_row(self.rows, stream, prompt_ids, params, stop_strings, output_replacements,
                       stop_token_ids, session_key)

    # -- the step ------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.pending or self.active)

    def add(self, row: Row) -> None:
        row.t_admit = time.perf_counter()
        self.pending.append(row)

    def cancel(self, request_ids: set[RequestId]) -> None:
        """Phase 1: retire the given rows now (those not in the decoder are ignored)."""
        for row in [r for r in self.pending if r.id in request_ids]:
            self.pending.remove(row)
            self._finish(row, FinishReason.CANCELLED)
        gone = {rid for rid in request_ids if rid in self.active}
        for rid in gone:
            self._finish(self.active[rid], FinishReason.CANCELLED)
        self._retire()

    def step(self) -> None:
        self._prefill_phase()
        self._decode_phase()
        self._retire()

    def _prefill_phase(self) -> None:
        """Prefill what fits this step: a group of waiting prompts in one padded forward, or one
        chunk of a long prompt. While rows decode, at most ``prefill_chunk`` padded tokens run
        per step, so arrivals never stall the running streams for long."""
        if not self.pending:
            return
        group = self._next_group()
        if len(group) > 1:
            self._prefill_group(group)
            return
        row = self.pending[0]
        budget = self.prefill_chunk if self.active else len(row.prompt_ids)
        try:
            if row.prefill is None:
                row.prefill = self.backend.start(row.prompt_ids, row.session_key)
            logits = self.backend.prefill(row.prefill, budget)
        except Exception as exc:  # a bad prompt fails its own request only
            self.pending.pop(0)
            self._fail(row, exc)
            return
        if logits is None:
            return
        self.pending.pop(0)
        self._take(row, logits)
        if row.finished is None:
            self.backend.join(row.id, row.prefill)
            self.active[row.id] = row
        row.prefill = None

    def _next_group(self) -> list[Row]:
        """The oldest waiting prompts whose padded size fits the step's prefill budget.

        A prompt that starts from its session's kept KV goes in alone (it runs only its suffix).
        """
        budget = self.prefill_chunk if self.active else self.prefill_chunk * 8
        group: list[Row] = []
        longest = 0
        for row in self.pending:
            if row.prefill is not None:  # a chunked prefill is under way: finish it first
                break
            if self.backend.reusable(row.session_key, row.prompt_ids):
                return group or [row]
            longest = max(longest, len(row.prompt_ids))
            if group and longest * (len(group) + 1) > budget:
                break
            group.append(row)
        return group

    def _prefill_group(self, group: list[Row]) -> None:
        del self.pending[:len(group)]
        try:
            pf, logits = self.backend.prefill_group([r.prompt_ids for r in group])
        except Exception as exc:
            for row in group:
                self._fail(row, exc)
            return
        lps = logprob_rows([r.params for r in group], logits)
        for row, row_logits, lp in zip(group, logits, lps):
            self._take(row, row_logits, lp)
        keep = [i for i, row in enumerate(group) if row.finished is None]
        if keep:
            self.backend.join([group[i].id for i in keep], pf, keep)
            for i in keep:
                self.active[group[i].id] = group[i]

    def _decode_phase(self) -> None:
        rows = [self.active[k] for k in self.backend.rows if k in self.active]  # type: ignore[index]
        rows = [r for r in rows if r.finished is None]
        if not rows:
            return
        try:
            logits = self.backend.decode([self._last_token[r.id] for r in rows])
        except Exception as exc:  # a failed forward poisons the shared cache: fail the batch
            log.exception("decode step failed")
            self.backend.reset()
            for row in rows:
                self._release_session(row)
                self._fail(row, exc)
                del self.active[row.id]
                self._last_token.pop(row.id, None)
                self._on_retire(row)
            return
        lps = logprob_rows([r.params for r in rows], logits)
        for row, row_logits, lp in zip(rows, logits, lps):
            self._take(row, row_logits, lp)

    def _take(self, row: Row, logits: torch.Tensor, lp: RowLogprobs | None = None) -> None:
        """Sample one token of ``row`` and hand it (with its logprobs if asked) to the row's output
        pipeline, which detokenizes, filters, emits and ends the row when due."""
        if lp is None and row.params.logprobs is not None:
            lp = logprob_rows([row.params], logits.unsqueeze(0))[0]
        # the ids seen so far matter only to the repetition penalty: build them only then
        seen = row.seen() if row.params.repetition_penalty != 1.0 else _NO_IDS
        try:
            token = sample_token(logits, row.params, seen, row.generator)
        except Exception as exc:
            self._fail(row, exc)
            return
        self._last_token[row.id] = token
        row.take(token, None if lp is None else token_logprob(self.pieces, token, lp))
        if row.finished is not None:
            self._finished(row)

    def _fail(self, row: Row, exc: BaseException) -> None:
        if row.fail(exc):
            self._finished(row)

    def _finish(self, row: Row, reason: FinishReason, error: str | None = None) -> None:
        if row.finish(reason, error):
            self._finished(row)

    def _finished(self, row: Row) -> None:
        if row.id not in self.active:  # never joined (pending / failed prefill): retire now
            self._release_session(row)
            self._on_retire(row)

    def _release_session(self, row: Row) -> None:
        if row.session_key is not None:
            self.backend.keep(row.id, row.session_key, None)

    def _keep_session(self, row: Row) -> None:
        """Hand a leaving row's KV to the backend for its session (not a failed row's)."""
        if row.session_key is None:
            return
        failed = row.finished is not None and row.finished.finish_reason is FinishReason.ERROR
        ids = None if failed else row.prompt_ids + row.generated[:-1]  # the last token never ran
        try:
            self.backend.keep(row.id, row.session_key, ids)
        except Exception:  # keeping is an optimisation: the request must still end normally
            log.exception("keeping a session's KV failed")

    def _retire(self) -> None:
        done = {rid for rid, row in self.active.items() if row.finished is not None}
        if not done:
            return
        for rid in done:
            self._keep_session(self.active[rid])
        self.backend.leave(done)
        for rid in done:
            row = self.active.pop(rid)
            self._last_token.pop(rid, None)
            self._on_retire(row)

    def fail_all(self, reason: FinishReason, error: str | None = None) -> None:
        """Finish every row (engine shutdown or an unexpected engine error)."""
        for row in list(self.pending):
            self._finish(row, reason, error)
        self.pending.clear()
        for row in self.active.values():
            self._finish(row, reason, error)
        self._retire()
        self.backend.reset()
