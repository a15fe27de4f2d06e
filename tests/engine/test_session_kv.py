"""Per-session KV kept across turns: bookkeeping on a tiny random Llama (fast), then the issue's
"done when" on the bundled SmolLM2 (greedy replies identical with reuse on and off)."""

from __future__ import annotations

import pytest
import torch

from chatstream_lab.config import SamplingParams
from chatstream_lab.engine.batching.backends import HFBackend
from chatstream_lab.engine.batching.session_cache import SessionKVCache

transformers = pytest.importorskip("transformers")

GREEDY16 = SamplingParams(temperature=0, max_new_tokens=16)


@pytest.fixture(scope="module")
def tiny():
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _kv(n: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)) for _ in range(layers)]


POSITION_BYTES = 2 * 2 * 2 * 8 * 4  # layers * (k, v) * heads * head_dim * float32


# -- bookkeeping -----------------------------------------------------------------------------------
def test_reuse_is_the_common_id_prefix_leaving_the_last_prompt_token_to_run(tiny) -> None:
    cache = SessionKVCache(tiny, 1 << 20, min_tokens=4)
    kept = list(range(10, 40))
    assert cache.put("s", kept, _kv(30))
    assert cache.reusable("s", kept[:20] + [1, 2, 3]) == 20  # the template changed turn 3 on
    assert cache.reusable("s", kept) == 29  # regenerate: all but the last position
    assert cache.reusable("s", kept[:3] + [5]) == 0  # too short to be worth a row alone
    assert cache.reusable("other", kept) == 0 and cache.reusable(None, kept) == 0
    hit = cache.take("s", kept[:20] + [1])
    assert hit is not None and hit.length == 20 and hit.kv[0][0].shape[2] == 20
    assert len(cache) == 0 and cache.nbytes == 0  # taken out while the turn runs
    s = cache.stats()
    assert (s.hits, s.reused_tokens, s.stored) == (1, 20, 1)


def test_entries_are_evicted_least_recently_used_first_and_the_batch_comes_first(tiny) -> None:
    cache = SessionKVCache(tiny, 25 * POSITION_BYTES, min_tokens=4)
    assert cache.put("a", list(range(10)), _kv(10))
    assert cache.put("b", list(range(10)), _kv(10))
    assert cache.put("c", list(range(10)), _kv(10))  # 30 positions > 25: "a" goes
    assert cache.reusable("a", list(range(11))) == 0 and cache.reusable("b", list(range(11))) == 10
    assert cache.nbytes <= cache.budget_bytes and cache.stats().evictions == 1
    cache.make_room(10 * POSITION_BYTES)  # the batch grows: kept entries make room
    assert len(cache) == 1 and cache.nbytes + 10 * POSITION_BYTES <= cache.budget_bytes
    assert not cache.put("d", list(range(20)), _kv(20))  # does not fit what the batch leaves
    assert cache.stats().evictions == 3 and cache.nbytes + cache.batch_bytes <= cache.budget_bytes


def test_forget_drops_the_entry_and_a_turn_in_flight_keeps_nothing(tiny) -> None:
    cache = SessionKVCache(tiny, 1 << 20, min_tokens=4)
    cache.put("s", list(range(10)), _kv(10))
    cache.forget("s")
    assert len(cache) == 0
    cache.put("s", list(range(10)), _kv(10))
    assert cache.take("s", list(range(12))) is not None
    cache.forget("s")  # cleared while its turn runs
    assert not cache.put("s", list(range(14)), _kv(14)) and len(cache) == 0
    assert cache.put("s", list(range(14)), _kv(14))  # the next turn keeps again


def test_changing_the_weights_in_place_drops_every_entry() -> None:
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(cfg).eval()
    cache = SessionKVCache(model, 1 << 20, min_tokens=4)
    cache.put("s", list(range(10)), _kv(10))
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)
    assert cache.take("s", list(range(12))) is None


# -- the backend: kept KV gives a full prefill's logits --------------------------------------------
def _decode_greedy(backend: HFBackend, keys: list[str], logits: torch.Tensor, steps: int) -> list[list[int]]:
    out = [[int(t)] for t in logits.argmax(-1).tolist()]
    for _ in range(steps):
        nxt = backend.decode([o[-1] for o in out]).argmax(-1).tolist()
        for o, t in zip(out, nxt):
            o.append(int(t))
    return out


def test_a_row_kept_from_a_padded_batch_continues_like_a_full_prefill(tiny) -> None:
    # rows prefilled as a group (shared prefix, left padding in the middle) and decoded together:
    # the kept KV is the real positions only, and the next prompt's logits equal a full prefill's
    shared = list(range(20, 40))
    prompts = [shared + [1, 2, 3, 4, 5, 6], shared + [7]]
    reuse = HFBackend(tiny, session_kv_bytes=1 << 20)
    pf, logits = reuse.prefill_group(prompts)
    reuse.join(["a", "b"], pf)
    replies = _decode_greedy(reuse, ["a", "b"], logits, steps=5)
    for key, prompt, reply in zip(["a", "b"], prompts, replies):
        reuse.keep(key, f"s-{key}", prompt + reply[:-1])
    reuse.leave({"a", "b"})
    assert reuse.sessions is not None and len(reuse.sessions) == 2
    plain = HFBackend(tiny, prefix_cache_bytes=0)
    for key, prompt, reply in zip(["a", "b"], prompts, replies):
        nxt = prompt + reply + [9, 8, 7]
        assert reuse.reusable(f"s-{key}", nxt) == len(prompt) + len(reply) - 1
        pf_reuse = reuse.start(nxt, f"s-{key}")
        assert pf_reuse.done == len(prompt) + len(reply) - 1
        got = reuse.prefill(pf_reuse, 1000)
        want = plain.prefill(plain.start(nxt), 1000)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert reuse.kv_stats().reused_tokens == sum(len(p) + len(r) - 1 for p, r in zip(prompts, replies))


def test_a_failed_row_keeps_nothing(tiny) -> None:
    backend = HFBackend(tiny, session_kv_bytes=1 << 20)
    pf = backend.start(list(range(30)), "s")
    backend.prefill(pf, 1000)
    backend.join("a", pf)
    backend.keep("a", "s", None)
    backend.leave({"a"})
    assert len(backend.sessions) == 0
    # ids that are not what the row's cache holds are refused, not stored
    pf = backend.start(list(range(30)), "s")
    backend.prefill(pf, 1000)
    backend.join("a", pf)
    backend.keep("a", "s", list(range(31)))
    backend.leave({"a"})
    assert len(backend.sessions) == 0


# -- the bundled model, through the engine -----------------------------------------------------------
TOPICS = ["the sea", "volcanoes", "owls", "the moon", "bread", "trains", "chess", "rain", "copper", "maps"]


def _user(i: int) -> str:
    return f"Turn {i}: tell me one short fact about {TOPICS[i % len(TOPICS)]}."


def _service(real_model, budget_mb: float, **limits):
    from chatstream_lab.config import Limits
    from chatstream_lab.service import Service

    return Service.build(real_model, params=GREEDY16, session_kv_budget_mb=budget_mb,
                         limits=Limits(limits.get("concurrency", 2), 4), gather_s=limits.get("gather_s", 0.01))


def _conversation(svc, session: str, turns: int, *, start: int = 0) -> list[str]:
    msgs: list[dict[str, str]] = []
    replies = []
    for i in range(start, start + turns):
        msgs.append({"role": "user", "content": _user(i)})
        fin = svc.submit(msgs, session_key=session).result(120)
        replies.append(fin.text)
        msgs.append({"role": "assistant", "content": fin.text})
    return replies


@pytest.fixture(scope="module")
def reference(real_model):
    """The greedy replies with reuse off (full prefill every turn), computed once."""
    svc = _service(real_model, 0)
    try:
        yield {"ten": _conversation(svc, "x", 10)}
    finally:
        svc.close()


@pytest.mark.real_model
@pytest.mark.timeout(300)
def test_greedy_replies_are_identical_with_reuse_on_and_off_over_ten_turns(real_model, reference) -> None:
    svc = _service(real_model, 256)
    try:
        assert svc.stats().kv_cache is None  # nothing built yet
        got = _conversation(svc, "s", 10)
        kv = svc.stats().kv_cache
    finally:
        svc.close()
    assert got == reference["ten"]
    assert len(set(got)) > 3  # a real conversation, not one reply repeated
    assert kv is not None and kv.hits == 9 and kv.entries == 1 and kv.stored == 10
    # turns 2..10 prefilled only what was new: most prompt positions were reused
    assert kv.reused_tokens > 3 * kv.prefilled_tokens


@pytest.mark.real_model
@pytest.mark.timeout(300)
def test_regenerate_reuses_the_prompt_without_the_reply_and_clear_drops_it(real_model) -> None:
    from chatstream_lab.prompts import encode_messages

    svc = _service(real_model, 256)
    plain = _service(real_model, 0)
    try:
        msgs = [{"role": "user", "content": _user(0)}]
        first = svc.submit(msgs, session_key="s").result(60)
        prompt_len = len(encode_messages(svc.template, real_model.tokenizer, msgs).ids)
        regen = svc.submit(msgs, session_key="s").result(60)  # the same prompt again: regenerate
        kv = svc.stats().kv_cache
        assert regen.text == first.text == plain.submit(msgs).result(60).text
        assert kv.hits == 1 and kv.reused_tokens == prompt_len - 1  # the whole prompt but its last token
        svc.forget("s")
        assert svc.stats().kv_cache.entries == 0
        other = [{"role": "user", "content": _user(5)}]
        assert svc.submit(other, session_key="s").result(60).text == plain.submit(other).result(60).text
        assert svc.stats().kv_cache.hits == 1  # nothing was kept to reuse after the clear
    finally:
        svc.close()
        plain.close()


@pytest.mark.real_model
@pytest.mark.timeout(300)
def test_a_tiny_budget_evicts_stays_within_it_and_evicted_sessions_answer_the_same(real_model, reference) -> None:
    # ~45 KiB per position: 9 MiB keeps one session of ~200 positions, not three
    svc = _service(real_model, 9, concurrency=1)
    budget = 9 << 20
    try:
        msgs: dict[str, list[dict[str, str]]] = {s: [] for s in "abc"}
        replies: dict[str, list[str]] = {s: [] for s in "abc"}
        for i in range(4):
            for s in "abc":  # round robin: each session's entry is evicted before its next turn
                msgs[s].append({"role": "user", "content": _user(i)})
                fin = svc.submit(msgs[s], session_key=s).result(60)
                replies[s].append(fin.text)
                msgs[s].append({"role": "assistant", "content": fin.text})
                kv = svc.stats().kv_cache
                assert kv.bytes <= budget and kv.bytes + kv.batch_bytes <= budget
        kv = svc.stats().kv_cache
    finally:
        svc.close()
    assert kv.evictions > 0
    assert all(r == reference["ten"][:4] for r in replies.values())


@pytest.mark.real_model
@pytest.mark.timeout(300)
def test_two_sessions_interleaved_in_one_batch_both_reuse(real_model, reference) -> None:
    svc = _service(real_model, 256, concurrency=2, gather_s=0.05)
    steps: list[int] = []
    svc.warm(wait=True, timeout=120)  # the step backend is built on the engine's thread
    backend = svc.generator._decoder.backend
    widths: list[int] = []
    decode = backend.decode
    backend.decode = lambda tokens: (widths.append(len(tokens)), decode(tokens))[1]
    try:
        msgs: dict[str, list[dict[str, str]]] = {"a": [], "b": []}
        out: dict[str, list[str]] = {"a": [], "b": []}
        offset = {"a": 0, "b": 3}
        for i in range(3):
            streams = {}
            for s in "ab":
                msgs[s].append({"role": "user", "content": _user(i + offset[s])})
                streams[s] = svc.submit(msgs[s], session_key=s)
            for s in "ab":
                fin = streams[s].result(120)
                out[s].append(fin.text)
                msgs[s].append({"role": "assistant", "content": fin.text})
            steps.append(svc.stats().kv_cache.hits)
        kv = svc.stats().kv_cache
    finally:
        svc.close()
    plain = _service(real_model, 0)
    try:
        want_b = _conversation(plain, "y", 3, start=3)
    finally:
        plain.close()
    assert out["a"] == reference["ten"][:3] and out["b"] == want_b
    assert steps == [0, 2, 4] and kv.entries == 2  # both sessions reused on turns 2 and 3
    assert max(widths) == 2  # and they decoded in one batch
