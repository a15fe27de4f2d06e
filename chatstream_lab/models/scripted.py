"""ChatStream's "mock response" mode, done as a model: deterministic replies, no weights.

``scripted_model()`` returns a :class:`LoadedModel` whose model is a :class:`ScriptedLM`. The
engine drives it through the same decoder as a real model (sampling, stop strings, batching,
cancellation), so tests and UI work exercise the real control flow in milliseconds. It can be
slowed down (``token_delay``) to hold slots in concurrency tests, and told to fail
(``fail_after``) to test error paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .byte_tokenizer import ByteTokenizer
from .loaded import Backend, LoadedModel

ReplyFn = Callable[[str], str]

_LAST_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


def echo_reply(prompt: str) -> str:
    """Default script: a reply that quotes the last user message, so tests can tell turns apart."""
    users = _LAST_USER.findall(prompt)
    last = users[-1] if users else prompt[-40:]
    return f"You said: {last}. This is a scripted reply."


@dataclass(frozen=True)
class ScriptedLM:
    """A stand-in language model whose next token is read from a script.

    Args:
        reply: the reply text, or a function from the rendered prompt to the reply.
        token_delay: seconds each decode step sleeps (on the engine thread), per step.
        fail_after: raise RuntimeError after this many generated tokens (None: never).
    """

    reply: str | ReplyFn = echo_reply
    token_delay: float = 0.0
    fail_after: int | None = None
    is_scripted: bool = True

    def reply_for(self, prompt: str) -> str:
        return self.reply(prompt) if callable(self.reply) else self.reply


def scripted_model(reply: str | ReplyFn = echo_reply, *, token_delay: float = 0.0,
                   fail_after: int | None = None, context_window: int = 4096) -> LoadedModel:
    """A :class:`LoadedModel` with a scripted LM and a byte tokenizer (ChatML chat template).

    >>> from chatstream_lab import scripted_model, stream
    >>> "".join(ev.text for ev in stream(scripted_model("Hi!"), [{"role": "user", "content": "x"}])
    ...         if hasattr(ev, "text") and not hasattr(ev, "finish_reason"))
    'Hi!'
    """
    tok = ByteTokenizer()
    return LoadedModel(
        name="scripted", model=ScriptedLM(reply, token_delay, fail_after), tokenizer=tok,
        source="scripted", device="cpu", dtype="float32", context_window=context_window,
        stop_token_ids=(tok.eos_token_id,), backend=Backend.SCRIPTED,
    )
