"""Per-row grammar state and the batch's token masks (what the torch engine's sampler uses).

A :class:`RowMatcher` follows one reply: ``fill`` writes the tokens its grammar allows next into
a row of a packed bitmask, ``accept`` advances it by the sampled token, ``terminated`` says the
grammar has ended (the reply is complete). :class:`TokenMasks` owns one bitmask for a whole batch
and applies the rows' masks to the raw logits in place, skipping rows without a grammar, so
constrained and free rows share one forward and one sampler call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .grammar import xgrammar


class RowMatcher:
    """One request's grammar state (an xgrammar ``GrammarMatcher``); used by one thread."""

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        self._matcher = xgrammar().GrammarMatcher(compiled)
        self.vocab_size = vocab_size

    def fill(self, bitmask: Any, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` (1 bit per token id); none once
        the grammar has ended."""
        if self._matcher.is_terminated():
            bitmask[row].zero_()
        else:
            self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        """Advance by ``token_id``; False if the grammar does not allow it (the row must fail)."""
        return bool(self._matcher.accept_token(int(token_id)))

    @property
    def terminated(self) -> bool:
        """The grammar has ended (a stop token was accepted where it may end)."""
        return bool(self._matcher.is_terminated())

    @property
    def complete(self) -> bool:
        """The engine core's ``TokenConstraint`` name for :attr:`terminated` (the row stops)."""
        return self.terminated

    def allowed(self) -> list[int]:
        """The token ids allowed next (for tests and inspection; the engine uses :meth:`fill`)."""
        masks = TokenMasks(self.vocab_size)
        bitmask = masks.buffer(1)
        self.fill(bitmask, 0)
        return masks.allowed_ids(bitmask[0])


@dataclass(frozen=True, slots=True)
class MaskOutcome:
    """One step's masking: rows whose grammar allowed no token (they fail), and per row the raw
    probability the grammar allowed (None where not asked or not constrained)."""

    dead: frozenset[int]
    allowed: tuple[float | None, ...]


class TokenMasks:
    """A reusable packed bitmask for up to ``rows`` rows of ``vocab_size`` tokens."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = int(vocab_size)
        self._bitmask: Any = None

    def buffer(self, rows: int) -> Any:
        """The bitmask ``[>= rows, ceil(V / 32)]`` (int32), grown when a batch widens."""
        if self._bitmask is None or self._bitmask.shape[0] < rows:
            self._bitmask = xgrammar().allocate_token_bitmask(max(rows, 1), self.vocab_size)
        return self._bitmask

    def apply(self, logits: Any, matchers: Sequence[RowMatcher | None]) -> tuple[int, ...]:
        """Mask ``logits[i]`` (``[rows, V]``, in place) by ``matchers[i]`` where it is not None.

        Returns the rows whose grammar allows no token at all (they must fail; nothing is
        sampled from an all ``-inf`` row). Rows without a matcher are untouched.
        """
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return ()
        import torch

        bitmask = self.buffer(len(matchers))
        for i in rows:
            matcher = matchers[i]
            assert matcher is not None
            matcher.fill(bitmask, i)
        picked = bitmask[rows]
        empty = tuple(r for r, ok in zip(rows, (picked != 0).any(dim=1).tolist()) if not ok)
        live = [r for r in rows if r not in empty]
        if not live:
            return empty
        width = logits.shape[-1]
        if logits.dtype == torch.float32 and logits.is_contiguous() and logits.device.type == "cpu":
            xgrammar().apply_token_bitmask_inplace(logits, bitmask[: logits.shape[0]], indices=live,
                                                   vocab_size=min(width, self.vocab_size))
        else:  # other dtypes / devices: unpack the bits with torch
            allowed = unpack(bitmask[live], width)
            logits[live] = logits[live].masked_fill(~allowed.to(logits.device), float("-inf"))
        if width > self.vocab_size:  # ids past the grammar's vocabulary are never allowed
            logits[live, self.vocab_size:] = float("-inf")
        return empty

    def constrain(self, logits: Any, matchers: Sequence[RowMatcher | None],
                  raw_logprobs: Sequence[Any] | None = None) -> MaskOutcome:
        """:meth:`apply`, plus, for rows given their raw ``log_softmax`` (``raw_logprobs[i]``, a
        ``[V]`` tensor or None), the share of raw probability the grammar allowed there."""
        dead = self.apply(logits, matchers)
        shares: list[float | None] = [None] * len(matchers)
        for i, lp in enumerate(raw_logprobs or ()):
            if lp is not None and matchers[i] is not None and i not in dead:
                shares[i] = float(lp.exp().masked_fill(~logits[i].isfinite(), 0.0).sum())
        return MaskOutcome(frozenset(dead), tuple(shares))

    def allowed_ids(self, row_bits: Any) -> list[int]:
        return unpack(row_bits.unsqueeze(0), self.vocab_size)[0].nonzero().flatten().tolist()


def unpack(bits: Any, width: int) -> Any:
    """Packed int32 bitmask ``[r, W]`` -> bool ``[r, width]`` (bit j of word k is token 32k + j)."""
    import torch

    shifts = torch.arange(32, dtype=torch.int32, device=bits.device)
    out = ((bits.unsqueeze(-1) >> shifts) & 1).bool().reshape(bits.shape[0], -1)
    if out.shape[1] < width:
        out = torch.nn.functional.pad(out, (0, width - out.shape[1]))
    return out[:, :width]
