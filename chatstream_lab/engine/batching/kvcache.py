"""The KV cache as the backend uses it: one ``DynamicCache`` per prefill or batch, read and
replaced layer by layer (``get_kv`` / ``set_kv``) across transformers versions, with its layers
swapped for :func:`spare_room_layer_class` where the version has per-layer objects.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

KV = list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values) per layer, each [B, H, T, D]


def new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    spare_room = spare_room_layer_class()
    if layers and spare_room is not None:
        from transformers.cache_utils import DynamicLayer

        cache.layers = [spare_room() if type(layer) is DynamicLayer else layer for layer in layers]
    return cache


_SPARE_ROOM: list[Any] = []  # the class, made on first use (transformers is imported lazily)


def spare_room_layer_class() -> Any:
    """A ``DynamicLayer`` that appends each step's keys/values in place, into spare room.

    Why: the stock layer concatenates the whole cache every step (per layer, keys and values):
    at batch 16 that copying grows with the sequence and costs several % of a decode step. Here
    the layer keeps a buffer with room for ``GROW`` more positions and exposes the filled part
    as a view. Anything that replaces ``keys``/``values`` (a join or leave of the backend) is
    simply copied into a fresh buffer on the next append.
    """
    if _SPARE_ROOM:
        return _SPARE_ROOM[0]
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers < 4.56: no per-layer cache objects
        _SPARE_ROOM.append(None)
        return None

    class SpareRoomLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # transformers is untyped
        GROW = 128

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)  # type: ignore[no-untyped-call]  # transformers is untyped
            self._room: tuple[torch.Tensor, torch.Tensor] | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys, values = self.keys, self.values
            assert keys is not None and values is not None
            old = keys.shape[-2] if keys.numel() else 0
            new = old + key_states.shape[-2]
            room = self._room
            if (room is None or old == 0 or keys.data_ptr() != room[0].data_ptr()
                    or values.data_ptr() != room[1].data_ptr() or room[0].shape[:2] != key_states.shape[:2]
                    or new > room[0].shape[-2]):
                b, h, _, d = key_states.shape
                room = (key_states.new_empty(b, h, new + self.GROW, d),
                        value_states.new_empty(b, h, new + self.GROW, value_states.shape[-1]))
                if old:
                    room[0][:, :, :old].copy_(keys)
                    room[1][:, :, :old].copy_(values)
                self._room = room
            room[0][:, :, old:new].copy_(key_states)
            room[1][:, :, old:new].copy_(value_states)
            self.keys, self.values = room[0][:, :, :new], room[1][:, :, :new]
            return self.keys, self.values

        def reset(self) -> None:
            self._room = None
            super().reset()

    _SPARE_ROOM.append(SpareRoomLayer)
    return SpareRoomLayer


def get_kv(cache: Any) -> KV:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def set_kv(cache: Any, kv: KV) -> None:
    if hasattr(cache, "layers"):
        for layer, (k, v) in zip(cache.layers, kv):
            layer.keys, layer.values = k, v
    else:
        cache.key_cache[:] = [k for k, _ in kv]
        cache.value_cache[:] = [v for _, v in kv]


def pad_left(x: torch.Tensor, n: int, dim_from_end: int) -> torch.Tensor:
    if n == 0:
        return x
    pad = [0, 0] * dim_from_end + [n, 0]
    return F.pad(x, pad)


def can_load(cache: Any) -> bool:
    """Whether :func:`load_kv` applies: per-layer objects, all plain full-attention layers."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers < 4.56
        return False
    layers = getattr(cache, "layers", None) or ()
    return bool(layers) and all(type(layer) is DynamicLayer or type(layer) is spare_room_layer_class()
                                for layer in layers)


def load_kv(cache: Any, kv: KV) -> None:
    """Start the fresh ``cache`` from ``kv``. The tensors are not written to: a layer's first
    append concatenates (stock layer) or copies them into its own room (spare-room layer)."""
    for layer, (k, v) in zip(cache.layers, kv):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
