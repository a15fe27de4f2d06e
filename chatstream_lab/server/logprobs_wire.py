"""Token logprobs in OpenAI's wire shapes (and our SSE ``delta`` events).

* chat: ``choices[].logprobs = {"content": [{token, logprob, bytes, top_logprobs: [{token,
  logprob, bytes}]}], "refusal": null}`` (streamed: the same per chunk);
* completions: ``choices[].logprobs = {tokens, token_logprobs, top_logprobs (a dict per token),
  text_offset}``; with ``echo`` the prompt's tokens come first, the very first with ``null``.

The numbers are the engine's: the raw model distribution (:class:`~chatstream_lab.types.TokenLogprob`).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any

from ..types import TokenLogprob, TopLogprob


def _top(a: TopLogprob) -> dict[str, Any]:
    return {"token": a.text, "logprob": a.logprob, "bytes": list(a.raw)}


def chat_content(lps: Sequence[TokenLogprob], *, with_ids: bool = False) -> list[dict[str, Any]]:
    """OpenAI chat ``logprobs.content`` entries (``with_ids`` adds ``token_id``: our SSE events)."""
    out = []
    for t in lps:
        entry: dict[str, Any] = {"token": t.text, "logprob": t.logprob, "bytes": list(t.raw),
                                 "top_logprobs": [_top(a) for a in t.top]}
        if with_ids:
            entry["token_id"] = t.token_id
            for a, wire in zip(t.top, entry["top_logprobs"]):
                wire["token_id"] = a.token_id
        out.append(entry)
    return out


class CompletionLogprobs:
    """Accumulates the legacy completions ``logprobs`` object, with character ``text_offset``s.

    Offsets count characters of the text decoded so far (an incremental UTF-8 decoder over the
    tokens' bytes), so a character split over tokens is counted once, where it completes.
    """

    def __init__(self, start_offset: int = 0) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._offset = start_offset

    def chunk(self, lps: Sequence[TokenLogprob | None], texts: Sequence[str] = (),
              raws: Sequence[bytes] = ()) -> dict[str, Any]:
        """One wire object for ``lps`` (None: a token without a logprob, the first of an echo,
        then ``texts[i]`` / ``raws[i]`` describe it)."""
        tokens: list[str] = []
        values: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        for i, t in enumerate(lps):
            offsets.append(self._offset)
            raw = t.raw if t is not None else raws[i]
            tokens.append(t.text if t is not None else texts[i])
            values.append(t.logprob if t is not None else None)
            tops.append({a.text: a.logprob for a in t.top} if t is not None else None)
            self._offset += len(self._utf8.decode(raw))
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
