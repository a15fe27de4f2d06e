"""Per-session KV kept across turns: the next turn of a chat prefills only what is new.

When a turn of a session ends, the backend hands its row's keys/values here, compacted to the
real positions (no padding), with the exact token ids they were computed for (prompt + generated
tokens but the last one, which was sampled and never run). The session's next prompt reuses the
longest common *id* prefix with those ids and prefills only the rest: whatever the template does
to earlier turns (re-tokenized replies, stripped reasoning), only positions whose ids match are
reused, so the logits are those of a full prefill. Regenerate shares the whole prompt (the kept
reply differs from the first token on); a cleared conversation shares the system prompt at most.

Memory: one ``budget_bytes`` for the kept entries *and* the live batch's KV. The batch comes
first: as it grows (rows join, every decode step adds a position) kept entries are evicted least
recently used first; an entry that does not fit what the batch leaves is not kept. An entry is
taken out while its session's turn runs (one turn in flight per session), so it never counts
twice. Entries are dropped when the weights change in place.

Threads: the engine thread owns the entries (take, put, make_room); :meth:`forget` and
:meth:`stats` come from any thread. One short lock guards the dict and the counters; tensors are
copied outside it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...stats import KVCacheStats
from .kvcache import KV
from .prefix_cache import common_prefix_length, write_count


@dataclass(frozen=True, slots=True)
class SessionEntry:
    """What a session keeps: the ids and their keys/values ``[1, H, len(ids), D]`` per layer."""

    ids: tuple[int, ...]
    kv: KV
    nbytes: int


@dataclass(frozen=True, slots=True)
class SessionHit:
    length: int  # positions reused: the prompt's first ``length`` ids
    kv: KV  # per layer, each [1, H, length, D]


def kv_nbytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class SessionKVCache:
    """Kept KV by session key, LRU within a byte budget shared with the live batch.

    Args:
        model: the model whose KV this is (entries are dropped when its weights change in place).
        budget_bytes: memory for kept entries plus the live batch's KV.
        min_tokens: a common prefix shorter than this is not worth a row of its own (the prompt
            then goes through the grouped prefill and the shared-prefix cache as before).
    """

    def __init__(self, model: torch.nn.Module, budget_bytes: int, *, min_tokens: int = 16) -> None:
        self._model = model
        self.budget_bytes = int(budget_bytes)
        self.min_tokens = min_tokens
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, SessionEntry] = OrderedDict()
        self._out: set[str] = set()  # taken by a running turn
        self._forgotten: set[str] = set()  # forgotten while taken: do not keep that turn
        self._weights_version = self._version()
        self._bytes = 0
        self.batch_bytes = 0
        self.hits = 0
        self.reused_tokens = 0
        self.prefilled_tokens = 0
        self.stored = 0
        self.evictions = 0

    def _version(self) -> int:
        return sum(write_count(p) for p in self._model.parameters())

    def _check_weights(self) -> None:
        version = self._version()
        if version != self._weights_version:
            with self._lock:
                self._entries.clear()
                self._bytes = 0
            self._weights_version = version

    # -- the engine thread ----------------------------------------------------------------------
    def reusable(self, session: str | None, ids: Sequence[int]) -> int:
        """How many leading positions of ``ids`` the session's kept KV covers (0: none worth it).

        At most ``len(ids) - 1``: the last prompt position must run to give the next logits.
        """
        if session is None:
            return 0
        with self._lock:
            entry = self._entries.get(session)
        if entry is None:
            return 0
        n = min(common_prefix_length(entry.ids, ids), len(ids) - 1)
        return n if n >= self.min_tokens else 0

    def take(self, session: str | None, ids: Sequence[int]) -> SessionHit | None:
        """Take the session's entry out for its running turn; the reusable part of it, or None."""
        if session is None:
            return None
        self._check_weights()
        n = self.reusable(session, ids)
        with self._lock:
            entry = self._entries.pop(session, None)
            self._out.add(session)
            if entry is not None:
                self._bytes -= entry.nbytes
            if entry is None or n == 0:
                return None
            self.hits += 1
            self.reused_tokens += n
        return SessionHit(n, [(k[:, :, :n], v[:, :, :n]) for k, v in entry.kv])

    def put(self, session: str, ids: Sequence[int], kv: KV) -> bool:
        """Keep ``kv`` (compact, ``[1, H, len(ids), D]``) for ``session``; False if not kept."""
        entry = SessionEntry(tuple(ids), kv, kv_nbytes(kv))
        with self._lock:
            self._out.discard(session)
            if session in self._forgotten:
                self._forgotten.discard(session)
                return False
            old = self._entries.pop(session, None)
            if old is not None:
                self._bytes -= old.nbytes
            if entry.nbytes + self.batch_bytes > self.budget_bytes:
                self.evictions += 1
                return False
            self._entries[session] = entry
            self._bytes += entry.nbytes
            self.stored += 1
            self._evict_locked()
        return True

    def release(self, session: str) -> None:
        """The session's turn ended without keeping anything (an error, nothing to keep)."""
        with self._lock:
            self._out.discard(session)
            self._forgotten.discard(session)

    def make_room(self, batch_bytes: int) -> None:
        """The live batch holds ``batch_bytes`` now: evict kept entries until both fit."""
        with self._lock:
            self.batch_bytes = batch_bytes
            self._evict_locked()

    def _evict_locked(self) -> None:
        while self._entries and self._bytes + self.batch_bytes > self.budget_bytes:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes
            self.evictions += 1

    def count_prefilled(self, n: int) -> None:
        with self._lock:
            self.prefilled_tokens += n

    # -- any thread -----------------------------------------------------------------------------
    def forget(self, session: str) -> None:
        """Drop what ``session`` keeps (its conversation was cleared or the session ended)."""
        with self._lock:
            entry = self._entries.pop(session, None)
            if entry is not None:
                self._bytes -= entry.nbytes
            if session in self._out:
                self._forgotten.add(session)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def stats(self) -> KVCacheStats:
        with self._lock:
            return KVCacheStats(entries=len(self._entries), bytes=self._bytes, budget_bytes=self.budget_bytes,
                                batch_bytes=self.batch_bytes, hits=self.hits, reused_tokens=self.reused_tokens,
                                prefilled_tokens=self.prefilled_tokens, stored=self.stored,
                                evictions=self.evictions)
