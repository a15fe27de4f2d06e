"""The seed facade's bridge to models and prompts: which model, which template, which session
conversation object.

Kept in one module so the HTTP code never guesses at a ChatPrompt's internals: a session's
conversation is a :class:`~chatstream_lab.prompts.ChatPrompt` (or a seed-style class with
``create_prompt()``/``get_stop_strs()``); :func:`~chatstream_lab.prompts.encode_chat_prompt`
turns it into token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, TemplateError
from ..models import LoadedModel
from ..prompts import EncodedPrompt


def as_loaded_model(model: Any, tokenizer: Any = None, *, use_mock_response: bool = False) -> LoadedModel:
    """A :class:`LoadedModel` from what the user passed (LoadedModel, or HF model + tokenizer)."""
    if use_mock_response:
        from ..models import scripted_model

        return scripted_model()
    if isinstance(model, LoadedModel):
        if tokenizer is not None and tokenizer is not model.tokenizer:
            raise ConfigError("tokenizer= is only for a bare HF model; a LoadedModel has its own",
                              name="tokenizer")
        return model
    if model is None:
        raise ConfigError("ChatStream needs a model: ChatStream(model=load_model()) or "
                          "ChatStream(model=hf_model, tokenizer=hf_tokenizer)", name="model")
    if tokenizer is None:
        raise ConfigError("a bare HF model needs its tokenizer: ChatStream(model=m, tokenizer=t)",
                          name="tokenizer")
    from ..models import from_hf

    return from_hf(model, tokenizer)


def resolve(template: Any, chat_prompt_clazz: Any, tokenizer: Any) -> Any:
    """The template for stateless requests (OpenAI routes) and for ChatPrompts without their own."""
    from ..prompts.resolve import resolve_served_template as resolve_template

    if template is None and chat_prompt_clazz is not None:
        own = getattr(chat_prompt_clazz, "template", None)
        if own is not None and not isinstance(own, property):
            template = own
    try:
        return resolve_template(template, tokenizer)
    except TemplateError:
        if template is None and chat_prompt_clazz is not None:
            return None  # a seed-style class that renders its own prompt string
        raise


def prompt_factory(chat_prompt_clazz: Any, template: Any) -> Callable[[], Any]:
    """What a new session's conversation is made with: ``chat_prompt_clazz()`` (seed style, its
    ``build_initial_prompt`` hook called once) or ``ChatPrompt(template=...)``. A ChatPrompt without
    a template gets the ChatStream's, so ``create_prompt()`` works without a tokenizer."""
    from ..prompts import ChatPrompt

    if chat_prompt_clazz is not None and not callable(chat_prompt_clazz):
        raise ConfigError("chat_prompt_clazz must be a class (or a callable returning a ChatPrompt)",
                          name="chat_prompt_clazz")

    def new_prompt() -> Any:
        if chat_prompt_clazz is None:
            return ChatPrompt(template=template)
        prompt = chat_prompt_clazz()
        if isinstance(prompt, ChatPrompt) and prompt.template is None and template is not None:
            prompt.template = template
        hook = getattr(prompt, "build_initial_prompt", None)
        if callable(hook):
            hook(prompt)
        return prompt

    return new_prompt


def messages_of(prompt: Any) -> list[dict[str, str]]:
    """The conversation as ``[{"role", "content"}]`` (an open responder turn left out)."""
    to_messages = getattr(prompt, "to_messages", None)
    msgs = to_messages() if callable(to_messages) else getattr(prompt, "messages", None)
    if msgs is None:
        return []
    return [{"role": str(m["role"]), "content": m["content"]} for m in msgs
            if m.get("content") is not None]


def prompt_text(prompt: Any) -> str:
    return str(prompt.create_prompt())


def prompt_budget(model: Any, max_new_tokens: int) -> int:
    """Prompt tokens a turn may use: the context window less room for the reply (its
    ``max_new_tokens``, at most half the window). 0 when the window is unknown (no trimming)."""
    window = int(getattr(model, "context_window", 0) or 0)
    if window <= 1:
        return 0
    return window - max(1, min(int(max_new_tokens), window // 2))


def fit_to_window(prompt: Any, encode: Callable[[Any], EncodedPrompt], budget: int) -> tuple[EncodedPrompt, int]:
    """Encode a session's working conversation, dropping its oldest whole turns (a user message
    and the replies after it) while the prompt is over ``budget`` tokens.

    The system prompt (kept apart from the turns) and the last user turn always stay: a turn
    that alone is too long is left to the engine's own refusal. Conversations that are not
    ChatPrompt-like (no ``chat_contents`` list) or have no token ids (a remote model's own
    template) are encoded untouched. Returns the encoding and how many user turns were dropped;
    ``prompt`` is trimmed in place (it is the turn's private copy, committed with the reply).
    """
    encoded = encode(prompt)
    contents = getattr(prompt, "chat_contents", None)
    dropped = 0
    while budget > 0 and encoded.ids and len(encoded.ids) > budget and isinstance(contents, list):
        starts = [i for i, c in enumerate(contents) if getattr(c, "role", None) == "user"]
        if len(starts) < 2:
            break
        del contents[:starts[1]]  # the oldest turn: its user message and every reply up to the next one
        dropped += 1
        encoded = encode(prompt)
    return encoded, dropped
