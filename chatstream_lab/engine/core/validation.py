"""What every engine checks of a request before anything is queued, written once.

A prompt that no model could run is refused here, synchronously, with an
:class:`~chatstream_lab.errors.InvalidParameter` that names the field (HTTP 400), so a bad request
never takes a slot and never reaches a runtime that would fail it late (the torch engine after
admission) or, worse, run it (OpenVINO looks up an embedding row that does not exist).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import InvalidParameter


def check_prompt(prompt_ids: Sequence[int], *, window: int, vocab_size: int | None,
                 messages: Sequence[Mapping[str, Any]] | None = None, takes_messages: bool = False,
                 engine: str = "this engine") -> list[int]:
    """The prompt's ids as ints, checked: not empty (unless ``messages`` stand in for it on an
    engine that ``takes_messages``), every id in ``[0, vocab_size)``, shorter than ``window``.

    Raises:
        InvalidParameter: what is wrong, naming the first bad id's position (``.name`` is the field).
    """
    ids = [int(i) for i in prompt_ids]
    if not ids:
        if not messages:
            raise InvalidParameter("the prompt is empty", name="prompt")
        if not takes_messages:
            raise InvalidParameter(f"{engine} takes the prompt as token ids, not messages: load the model "
                                   "with a tokenizer (and a chat template)", name="messages")
        return ids
    if min(ids) < 0 or (vocab_size is not None and max(ids) >= vocab_size):
        pos, bad = next((i, t) for i, t in enumerate(ids) if t < 0 or (vocab_size is not None and t >= vocab_size))
        allowed = f"ids 0..{vocab_size - 1}" if vocab_size is not None else "ids are 0 or more"
        raise InvalidParameter(f"prompt token id {bad} at position {pos} is outside the model's vocabulary "
                               f"({allowed})", name="prompt")
    if window and len(ids) >= window:
        raise InvalidParameter(f"the prompt has {len(ids)} tokens; the model's context window is {window}. "
                               "Shorten the conversation.", name="prompt")
    return ids


def tokenizer_vocab_size(tokenizer: Any) -> int | None:
    """How many ids ``tokenizer`` knows (its added tokens included); None without one."""
    if tokenizer is None:
        return None
    try:
        return int(len(tokenizer))
    except TypeError:
        size = getattr(tokenizer, "vocab_size", None)
        return int(size) if isinstance(size, int) else None


__all__ = ["check_prompt", "tokenizer_vocab_size"]
