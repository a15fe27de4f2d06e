"""Incremental detokenization that never emits a broken UTF-8 character.

Contract (mlx-lm's): the concatenated segments equal the decode of all tokens, and no segment
contains U+FFFD from a character split over tokens. Work per token is O(1) for byte-level BPE
tokenizers (bytes are fed to an incremental UTF-8 decoder) and O(window) otherwise (decode a
small window and emit what became stable), never a re-decode of the whole reply.

A reply cut by ``max_new_tokens`` inside a multi-byte character ends with incomplete bytes:
:meth:`finalize` drops them (they are not text), so the reply never ends with U+FFFD.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import Any


def _byte_decoder_of(tokenizer: Any) -> dict[str, int] | None:
    """The GPT-2 byte<-unicode table if the tokenizer is byte-level BPE, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    decoder = getattr(backend, "decoder", None)
    if decoder is None or "ByteLevel" not in type(decoder).__name__ + repr(decoder)[:200]:
        return None
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table: dict[int, str] = bytes_to_unicode()  # type: ignore[no-untyped-call]  # transformers is untyped
    return {u: b for b, u in table.items()}


class Detokenizer:
    """Turns a stream of token ids into text segments; one instance per request."""

    def __init__(self, tokenizer: Any, byte_decoder: dict[str, int] | None = None,
                 special_ids: frozenset[int] = frozenset()) -> None:
        self._tok = tokenizer
        self._special = special_ids
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._byte_decoder = byte_decoder
        self._token_bytes = getattr(tokenizer, "token_bytes", None)
        self._ids: list[int] = []
        self._prefix = 0  # generic path: window start
        self._read = 0  # generic path: first id not yet emitted

    def add(self, token_id: int) -> str:
        """Feed one token; returns the newly stable text (possibly '')."""
        if token_id in self._special:
            return ""
        if self._token_bytes is not None:
            raw = self._token_bytes(token_id)
            return self._utf8.decode(raw) if raw else ""
        if self._byte_decoder is not None:
            piece = self._tok.convert_ids_to_tokens(token_id)
            try:
                raw = bytes(self._byte_decoder[c] for c in piece)
            except KeyError:  # an added (non byte-level) token: its text is literal
                raw = piece.encode("utf-8")
            return self._utf8.decode(raw)
        return self._add_generic(token_id)

    def _add_generic(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self._prefix = self._read
        self._read = len(self._ids)
        return str(after[len(before):])

    def finalize(self) -> str:
        """Text still buffered at the end; incomplete trailing bytes are dropped."""
        if self._token_bytes is not None or self._byte_decoder is not None:
            tail = self._utf8.decode(b"", final=True)
            return tail.rstrip("\ufffd")
        before = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        after = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=True)
        return after[len(before):].rstrip("\ufffd") if len(after) > len(before) else ""


class DetokenizerFactory:
    """Inspects a tokenizer once (per model), then makes a Detokenizer per request cheaply."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.byte_decoder = _byte_decoder_of(tokenizer)
        self.special_ids = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])

    def __call__(self) -> Detokenizer:
        return Detokenizer(self.tokenizer, self.byte_decoder, self.special_ids)

    def pieces(self) -> TokenPieces:
        return TokenPieces(self.tokenizer, self.byte_decoder)


class TokenPieces:
    """One token's own text and bytes (what logprobs report), cached per id.

    A byte-level BPE piece is mapped back to its bytes (``"Ġthe"`` -> ``b" the"``), so a space
    is a space and a newline a newline; a partial UTF-8 character decodes to U+FFFD in ``text``
    while ``raw`` keeps the exact bytes. Special tokens keep their literal text (``<|im_end|>``).
    """

    def __init__(self, tokenizer: Any, byte_decoder: dict[str, int] | None) -> None:
        self._tok = tokenizer
        self._byte_decoder = byte_decoder
        self._token_bytes = getattr(tokenizer, "token_bytes", None)
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._raw(token_id)
            hit = self._cache[token_id] = (raw.decode("utf-8", errors="replace"), raw)
        return hit

    def _raw(self, token_id: int) -> bytes:
        if self._token_bytes is not None:
            raw = self._token_bytes(token_id)
            if raw:
                return bytes(raw)
        piece = self._tok.convert_ids_to_tokens(token_id) if hasattr(self._tok, "convert_ids_to_tokens") else None
        if isinstance(piece, str) and self._byte_decoder is not None:
            try:
                return bytes(self._byte_decoder[c] for c in piece)
            except KeyError:  # an added (non byte-level) token: its text is literal
                return piece.encode("utf-8")
        if isinstance(piece, str) and piece in set(getattr(self._tok, "all_special_tokens", []) or []):
            return piece.encode("utf-8")
        return str(self._tok.decode([token_id])).encode("utf-8")


def special_stop_ids(tokenizer: Any, stops: Sequence[str]) -> set[int]:
    """Stop strings that are special tokens, as ids: they are matched by id, since a special
    token's text is never decoded into the reply."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    ids = set()
    for s in stops:
        if s in specials:
            tid = tokenizer.convert_tokens_to_ids(s)
            if isinstance(tid, int):
                ids.add(tid)
    return ids
