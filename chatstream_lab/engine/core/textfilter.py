"""Stop strings and output replacements on streamed text, with hold-back.

A stop string can arrive split over several tokens (``"<"`` then ``"/s>"``). The filter holds
back the longest suffix of the pending text that could still become a stop string (or a
replacement's source, e.g. rinna's ``<NL>``), so nothing that belongs to a stop string is ever
emitted, and a stop string always lies wholly inside the pending buffer when it completes.
"""

from __future__ import annotations

from dataclasses import dataclass


def _partial_suffix_len(text: str, patterns: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some pattern."""
    best = 0
    for pat in patterns:
        for n in range(min(len(pat) - 1, len(text)), best, -1):
            if text.endswith(pat[:n]):
                best = n
                break
    return best


@dataclass
class FilterResult:
    text: str  # safe to emit now
    stopped: bool  # a stop string was found; ``text`` ends right before it


class TextFilter:
    """Applies output replacements, then stop strings, to a stream of text pieces."""

    def __init__(self, stop_strings: tuple[str, ...] = (),
                 replacements: tuple[tuple[str, str], ...] = ()) -> None:
        self._stops = tuple(s for s in stop_strings if s)
        self._repl = tuple((a, b) for a, b in replacements if a)
        self._raw = ""  # text not yet through the replacements
        self._pending = ""  # replaced text not yet emitted (may start a stop string)

    def reset(self) -> None:
        """Drop the text held back so far (a reply that starts over)."""
        self._raw = ""
        self._pending = ""

    @property
    def active(self) -> bool:
        return bool(self._stops or self._repl)

    def push(self, piece: str, *, final: bool = False) -> FilterResult:
        if not self.active:
            return FilterResult(piece, False)
        self._raw += piece
        hold = 0 if final else _partial_suffix_len(self._raw, tuple(a for a, _ in self._repl))
        ready, self._raw = self._raw[:len(self._raw) - hold], self._raw[len(self._raw) - hold:]
        for old, new in self._repl:
            ready = ready.replace(old, new)
        self._pending += ready
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending = self._pending[:cut], ""
            return FilterResult(out, True)
        keep = 0 if final else _partial_suffix_len(self._pending, self._stops)
        out = self._pending[:len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep:]
        return FilterResult(out, False)
