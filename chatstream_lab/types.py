"""Core value types shared by every stage of the data path.

Closed sets are enums, values are frozen dataclasses, and a stream is a typed sequence of
:data:`StreamEvent` with exactly one :class:`Finished` at the end (no in-band sentinels).
"""

from __future__ import annotations

import enum
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
class Delta:
    """New text. ``text`` is never a broken UTF-8 character; it may be ``""`` while one is pending."""

    request_id: RequestId
    text: str
    token_ids: tuple[int, ...] = ()


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
