"""The generation seam, at two levels.

**Request level** (:class:`Generator`): what the server, the notebook and ``Lab`` see. ``submit``
takes a prompt's token ids and returns a :class:`~chatstream_lab.engine.core.stream.RequestStream`
(``Queued* Delta* Finished``, exactly one ``Finished``) or raises ``QueueFull`` synchronously; the
stream can be cancelled from any thread. Implementations: the local batching
:class:`~chatstream_lab.engine.batching.engine.Engine` and the remote
:class:`~chatstream_lab.engine.remote.RemoteEngine` (vLLM, llama-server, any OpenAI-compatible
server). Every implementation takes its admission gate and lifecycle observer by injection and
goes through :class:`~chatstream_lab.engine.core.lifecycle.RequestLifecycle`, so the limit, the queue
and the numbers behave the same whatever produces the tokens.

**Step level** (:class:`StepBackend`): what the batching engine drives on its one thread:
prefill / join / decode / leave, logits per row. Implementations: the HF torch backend and the
scripted backend. Sampling, stop ids, stop strings and detokenization stay in
:class:`~chatstream_lab.engine.batching.decoder.BatchDecoder`, the same code for every step-level backend.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ...config import SamplingParams
from ...types import TokenLogprob

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ...admission import AdmissionGate
    from ...models import LoadedModel
    from ...stats import KVCacheStats
    from .capabilities import Capabilities
    from .stream import RequestStream

Key = Hashable
H = TypeVar("H")


class EngineState(str, Enum):
    """What ``/health`` reports about a generator (or one of its upstreams)."""

    IDLE = "idle"  # not started yet (it starts, and builds, on the first request or warm())
    STARTING = "starting"  # its thread builds it (weights, compile); requests wait in the queue
    RUNNING = "running"
    DEGRADED = "degraded"  # some upstreams are down, requests still served
    FAILED = "failed"  # cannot serve; every request fails fast with 503
    CLOSED = "closed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class UpstreamHealth:
    """One remote engine behind a :class:`~chatstream_lab.engine.remote.RemoteEngine`."""

    url: str
    healthy: bool
    in_flight: int = 0
    failures: int = 0
    retry_in_s: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """The generator's state, for ``/health`` (a load balancer can use ``ok``)."""

    state: EngineState
    backend: str
    detail: str | None = None
    upstreams: tuple[UpstreamHealth, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.state in (EngineState.IDLE, EngineState.RUNNING, EngineState.DEGRADED)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state.value, "backend": self.backend}
        if self.detail:
            out["detail"] = self.detail
        if self.upstreams:
            out["upstreams"] = [{"url": u.url, "healthy": u.healthy, "in_flight": u.in_flight,
                                 "failures": u.failures, "retry_in_s": round(u.retry_in_s, 2),
                                 "last_error": u.last_error} for u in self.upstreams]
        return out


class Generator(Protocol):
    """Request level: token ids in, a stream of events out (see the module docstring)."""

    @property
    def model(self) -> LoadedModel: ...

    @property
    def gate(self) -> AdmissionGate[Any]: ...

    @property
    def capabilities(self) -> Capabilities:
        """What this generator can do (the same value ``capabilities_for(model)`` of its class
        gives before it is built)."""
        ...

    def start(self) -> Generator:
        """Start the engine's thread, which builds the engine (weights, compile, client) and then
        serves; returns at once (idempotent). Requests submitted while it builds wait in the
        queue; ``health()`` says ``starting``."""
        ...

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the engine was built (for a caller that chooses to wait: ``serve`` before
        it prints its URL). Raises EngineUnavailable if the build failed, TimeoutError."""
        ...

    def wake(self) -> None:
        """Look at the gate now (its hold was released: a model switch ended); any thread."""
        ...

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
               stop_strings: Sequence[str] = (), output_replacements: Sequence[tuple[str, str]] = (),
               stop_token_ids: Sequence[int] = (), session_key: str | None = None,
               messages: Sequence[dict[str, str]] | None = None) -> RequestStream:
        """Queue a request; raises QueueFull at once when the gate is full.

        ``session_key`` lets an engine keep a session's state warm (a remote engine sends a
        session's turns to the same upstream; the local engine keeps a finished turn's KV for
        the session's next one). ``messages`` replaces ``prompt_ids`` for a remote model without a
        local tokenizer (its own chat template renders them).
        """
        ...

    def score(self, ids: Sequence[int], start: int, *, top: int = 0) -> Future[tuple[TokenLogprob, ...]]:
        """Teacher-forced logprobs of ``ids[start:]`` (on the thread that owns the model); raises
        InvalidParameter where the generator cannot score (a remote one)."""
        ...

    def forget(self, session_key: str) -> None:
        """Drop what is kept warm for ``session_key`` (its conversation was cleared); any thread."""
        ...

    def kv_cache_stats(self) -> KVCacheStats | None:
        """The KV kept across sessions' turns (None: this generator keeps none); any thread."""
        ...

    def health(self) -> EngineHealth: ...

    def close(self, timeout: float = 10.0) -> None: ...


class StepBackend(Protocol[H]):
    """Step level: what :class:`~chatstream_lab.engine.batching.decoder.BatchDecoder` drives (one thread).

    ``H`` is the backend's own handle of a prompt on its way into the batch. Logits are float
    ``[vocab]`` (one prompt) or ``[rows, vocab]`` on any device, in ``rows`` order.
    """

    rows: list[Key]

    def start(self, prompt_ids: Sequence[int], session: str | None = None) -> H:
        """A prompt's handle; a ``session``'s kept KV (if its ids start the prompt) is used."""
        ...

    def prefill(self, handle: H, budget: int) -> torch.Tensor | None:
        """Run up to ``budget`` prompt tokens; the last logits once the whole prompt is in."""
        ...

    def prefill_group(self, prompts: Sequence[Sequence[int]]) -> tuple[H, torch.Tensor]: ...

    def join(self, keys: Key | list[Key], handle: H, keep: Sequence[int] | None = None) -> None: ...

    def decode(self, tokens: Sequence[int]) -> torch.Tensor: ...

    def leave(self, keys: AbstractSet[Key]) -> None: ...

    def reset(self) -> None: ...

    def score(self, ids: Sequence[int], start: int) -> torch.Tensor:
        """Teacher-forced logits ``[len(ids) - start, V]`` (row j predicts ``ids[start + j]``);
        touches no batch state, so it may run between two steps."""
        ...

    def reusable(self, session: str | None, prompt_ids: Sequence[int]) -> int:
        """How many prompt positions the session's kept KV covers (0: none; such a prompt is then
        prefilled alone, through ``start``)."""
        ...

    def keep(self, key: Key, session: str, ids: Sequence[int] | None) -> None:
        """Called before ``key`` leaves: keep its KV (over ``ids``) for ``session``; None: nothing."""
        ...

    def forget(self, session: str) -> None: ...

    def kv_stats(self) -> KVCacheStats | None: ...
