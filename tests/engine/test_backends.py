"""The HF backend's two speed-ups must not change a single number: the in-place KV layer and the
oneDNN output head, each checked against the stock path it replaces."""

from __future__ import annotations

import pytest
import torch

from chatstream_lab.engine.batching.backends import HFBackend
from chatstream_lab.engine.batching.kvcache import spare_room_layer_class
from chatstream_lab.engine.batching.onednn import PackedHead, PackedLinears

DynamicLayer = pytest.importorskip("transformers.cache_utils").DynamicLayer


def test_spare_room_layer_appends_like_the_stock_layer() -> None:
    torch.manual_seed(0)
    ours, stock = spare_room_layer_class()(), DynamicLayer()
    steps = [torch.randn(2, 3, n, 4) for n in (5, 1, 1, 200, 1)]  # a prefill, decode steps, a long chunk
    for i, k in enumerate(steps):
        v = k * 2
        got, want = ours.update(k, v), stock.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert ours.get_seq_length() == stock.get_seq_length()
        if i == 1:  # someone (a join or leave) replaces the tensors: the next append starts from them
            for layer in (ours, stock):
                layer.keys, layer.values = layer.keys[:1, :, 2:].clone(), layer.values[:1, :, 2:].clone()
            steps[2:] = [s[:1] for s in steps[2:]]
    assert ours.keys.shape == (1, 3, 206, 4)  # 6 - 2 trimmed + 202


def test_spare_room_layer_does_not_copy_the_cache_each_step() -> None:
    layer = spare_room_layer_class()()
    layer.update(torch.randn(1, 2, 10, 4), torch.randn(1, 2, 10, 4))
    base = layer.keys.data_ptr()
    for _ in range(20):
        layer.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
    assert layer.keys.data_ptr() == base and layer.get_seq_length() == 30


@pytest.mark.real_model
def test_packed_head_gives_the_models_own_logits(real_model) -> None:
    head = PackedHead.supported(real_model.model)
    if head is None:
        pytest.skip("no oneDNN linear in this torch build")
    hidden = torch.randn(5, head.in_features)
    packed = PackedHead.for_model(real_model.model)
    with torch.inference_mode():
        first = packed(hidden)  # the first projection is the plain head's, and checks the packed one
        assert packed.verified is True and torch.equal(first, head(hidden))
        torch.testing.assert_close(packed(hidden), head(hidden), rtol=1e-4, atol=1e-3)
    # SmolLM2 (llama, fp32, CPU) takes the fast path, and every backend of the model shares one head
    assert HFBackend(real_model.model)._head is HFBackend(real_model.model)._head is packed


def test_a_packed_head_that_disagrees_is_not_used(monkeypatch) -> None:
    linear = torch.nn.Linear(8, 32, bias=False)
    packed = PackedHead(linear)
    monkeypatch.setattr(packed, "_packed_linear", lambda _linear, h: torch.zeros(h.shape[0], 32))
    hidden = torch.randn(2, 8)
    with torch.inference_mode():
        assert torch.equal(packed(hidden), linear(hidden)) and packed.verified is False
        assert torch.equal(packed(hidden), linear(hidden))


def test_packed_head_is_not_used_where_logits_are_not_a_plain_projection() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(cfg).eval()
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    assert PackedHead.supported(model) is model.lm_head
    assert PackedHead.supported(model.to(torch.bfloat16)) is None  # float32 only
    model.config.model_type = "gemma2"  # soft-capped logits: the model's own forward is kept
    assert PackedHead.supported(model.float()) is None


def _two_layers() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.ReLU(), torch.nn.Linear(48, 8, bias=False))


def _packed_mode(model: torch.nn.Module) -> PackedLinears:
    mode = PackedLinears.for_model(model)
    if mode is None:
        pytest.skip("no oneDNN linear in this torch build")
    return mode


def _assert_packed_equals_plain(model: torch.nn.Module, mode: PackedLinears, x: torch.Tensor) -> None:
    with torch.inference_mode():
        want = model(x)
        with mode:
            got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_packed_linears_give_the_plain_results_and_follow_weight_edits() -> None:
    model = _two_layers()
    mode = _packed_mode(model)
    x = torch.randn(16, 1, 24)
    _assert_packed_equals_plain(model, mode, x)
    assert len(mode._packed) == 2 and all(p is not None for _, p in mode._packed.values())
    with torch.no_grad():
        model[2].weight.mul_(-2.0)  # an in-place edit: the packed copy is remade
    _assert_packed_equals_plain(model, mode, x)
    assert PackedLinears.for_model(model)._packed is mode._packed  # one store per model


def test_packed_linears_leave_models_they_do_not_fit_alone(monkeypatch) -> None:
    if not PackedLinears.available():
        pytest.skip("no oneDNN linear in this torch build")
    assert PackedLinears.for_model(_two_layers().to(torch.bfloat16)) is None
    monkeypatch.setattr(PackedLinears, "MAX_BYTES", 100)
    assert PackedLinears.for_model(_two_layers()) is None


def test_packed_copies_follow_a_replaced_weight_and_drop_the_old_copy() -> None:
    model = _two_layers()
    mode = _packed_mode(model)
    x = torch.randn(4, 1, 24)
    _assert_packed_equals_plain(model, mode, x)
    model[2].weight = torch.nn.Parameter(torch.randn_like(model[2].weight))  # a new tensor, not an edit
    _assert_packed_equals_plain(model, mode, x)
    assert len(mode._packed) == 2  # the replaced weight's copy is gone
    head = torch.nn.Linear(8, 32, bias=False)
    packed = PackedHead(head)
    hidden = torch.randn(2, 8)
    with torch.inference_mode():
        packed(hidden)
        head.weight = torch.nn.Parameter(torch.randn_like(head.weight))
        torch.testing.assert_close(packed(hidden), head(hidden), rtol=1e-4, atol=1e-4)
