"""The detokenizer never emits a broken character and its segments concatenate to the decode."""

from __future__ import annotations

import pytest

from chatstream_lab.engine.core.detokenize import Detokenizer, DetokenizerFactory
from chatstream_lab.models import ByteTokenizer

SAMPLES = ["日本の首都は東京です。", "emoji 🎉👨‍👩‍👧 done", "naïve café", "plain ascii\n\n  spaces"]


def _segments(factory: DetokenizerFactory, ids: list[int]) -> list[str]:
    d = factory()
    return [d.add(i) for i in ids] + [d.finalize()]


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_tokenizer_segments_concatenate(text: str) -> None:
    tok = ByteTokenizer()
    segs = _segments(DetokenizerFactory(tok), tok.encode(text))
    assert "".join(segs) == text
    assert not any("\ufffd" in s for s in segs)


def test_trailing_partial_character_is_dropped() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("ok 🎉")[:-2]  # cut inside the emoji, as max_new_tokens can
    segs = _segments(DetokenizerFactory(tok), ids)
    assert "".join(segs) == "ok "


class _DecodeOnly:
    """A tokenizer with only decode(): exercises the generic windowed path."""

    def __init__(self) -> None:
        self.inner = ByteTokenizer()
        self.all_special_ids = self.inner.all_special_ids

    def decode(self, ids, skip_special_tokens=False):
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.parametrize("text", SAMPLES)
def test_generic_path_segments_concatenate(text: str) -> None:
    tok = _DecodeOnly()
    d = Detokenizer(tok)
    segs = [d.add(i) for i in tok.inner.encode(text)] + [d.finalize()]
    assert "".join(segs) == text
    assert not any("\ufffd" in s for s in segs)


@pytest.mark.real_model
@pytest.mark.parametrize("text", SAMPLES + ["🇯🇵🏳️‍🌈 混合 text"])
def test_real_tokenizer_segments_concatenate(real_model, text: str) -> None:
    tok = real_model.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    segs = _segments(DetokenizerFactory(tok), ids)
    assert "".join(segs) == tok.decode(ids)
    assert not any("\ufffd" in s for s in segs)


@pytest.mark.real_model
def test_real_tokenizer_splits_an_emoji_and_the_detokenizer_holds_it(real_model) -> None:
    tok = real_model.tokenizer
    ids = tok.encode("🎉", add_special_tokens=False)
    assert len(ids) > 1  # byte-level BPE spreads the emoji over several tokens
    segs = _segments(DetokenizerFactory(tok), ids)
    assert segs[:-1].count("") >= 1 and "".join(segs) == "🎉"
