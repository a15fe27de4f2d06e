"""One request's output, written once for every engine: what it produced in, events out.

Each engine keeps one :class:`OutputRow` (or a subclass with its own fields) per request and feeds
it what its model produced; the row turns that into ``Delta`` events and, at the end, the one
``Finished`` with its usage. The engine only decides *when* a row ends for reasons of its own
(cancel, a failed forward, an upstream gone) and retires it (slot first, then the final event)::

    token id  ->  record  ->  [constraint]  ->  stop id?  ->  Detokenizer  ->  TextFilter
                                                  |                              |
                           flush, Delta ("", id, logprob), STOP   Delta (text, id, logprob)
                                                                   stop string? -> STOP
                                                                   max_new reached? -> flush, LENGTH
    text      ->  TextFilter  ->  Delta (text)     (an upstream that sends text, not ids)

The hook point for what later work adds on top, so that it lands here once and not per engine:

* **constraint** (structured output): :class:`TokenConstraint` on the row sees every sampled token
  right after it is recorded, before the stop-id check; a token it refuses fails the row, a
  grammar it reports complete stops it. Masking the logits before sampling is the sampler's part
  (the batching engine's), not this pipeline's.

The stop token that ends a row is reported like every other generated token: after the text
still held back is flushed, one last ``Delta`` with no text carries its id and (when asked) its
logprob marked ``ends_reply``. So every engine that takes ids gives the same arrays, streamed or
not, chat or completions: one entry per generated token, as ``completion_tokens`` counts them
(evaluation harnesses score a choice the model would end with EOS from that entry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from ...config import SamplingParams
from ...types import Delta, Finished, FinishReason, RequestId, TokenLogprob
from .detokenize import Detokenizer, DetokenizerFactory, TokenPieces, special_stop_ids
from .lifecycle import make_usage
from .stream import RequestStream
from .textfilter import TextFilter


class TokenConstraint(Protocol):
    """A per-row grammar state (the hook for structured output; no engine sets one yet)."""

    def accept(self, token: int) -> bool:
        """Advance over ``token``; False: the grammar does not allow it (the row fails)."""
        ...

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and allows nothing more (the row stops)."""
        ...


@dataclass(frozen=True, slots=True)
class StopRules:
    """What ends a row: stop strings (matched in the text, held back across tokens) and stop ids."""

    strings: tuple[str, ...] = ()
    ids: frozenset[int] = frozenset()


@dataclass(eq=False, kw_only=True)
class OutputRow:
    """One request's output state (one engine thread touches it; the stream carries it out)."""

    stream: RequestStream
    prompt_ids: list[int]
    params: SamplingParams
    stops: StopRules
    max_new: int  # the row ends with LENGTH after this many tokens
    text_filter: TextFilter
    detok: Detokenizer | None = None  # None: the engine delivers text, not ids (an upstream's)
    on_first_token: Callable[[RequestId], None] | None = None
    constraint: TokenConstraint | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_admit: float | None = None
    t_first: float | None = None
    generated: list[int] = field(default_factory=list)
    produced: int = 0  # tokens (or an upstream's text pieces) received
    parts: list[str] = field(default_factory=list)  # text delivered to the consumer
    finished: Finished | None = None

    @property
    def id(self) -> RequestId:
        return self.stream.id

    @property
    def delivered(self) -> bool:
        """Some text reached the consumer (a request can no longer start over elsewhere)."""
        return bool(self.parts)

    # -- what the model produced ---------------------------------------------------------
    def record(self, token: int) -> None:
        """Count a sampled token (subclasses keep more per token)."""
        self.generated.append(token)

    def take(self, token: int, logprob: TokenLogprob | None = None) -> None:
        """One sampled token: stop ids, detokenizer, stop strings, length; ends the row if due."""
        assert self.detok is not None, "a text-only row takes text (take_text)"
        self.record(token)
        self._count_output()
        if self.constraint is not None and not self.constraint.accept(token):
            self.finish(FinishReason.ERROR, f"token {token} is not allowed by the row's constraint")
            return
        if token in self.stops.ids:
            self.flush()
            self.emit("", (token,), () if logprob is None else (replace(logprob, ends_reply=True),))
            self.finish(FinishReason.STOP)
            return
        result = self.text_filter.push(self.detok.add(token))
        self.emit(result.text, (token,), () if logprob is None else (logprob,))
        if result.stopped:
            self.finish(FinishReason.STOP)
        elif self.constraint is not None and self.constraint.complete:
            self.flush()
            self.finish(FinishReason.STOP)
        elif len(self.generated) >= self.max_new:
            self.flush()
            self.finish(FinishReason.LENGTH)

    def take_text(self, piece: str, ids: Sequence[int] | None = None) -> bool:
        """One piece of text from an upstream, with the token ids it decodes from when the upstream
        reports them (kept in ``generated``); True: a stop string ended the reply there (the
        caller finishes the row with the upstream's usage)."""
        if ids:
            self.generated.extend(int(i) for i in ids)
        if not piece:
            return False
        self._count_output()
        result = self.text_filter.push(piece)
        self.emit(result.text)
        return result.stopped

    def restart_text(self) -> None:
        """Forget what an attempt that delivered nothing produced (a fail-over that starts over)."""
        self.text_filter.reset()
        self.produced = 0
        self.generated.clear()

    def _count_output(self) -> None:
        self.produced += 1
        if self.t_first is None:
            self.t_first = time.perf_counter()
            if self.on_first_token is not None:
                self.on_first_token(self.id)

    # -- out -----------------------------------------------------------------------------
    def emit(self, text: str, token_ids: tuple[int, ...] = (), logprobs: tuple[TokenLogprob, ...] = ()) -> None:
        """Push a Delta (nothing when it would carry neither text nor a token)."""
        if not text and not token_ids:
            return
        if text:
            self.parts.append(text)
        self.stream._push(Delta(self.id, text, token_ids, logprobs))

    def flush(self) -> None:
        """Emit what the detokenizer and the filter still hold (the reply ends here)."""
        tail = self.detok.finalize() if self.detok is not None else ""
        self.emit(self.text_filter.push(tail, final=True).text)

    def finish(self, reason: FinishReason, error: str | None = None, *, prompt_tokens: int | None = None,
               completion_tokens: int | None = None) -> bool:
        """Set the final event (once; False if the row had already finished). The engine retires
        the row afterwards: it frees the slot, *then* pushes ``finished``."""
        if self.finished is not None:
            return False
        usage = make_usage(len(self.prompt_ids) if prompt_tokens is None else prompt_tokens,
                           self.produced if completion_tokens is None else completion_tokens,
                           t_submit=self.t_submit, t_admit=self.t_admit, t_first=self.t_first)
        self.finished = Finished(self.id, reason, "".join(self.parts), usage, error)
        return True

    def fail(self, exc: BaseException) -> bool:
        """Finish with ERROR, naming the exception (the detail is logged, never sent to clients)."""
        return self.finish(FinishReason.ERROR, f"{type(exc).__name__}: {exc}")


R = TypeVar("R", bound=OutputRow)


class RowFactory:
    """What every row of one model shares: the detokenizer tables (read from the tokenizer on
    first use, not in the constructor), the model's stop ids, its context window. ``new_row``
    makes the engine's own row class."""

    def __init__(self, model: Any, *, detokenize: bool = True,
                 on_first_token: Callable[[RequestId], None] | None = None) -> None:
        self.tokenizer = model.tokenizer
        self.model_stop_ids = frozenset(int(t) for t in model.stop_token_ids)
        self.window = int(model.context_window)
        self.detokenize = detokenize
        self.on_first_token = on_first_token
        self._detokenizers: DetokenizerFactory | None = None

    @property
    def detokenizers(self) -> DetokenizerFactory | None:
        """None where rows take text, not ids (made twice at worst by a race: it is a pure value)."""
        if self._detokenizers is None and self.detokenize:
            self._detokenizers = DetokenizerFactory(self.tokenizer)
        return self._detokenizers

    def pieces(self) -> TokenPieces:
        """One token's text and bytes (what logprobs report)."""
        assert self.detokenizers is not None
        return self.detokenizers.pieces()

    def stops(self, params: SamplingParams, stop_strings: Sequence[str] = (),
              stop_token_ids: Sequence[int] = ()) -> StopRules:
        """The request's stop strings (its own, then the parameters') and stop ids (the model's,
        the request's, and stop strings that are special tokens: those are matched by id)."""
        strings = tuple(dict.fromkeys(tuple(s for s in stop_strings if s) + tuple(s for s in params.stop if s)))
        ids = set(self.model_stop_ids) | {int(t) for t in stop_token_ids}
        if self.detokenize:
            ids |= special_stop_ids(self.tokenizer, strings)
        return StopRules(strings, frozenset(ids))

    def max_new(self, params: SamplingParams, prompt_len: int) -> int:
        """``max_new_tokens``, cut to the room the context window leaves (at least one)."""
        return max(1, min(params.max_new_tokens, self.window - prompt_len))

    def new_row(self, cls: type[R], stream: RequestStream, prompt_ids: Sequence[int], params: SamplingParams,
                stops: StopRules, output_replacements: Sequence[tuple[str, str]] = (), *,
                max_new: int | None = None, **extra: Any) -> R:
        """A fresh row of ``cls`` (``extra``: the engine's own fields)."""
        ids = list(prompt_ids)
        return cls(stream=stream, prompt_ids=ids, params=params, stops=stops,
                   max_new=self.max_new(params, len(ids)) if max_new is None else max_new,
                   text_filter=TextFilter(stops.strings, tuple(output_replacements)),
                   detok=self._new_detokenizer(),
                   on_first_token=self.on_first_token, **extra)


    def _new_detokenizer(self) -> Detokenizer | None:
        factory = self.detokenizers
        return factory() if factory is not None else None


__all__ = ["OutputRow", "RowFactory", "StopRules", "TokenConstraint"]
