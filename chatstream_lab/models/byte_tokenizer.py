"""A tiny byte-level tokenizer with the subset of the HF tokenizer API the package uses.

It lets the scripted model, the engine and the server run end to end without any download:
ids 0..255 are raw UTF-8 bytes (so multi-byte characters really arrive split over tokens),
then a few special tokens.
"""

from __future__ import annotations

import re
from typing import Any

_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ByteTokenizer:
    """UTF-8 bytes as tokens, plus ChatML special tokens; HF-compatible where it matters."""

    def __init__(self) -> None:
        self.special_ids = {tok: 256 + i for i, tok in enumerate(_SPECIALS)}
        self.id_to_special = {i: t for t, i in self.special_ids.items()}
        self.eos_token = "<|im_end|>"
        self.eos_token_id = self.special_ids["<|im_end|>"]
        self.bos_token: str | None = None
        self.bos_token_id: int | None = None
        self.pad_token_id = self.special_ids["<|endoftext|>"]
        self.chat_template = CHATML_TEMPLATE
        self.all_special_tokens = list(_SPECIALS)
        self.all_special_ids = list(self.id_to_special)
        self.vocab_size = 256 + len(_SPECIALS)
        self._split = re.compile("(" + "|".join(re.escape(s) for s in _SPECIALS) + ")")

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = False,
               split_special_tokens: bool = False, **_: Any) -> list[int]:
        if split_special_tokens:
            return list(text.encode("utf-8"))
        ids: list[int] = []
        for part in self._split.split(text):
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                ids.extend(part.encode("utf-8"))
        return ids

    def __call__(self, text: str, add_special_tokens: bool = False,
                 split_special_tokens: bool = False, **_: Any) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens, split_special_tokens)}

    def decode(self, ids: Any, skip_special_tokens: bool = False, **_: Any) -> str:
        out = bytearray()
        pieces: list[str] = []
        for i in list(ids):
            i = int(i)
            if i < 256:
                out.append(i)
                continue
            if not skip_special_tokens:
                pieces.append(out.decode("utf-8", errors="replace"))
                out = bytearray()
                pieces.append(self.id_to_special[i])
        pieces.append(out.decode("utf-8", errors="replace"))
        return "".join(pieces)

    def token_bytes(self, token_id: int) -> bytes | None:
        """Raw bytes of a token, or None for a special token (used by the detokenizer)."""
        return bytes([token_id]) if token_id < 256 else None

    def convert_ids_to_tokens(self, ids: Any) -> Any:
        if isinstance(ids, int):
            return self.id_to_special.get(ids) or bytes([ids]).decode("latin-1")
        return [self.convert_ids_to_tokens(int(i)) for i in ids]

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.special_ids.get(token)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = False,
                            tokenize: bool = True, **_: Any) -> Any:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text) if tokenize else text
