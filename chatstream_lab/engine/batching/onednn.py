"""oneDNN kernels for the torch backend on CPU float32 (opt-in per backend: ``onednn=False`` turns
them off). Both are checked against the plain torch result on first use and follow weight edits.

* :class:`PackedHead`: the vocabulary projection of the last position as a oneDNN linear over
  prepacked weights (about 2x the default sgemm for SmolLM2's 49152 x 576 head).
* :class:`PackedLinears`: a ``TorchFunctionMode`` entered only around decode forwards of several
  rows, sending every float32 CPU ``F.linear`` to oneDNN over weight copies reordered for small
  batches (about 1.1x per batch-16 step).

They rest on private ``torch.ops.mkldnn`` ops, which is why they live apart from the batching
code and can be switched off.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .prefix_cache import write_count

# -- the output projection, through oneDNN on CPU -------------------------------------------
# Model types whose causal-LM head is exactly ``lm_head(final hidden state)`` (no soft-capping, no
# logit scaling), so computing it outside the model's forward gives the same logits.
_PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _mkldnn_available() -> bool:
    return bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]  # untyped in torch


def _stamp(w: torch.Tensor) -> tuple[Any, int, int]:
    """What a packed copy was made from: the tensor itself (weakly: a new tensor can reuse a dead
    one's id and address), where its data lives, and its in-place write count."""
    return weakref.ref(w), w.data_ptr(), write_count(w)


def _made_from(stamp: tuple[Any, int, int] | None, w: torch.Tensor) -> bool:
    return stamp is not None and stamp[0]() is w and stamp[1] == w.data_ptr() and stamp[2] == write_count(w)


class PackedHead:
    """The vocabulary projection of the last position, as a oneDNN linear over prepacked weights.

    Why: on CPU the 49152 x 576 projection of SmolLM2 is a fifth of a batch-16 decode step, and
    oneDNN runs it about twice as fast as the default sgemm (``benchmarks/profile_engine.py``).
    The packed copy (one more copy of the head's weights) is rebuilt when the weights change
    in place (their version counter moves), so editing the model in a notebook is safe. Its first
    projection is checked against the head's own; on a mismatch the plain head is used.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        self._linear = weakref.ref(linear)  # the memo below is keyed by the module: no cycle
        self._packed: torch.Tensor | None = None
        self._stamp: tuple[Any, int, int] | None = None
        self.verified: bool | None = None  # None until the first projection

    @staticmethod
    def supported(model: Any) -> torch.nn.Linear | None:
        """The model's head if this path applies to it (CPU, float32, a plain head), else None."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        config = getattr(model, "config", None)
        if not isinstance(head, torch.nn.Linear) or getattr(config, "model_type", None) \
                not in _PLAIN_HEAD_MODEL_TYPES or getattr(model, "base_model_prefix", "") != "model":
            return None
        if head.weight.device.type != "cpu" or head.weight.dtype != torch.float32:
            return None
        if not (_mkldnn_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return None
        return head

    @classmethod
    def for_model(cls, model: Any) -> PackedHead | None:
        """The model's packed head, shared by every backend of the model (packing costs ~60 ms and
        a copy of the weights: an inline ``stream()`` makes a backend per request)."""
        head = cls.supported(model)
        if head is None:
            return None
        with _PACKED_LOCK:
            packed = _PACKED.get(head)
            if packed is None:
                packed = _PACKED[head] = cls(head)
        return packed

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        linear = self._linear()
        assert linear is not None
        if self.verified is None:
            expected: torch.Tensor = linear(hidden)
            try:
                self.verified = torch.allclose(self._packed_linear(linear, hidden), expected, rtol=1e-4, atol=1e-3)
            except RuntimeError:
                self.verified = False
            return expected
        if self.verified:
            return self._packed_linear(linear, hidden)
        plain: torch.Tensor = linear(hidden)
        return plain

    def _packed_linear(self, linear: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
        w = linear.weight
        if not _made_from(self._stamp, w):
            self._packed, self._stamp = w.detach().to_mkldnn(), _stamp(w)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), self._packed, linear.bias,
                                                               "none", [], "")
        return out


# A memo, not state: one packed head per head module, gone with the module.
_PACKED: weakref.WeakKeyDictionary[torch.nn.Linear, PackedHead] = weakref.WeakKeyDictionary()
_PACKED_LOCK = threading.Lock()


class PackedLinears(TorchFunctionMode):
    """While active, every ``F.linear`` on a float32 CPU weight runs as a oneDNN linear over a
    copy of the weight reordered for small batches.

    Why: a batched decode step multiplies a few rows by every weight matrix; at 16 rows MKL's
    sgemm leaves much of the machine idle, and the reordered oneDNN kernel makes the step
    ~1.14x faster here (16 rows, median of 4), while at one row it is no faster.
    The backend turns it on only for decode steps of several rows. The model is not touched:
    the mode intercepts the calls of this thread's forward only. Costs one more copy of the
    weights (made on first use, remade when a weight changes in place); each weight's first
    packed product is checked against ``F.linear``, and a weight that disagrees stays plain.
    """

    MAX_BYTES = 1 << 30  # only for models whose linear weights are small enough to copy

    def __init__(self, store: dict[int, tuple[tuple[Any, int, int], torch.Tensor | None]] | None = None) -> None:
        super().__init__()
        self._packed = store if store is not None else {}

    @classmethod
    def for_model(cls, model: Any) -> PackedLinears | None:
        """A mode whose packed weights are shared by every backend of ``model`` (None where the
        path does not apply: no oneDNN, weights not float32 on CPU, or over ``MAX_BYTES``)."""
        if not cls.available():
            return None
        weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not weights or any(w.dtype != torch.float32 or w.device.type != "cpu" for w in weights):
            return None
        if sum(w.numel() * w.element_size() for w in weights) > cls.MAX_BYTES:
            return None
        with _PACKED_LOCK:
            store = _PACKED_LINEARS.get(model)
            if store is None:
                store = _PACKED_LINEARS[model] = {}
        return cls(store)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2 and not kwargs:
            x, w = args[0], args[1]
            bias = args[2] if len(args) > 2 else None
            if w.dtype == torch.float32 and w.device.type == "cpu" and x.dtype == torch.float32:
                packed = self._weight(w, x, bias)
                if packed is not None:
                    flat = x.reshape(-1, x.shape[-1]).contiguous()
                    y = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")
                    return y.reshape(*x.shape[:-1], y.shape[-1])
        return func(*args, **kwargs)

    def _weight(self, w: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        entry = self._packed.get(id(w))
        if entry is not None and _made_from(entry[0], w):
            return entry[1]
        for dead in [k for k, (stamp, _) in self._packed.items() if stamp[0]() is None]:
            del self._packed[dead]  # weights that were replaced: drop their copies
        packed: torch.Tensor | None = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 16)
        try:
            probe = x.reshape(-1, x.shape[-1]).contiguous()
            got = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")
            if not torch.allclose(got, F.linear(probe, w, bias), rtol=1e-4, atol=1e-4):
                packed = None
        except RuntimeError:
            packed = None
        self._packed[id(w)] = (_stamp(w), packed)
        return packed

    @staticmethod
    def available() -> bool:
        return _mkldnn_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") \
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# Memos, like _PACKED: the packed weights of a model, gone with the model.
_PACKED_LINEARS: weakref.WeakKeyDictionary[Any, dict[int, tuple[tuple[Any, int, int], torch.Tensor | None]]] = \
    weakref.WeakKeyDictionary()
