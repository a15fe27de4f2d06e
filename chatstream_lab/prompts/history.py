"""Fit a conversation into a token budget by dropping whole old turns.

A turn is a user message with the replies that follow it; cutting inside one would leave the model an
answer without its question. The system message and the last user turn always stay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from .base import check_messages


def truncate_messages(messages: Sequence[dict[str, Any]],
                      count_tokens: Callable[[list[dict[str, Any]]], int],
                      max_tokens: int) -> list[dict[str, Any]]:
    """The newest suffix of whole turns (plus leading system messages) with ``count_tokens <= max_tokens``.

    ``count_tokens`` gets a candidate message list (e.g. ``lambda m: len(t.encode(tok, m))``).
    Raises ConfigError if even the system message plus the last user turn does not fit.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}", name="max_tokens")
    msgs = list(check_messages(messages))
    head = 0
    while head < len(msgs) and msgs[head]["role"] == "system":
        head += 1
    system, rest = msgs[:head], msgs[head:]
    # Turn starts: every user message (and the very first message, whatever its role).
    starts = [i for i, m in enumerate(rest) if m["role"] == "user" or i == 0]
    last_user = max((i for i, m in enumerate(rest) if m["role"] == "user"), default=None)
    keep_from_max = max((s for s in starts if last_user is None or s <= last_user), default=0)
    droppable = [s for s in starts if s <= keep_from_max]  # cut points, oldest first

    def fits(k: int) -> bool:
        return count_tokens(system + rest[droppable[k]:] if droppable else system + rest) <= max_tokens

    if not droppable or fits(0):
        return system + rest
    last = len(droppable) - 1
    if not fits(last):
        need = count_tokens(system + rest[droppable[last]:])
        raise ConfigError(f"the system message and the last user turn need {need} tokens, more than "
                          f"max_tokens={max_tokens}; shorten them or raise the limit", name="max_tokens")
    lo, hi = 0, last  # fits(hi) is True, fits(lo) is False: find the fewest turns to drop
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return system + rest[droppable[hi]:]
