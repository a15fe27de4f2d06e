"""Token logprobs in OpenAI's wire shapes (and our SSE ``delta`` events).

* chat: ``choices[].logprobs = {"content": [{token, logprob, bytes, top_logprobs: [{token,
  logprob, bytes}]}], "refusal": null}`` (streamed: the same per chunk);
* completions: ``choices[].logprobs = {tokens, token_logprobs, top_logprobs (a dict per token),
  text_offset}``; with ``echo`` the prompt's tokens come first, the very first with ``null``.

Both hold one entry per generated token, the stop token that ended the reply included (its piece,
``<|im_end|>``, is in ``tokens`` though not in the text), as ``usage.completion_tokens`` counts.

Which alternatives: each API as OpenAI specifies it, and as vLLM serves both. Chat's
``top_logprobs`` is exactly the ``top_logprobs`` most likely tokens (the chosen token is the entry
itself). The completions dict is the ``logprobs`` most likely tokens **plus the chosen token when it
is not among them** (OpenAI: "up to logprobs+1 elements"; vLLM does the same), since that dict is
where a completions client looks the token up (``logprobs: 0`` gives just the chosen token). The
numbers are the same in both: the engine's raw model distribution
(:class:`~chatstream_lab.types.TokenLogprob`, whose ``top`` is the top K only).
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


def completion_top(t: TokenLogprob) -> dict[str, float]:
    """The completions ``top_logprobs`` dict of one token: its top K, plus itself if not among them."""
    top = {a.text: a.logprob for a in t.top}
    if all(a.token_id != t.token_id for a in t.top):
        top.setdefault(t.text, t.logprob)
    return top


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
            tops.append(completion_top(t) if t is not None else None)
            self._offset += len(self._utf8.decode(raw))
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
