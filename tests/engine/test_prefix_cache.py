"""PrefixCache bookkeeping on a tiny random Llama (fast): what is stored, found, evicted, dropped."""

from __future__ import annotations

import pytest
import torch

from chatstream_lab.engine.batching.backends import HFBackend
from chatstream_lab.engine.batching.prefix_cache import PrefixCache, common_prefix_length

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny():
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _kv(n: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)) for _ in range(layers)]


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2 and common_prefix_length([], [1]) == 0


def test_a_prefix_is_worth_storing_only_if_shared_long_enough(tiny) -> None:
    cache = PrefixCache(tiny, min_tokens=4)
    shared = list(range(10, 20))
    assert cache.shareable([shared + [1, 2], shared + [3]]) == 10
    assert cache.shareable([shared[:3] + [1], shared[:3] + [2]]) == 0  # under min_tokens
    assert cache.shareable([shared + [5]]) == 0  # alone, and nothing seen before
    cache.remember([shared + [1, 2]])
    assert cache.shareable([shared + [7, 8]]) == 10  # shares its start with a recent prompt
    assert cache.shareable([shared + [1, 2]]) == 11  # the same prompt again: all but its last token


def test_lookup_finds_the_longest_stored_prefix_of_every_prompt(tiny) -> None:
    cache = PrefixCache(tiny, min_tokens=2)
    cache.store([1, 2, 3], _kv(3))
    cache.store([1, 2, 3, 4, 5], _kv(5))
    assert cache.lookup([[1, 2, 3, 4, 5, 6]]).length == 5
    assert cache.lookup([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9]]).length == 3
    assert cache.lookup([[1, 2, 3, 4, 5]]).length == 3  # at least one token must be left to run
    assert cache.lookup([[7, 1, 2, 3]]) is None
    assert cache.hits == 4 and cache.tokens_reused == 5 + 3 * 2 + 3


def test_entries_are_compact_copies_evicted_least_recently_used_first(tiny) -> None:
    one = 2 * 2 * (2 * 4 * 8 * 4)  # layers x (k, v) x [1, 2, 4, 8] float32 bytes, for 4 tokens
    cache = PrefixCache(tiny, capacity_bytes=2 * one, min_tokens=2)
    big = _kv(20)
    cache.store([1, 2, 3, 4], [(k[:, :, :4], v[:, :, :4]) for k, v in big])
    stored = cache.lookup([[1, 2, 3, 4, 5]]).kv
    assert stored[0][0].data_ptr() != big[0][0].data_ptr() and stored[0][0].is_contiguous()
    cache.store([5, 6, 7, 8], _kv(4))
    cache.lookup([[1, 2, 3, 4, 0]])  # touch the first: the second is now the oldest
    cache.store([9, 9, 9, 9], _kv(4))
    assert len(cache) == 2 and cache.nbytes == 2 * one
    assert cache.lookup([[5, 6, 7, 8, 0]]) is None and cache.lookup([[1, 2, 3, 4, 0]]) is not None


def test_changing_the_weights_in_place_drops_every_entry(tiny) -> None:
    cache = PrefixCache(tiny, min_tokens=2)
    cache.store([1, 2, 3], _kv(3))
    with torch.no_grad():
        next(tiny.parameters()).mul_(1.0)  # any in-place edit moves the version counter
    assert cache.lookup([[1, 2, 3, 4]]) is None and len(cache) == 0


def test_grouped_prefill_with_a_shared_prefix_gives_the_same_logits(tiny) -> None:
    shared = list(range(20, 40))
    prompts = [shared + [1, 2, 3], shared + [4], shared + [5, 6, 7, 8, 9]]
    plain = HFBackend(tiny, prefix_cache_bytes=0)
    cached = HFBackend(tiny)
    assert plain.prefixes is None and cached.prefixes is not None
    _, want = plain.prefill_group(prompts)
    _, got = cached.prefill_group(prompts)
    assert len(cached.prefixes) == 1 and cached.prefixes.hits == 3
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # and a row that joins from it decodes like one that did not share
    for backend in (plain, cached):
        pf, logits = backend.prefill_group(prompts)
        backend.join(["a", "b", "c"], pf)
    torch.testing.assert_close(cached.decode([7, 8, 9]), plain.decode([7, 8, 9]), rtol=1e-4, atol=1e-4)
