"""Scoring: the log-probabilities of a *given* continuation, teacher-forced in one forward.

``score(model, messages, reply)`` answers "how likely is this reply as the assistant's answer?"
(per token, with alternatives), which is what evaluation harnesses and template comparisons
need; ``/v1/completions`` with ``echo`` uses the same code for prompt logprobs. The numbers are
of the raw model distribution, like the streamed ones (:class:`~chatstream_lab.types.TokenLogprob`).

Inside a running engine the forward runs on the engine thread (``Engine.score``, a job between
two steps); ``score()`` here runs it directly in the calling thread, like ``stream()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...config import SamplingParams
from ...errors import InvalidParameter
from ...types import Message, ReplyScore, TokenLogprob
from ..core.detokenize import TokenPieces
from ..core.protocol import StepBackend


def check_score_request(ids: Sequence[int], start: int, top: int, window: int = 0) -> None:
    """Raise InvalidParameter (naming the field) for a request no model could score."""
    SamplingParams(logprobs=top)  # validates top (0..20) with the field named "logprobs"
    if len(ids) < 2 or not 1 <= start < len(ids):
        raise InvalidParameter("nothing to score: give a non-empty prompt and a non-empty reply",
                               name="reply")
    if window and len(ids) > window:
        raise InvalidParameter(f"prompt + reply hold {len(ids)} tokens; the model's context window is "
                               f"{window}", name="reply")


def score_ids(backend: StepBackend[Any], pieces: TokenPieces, ids: Sequence[int], start: int,
              top: int = 0) -> tuple[TokenLogprob, ...]:
    """Logprobs of ``ids[start:]`` given what precedes each, with ``top`` alternatives each."""
    from .decoder import logprob_rows, token_logprob

    logits = backend.score(ids, start)
    params = [SamplingParams(logprobs=top)] * logits.shape[0]
    rows = logprob_rows(params, logits)
    out = []
    for j, lp in enumerate(rows):
        assert lp is not None
        out.append(token_logprob(pieces, int(ids[start + j]), lp))
    return tuple(out)


def score(model: Any, messages: str | list[Message], reply: str, template: Any = None, *,
          top: int = 0) -> ReplyScore:
    """Per-token log-probabilities of ``reply`` as the assistant's answer to ``messages``.

    Args:
        model: a local :class:`~chatstream_lab.models.LoadedModel` (a remote one has no weights
            here: InvalidParameter).
        messages: the conversation (a string is one user message); the template renders it
            ending in an open assistant turn, exactly as for generation.
        reply: the assistant's answer to score (its tokens only, no end-of-turn token).
        template: None (the model's own chat template), a preset name or a template object.
        top: alternatives per token (0..20).

    Returns:
        a :class:`~chatstream_lab.types.ReplyScore` (``.tokens``, ``.logprob``, ``.mean_logprob``).
    """
    from ...prompts import encode_messages, encode_reply
    from ...prompts.resolve import resolve_served_template
    from ..core.detokenize import DetokenizerFactory
    from ..factory import backend_name, capabilities_of
    from .backends import for_model

    if not capabilities_of(model).scoring:
        raise InvalidParameter(f"scoring needs the model's own logits; a {backend_name(model)} model cannot "
                               "score: load it with load_model(..., backend='torch')", name="model")
    prompt = encode_messages(resolve_served_template(template, model.tokenizer), model.tokenizer, messages)
    reply_ids = encode_reply(model.tokenizer, reply)
    ids = [*prompt.ids, *reply_ids]
    check_score_request(ids, len(prompt.ids), top, int(getattr(model, "context_window", 0) or 0))
    backend = for_model(model, prefix_cache_bytes=0, onednn=False)
    pieces = DetokenizerFactory(model.tokenizer).pieces()
    return ReplyScore(score_ids(backend, pieces, ids, len(prompt.ids), top), len(prompt.ids))
