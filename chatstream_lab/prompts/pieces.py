"""Token pieces as a person reads them: byte-level markers decoded, whitespace made visible.

Byte-level BPE vocabularies (GPT-2, SmolLM2, Llama 3...) spell a space ``Ġ`` and a newline ``Ċ``;
a token chip or a list of alternatives should show ``␣the`` and ``↵``, not ``Ġthe`` and ``Ċ``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

_GLYPHS = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte <-> printable-unicode table, inverted (the same table the tokenizers use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return decoder is not None and "ByteLevel" in type(decoder).__name__ + repr(decoder)[:200]


def piece_text(piece: str, byte_level: bool) -> str:
    """The text a vocabulary piece stands for (``"Ġthe"`` -> ``" the"`` when ``byte_level``)."""
    if not byte_level:
        return piece.replace("▁", " ")  # SentencePiece's word marker
    table = _unicode_to_byte()
    if not all(c in table for c in piece):
        return piece  # an added token (``<|im_end|>``): literal
    return bytes(table[c] for c in piece).decode("utf-8", errors="replace")


def visible(text: str) -> str:
    """Whitespace as glyphs: ``" the\\n"`` -> ``"␣the↵"`` (for chips, tooltips and buttons)."""
    return text.translate(_GLYPHS)
