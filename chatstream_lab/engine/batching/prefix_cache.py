"""Prompt prefixes prefilled once: the keys/values of leading tokens that prompts share.

Prompts built from one chat template start alike: SmolLM2's default system prompt and the
``<|im_start|>user`` marker are 24 of a typical 40-token prompt. When several requests are
prefilled together, or a prompt comes back (``regenerate``), those tokens are run once, their
KV is kept here, and each prompt only runs the rest. At 16 concurrent requests that halves the
prefill, and so the time to first token, of a burst.

A prefix becomes an entry when prompts prefilled together share at least ``min_tokens`` leading
tokens, or one prompt shares them with a prompt seen recently; the entry is the longest such
common prefix (always one token short of the whole prompt: its logits are needed). Entries are
kept least-recently-used first out within ``capacity_bytes``, and dropped when the model's
weights change in place. Stored tensors are never written to (see ``kvcache.load_kv``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .kvcache import KV

Ids = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PrefixHit:
    length: int
    kv: KV  # per layer (keys, values), each [1, H, length, D]


def write_count(t: torch.Tensor) -> int:
    """How often ``t`` was written in place (-1 for an inference tensor, which does not count)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """KV of shared prompt prefixes, keyed by token ids (one model, one backend, one thread)."""

    def __init__(self, model: torch.nn.Module, capacity_bytes: int = 64 << 20, min_tokens: int = 16,
                 remember: int = 32) -> None:
        self._model = model
        self.capacity_bytes = capacity_bytes
        self.min_tokens = min_tokens
        self._entries: OrderedDict[Ids, KV] = OrderedDict()
        self._recent: deque[Ids] = deque(maxlen=remember)
        self._weights_version = self._version()
        self.hits = 0
        self.tokens_reused = 0

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(kv) for kv in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def _version(self) -> int:
        return sum(write_count(p) for p in self._model.parameters())

    def _check_weights(self) -> None:
        version = self._version()
        if version != self._weights_version:
            self.clear()
            self._weights_version = version

    def clear(self) -> None:
        self._entries.clear()
        self._recent.clear()

    def lookup(self, prompts: Sequence[Sequence[int]]) -> PrefixHit | None:
        """The longest entry that leaves at least one token of every prompt to run."""
        self._check_weights()
        best: Ids | None = None
        for ids in self._entries:
            n = len(ids)
            if (best is None or n > len(best)) and all(len(p) > n and tuple(p[:n]) == ids for p in prompts):
                best = ids
        if best is None:
            return None
        self._entries.move_to_end(best)
        self.hits += len(prompts)
        self.tokens_reused += len(best) * len(prompts)
        return PrefixHit(len(best), self._entries[best])

    def shareable(self, prompts: Sequence[Sequence[int]]) -> int:
        """How many leading tokens of ``prompts`` are worth storing (0: none)."""
        room = min(len(p) for p in prompts) - 1
        if len(prompts) > 1:
            n = min(common_prefix_length(prompts[0], p) for p in prompts[1:])
        else:
            n = max((common_prefix_length(prompts[0], r) for r in self._recent), default=0)
        n = min(n, room)
        return n if n >= self.min_tokens else 0

    def remember(self, prompts: Sequence[Sequence[int]]) -> None:
        """Note prompts as seen, so that a later one sharing their start can store it."""
        self._recent.extend(tuple(p) for p in prompts)

    def store(self, ids: Sequence[int], kv: KV) -> None:
        """Keep a compact copy of ``kv`` (the first ``len(ids)`` positions of one row)."""
        n = len(ids)
        entry = [(k[:1, :, :n].clone(), v[:1, :, :n].clone()) for k, v in kv]
        if _nbytes(entry) > self.capacity_bytes:
            return
        self._entries[tuple(ids)] = entry
        self._entries.move_to_end(tuple(ids))
        while self.nbytes > self.capacity_bytes:
            self._entries.popitem(last=False)


def _nbytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
