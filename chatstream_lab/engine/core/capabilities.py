"""What a generator can do, declared: :class:`Capabilities`.

Callers (the OpenAI routes, ``Lab`` and its widgets, ``stream()``, ``score()``) ask this value
instead of guessing from the model's backend name. It is known before anything is built: the
factory answers it for a model (``capabilities_of``, what ``Service.capabilities`` returns), and
every generator reports the same value (``Generator.capabilities``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What one generator can do (each field False where it cannot).

    Attributes:
        logprobs: token log-probabilities with top-K alternatives on streamed tokens
            (``SamplingParams.logprobs``): our sampler sees the model's raw logits.
        scoring: teacher-forced logprobs of a given reply (``score``, ``echo`` on
            ``/v1/completions``, ``compare(reference=)``).
        grammar: constrained decoding (structured output); no engine has it yet.
        kv_reuse: a session's earlier turns are not prefilled again (``session_key``, or a
            runtime's own prefix cache).
        reply_token_ids: the reply's ``Delta`` events carry the model's own token ids, so a
            reply can be continued from any of its tokens (the widgets' branch buttons).
        message_prompts: a prompt may be chat messages that the engine renders itself (a remote
            model without a local tokenizer).
        inline: ``stream()`` and ``score()`` can run the model in the caller's thread (no engine
            thread): the batching engine's step backends.
        remote: tokens come from another server: its failures are a bad gateway (502), not ours.
    """

    logprobs: bool = False
    scoring: bool = False
    grammar: bool = False
    kv_reuse: bool = False
    reply_token_ids: bool = True
    message_prompts: bool = False
    inline: bool = False
    remote: bool = False


__all__ = ["Capabilities"]
