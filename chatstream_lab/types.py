"""Core value types shared by every stage of the data path.

Closed sets are enums, values are frozen dataclasses, and a stream is a typed sequence of
:data:`StreamEvent` with exactly one :class:`Finished` at the end (no in-band sentinels).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Literal, NewType, Protocol, TypedDict, Union

RequestId = NewType("RequestId", str)


class Role(str, enum.Enum):
    """The role of one message in a conversation."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"

    def __str__(self) -> str:
        return self.value


class Message(TypedDict):
    """One chat message, the same shape as OpenAI's and transformers' ``messages``."""

    role: Literal["system", "user", "assistant"] | str
    content: str


class FinishReason(str, enum.Enum):
    """Why a generation ended. Every accepted request ends with exactly one of these."""

    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_new_tokens reached
    CANCELLED = "cancelled"  # consumer left, Stop button, server shutdown
    ERROR = "error"  # the model raised; Finished.error says what

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and timings of one generation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None  # submit -> first token, queue wait included
    queue_s: float = 0.0  # time spent waiting for a slot
    total_s: float = 0.0  # submit -> finish
    tokens_per_s: float = 0.0  # completion tokens / decode time (first token -> finish)

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "ttft_s": self.ttft_s,
            "queue_s": self.queue_s,
            "total_s": self.total_s,
            "tokens_per_s": self.tokens_per_s,
        }


@dataclass(frozen=True, slots=True)
class Queued:
    """The request waits for a slot; ``position`` 1 is next in line."""

    request_id: RequestId
    position: int


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """One of the most likely tokens at a position, with its log-probability.

    ``text`` is the token's own piece (bytes decoded with U+FFFD for a partial UTF-8 character);
    ``raw`` its exact bytes (what OpenAI's ``bytes`` field lists).
    """

    token_id: int
    text: str
    logprob: float
    raw: bytes = b""

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated (or scored) token: its piece, its log-probability and the top alternatives.

    Log-probabilities are of the *raw* model distribution: ``log_softmax`` of the logits before
    repetition penalty, temperature, top-k, top-p and min-p (OpenAI's and vLLM's convention), so
    the same token has the same logprob whatever the sampling settings. ``top`` is sorted, most
    likely first, and holds ``SamplingParams.logprobs`` entries (it may or may not contain the
    chosen token; greedy decoding without a repetition penalty always picks ``top[0]``).

    ``ends_reply`` marks the stop token that ended a reply (EOS, or a stop string that is a special
    token): it is reported, with its logprob (how sure the model was to stop), as every other
    generated token, but its text is not part of the reply.

    ``allowed`` is set for a constrained reply (``SamplingParams.constraint``): the share of the
    raw probability that the grammar allowed at this position (1.0: the model wanted to write
    something valid anyway; near 0: the grammar overrode it). None for a free reply.
    """

    token_id: int
    text: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()
    raw: bytes = b""
    ends_reply: bool = False
    allowed: float | None = None

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True, slots=True)
class Delta:
    """New text and the tokens that made it. ``text`` is never a broken UTF-8 character; it may be
    ``""`` while one is pending, and is ``""`` in the last Delta of a reply that a stop token
    ended: that Delta carries only the stop token (its id, and its logprob when asked), so
    ``token_ids`` and ``logprobs`` hold every generated token, as ``Usage.completion_tokens``
    counts them. The reply's text is the join of the ``text`` fields (``Finished.text``), not of
    the tokens' pieces.

    ``logprobs`` holds one :class:`TokenLogprob` per id in ``token_ids`` when the request asked for
    them (``SamplingParams(logprobs=K)``), else ``()``. A token that belongs to a stop string is
    reported here although its text is held back; the stop token's entry has ``ends_reply``.
    """

    request_id: RequestId
    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplyScore:
    """The log-probabilities of a given reply, teacher-forced after a prompt (``csl.score``).

    ``tokens`` has one entry per token of the reply; ``prompt_tokens`` is the prompt's length.
    """

    tokens: tuple[TokenLogprob, ...]
    prompt_tokens: int = 0

    @property
    def logprob(self) -> float:
        """The reply's total log-probability (sum over its tokens)."""
        return float(sum(t.logprob for t in self.tokens))

    @property
    def mean_logprob(self) -> float:
        """Mean log-probability per token (comparable across replies of different lengths)."""
        return self.logprob / len(self.tokens) if self.tokens else 0.0

    @property
    def token_logprobs(self) -> list[float]:
        return [t.logprob for t in self.tokens]

    @property
    def text(self) -> str:
        return b"".join(t.raw for t in self.tokens).decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Finished:
    """The one final event of every accepted request."""

    request_id: RequestId
    finish_reason: FinishReason
    text: str  # the whole reply, equal to the concatenated deltas
    usage: Usage = field(default_factory=Usage)
    error: str | None = None  # message of the failure when finish_reason is ERROR

    @property
    def reason(self) -> FinishReason:
        return self.finish_reason


StreamEvent = Union[Queued, Delta, Finished]


class LifecycleObserver(Protocol):
    """Receives request lifecycle events (from any thread); implemented by the stats recorder.

    Calls must be cheap and must not raise: they run on the engine thread and request paths.
    """

    def on_queued(self, request_id: RequestId) -> None: ...
    def on_rejected(self) -> None: ...
    def on_admitted(self, request_id: RequestId) -> None: ...
    def on_first_token(self, request_id: RequestId) -> None: ...
    def on_finished(self, request_id: RequestId, reason: FinishReason, usage: Usage) -> None: ...
