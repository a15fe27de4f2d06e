"""The server's bridge to models and prompts: which model, which template, which token ids.

Kept in one module so the HTTP code never guesses at a ChatPrompt's internals: a session's
conversation is a :class:`~chatstream_lab.prompts.ChatPrompt` (or a seed-style class with
``create_prompt()``/``get_stop_strs()``), and this module turns it into token ids with the
forge-safe template encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError, TemplateError
from ..models import LoadedModel

Encoded = tuple[list[int], tuple[str, ...], tuple[tuple[str, str], ...]]


def as_loaded_model(model: Any, tokenizer: Any = None, *, use_mock_response: bool = False,
                    engine: Any = None) -> LoadedModel:
    """A :class:`LoadedModel` from what the user passed (LoadedModel, or HF model + tokenizer)."""
    if use_mock_response:
        from ..models import scripted_model

        return scripted_model()
    if model is None and engine is not None:
        model = getattr(engine, "model", None)
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
    from ..prompts import resolve_template

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


def template_name(template: Any) -> str:
    return str(getattr(template, "name", type(template).__name__)) if template is not None else "custom"


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


def encode(prompt: Any, template: Any, model: LoadedModel) -> Encoded:
    """Token ids, stop strings and output replacements for a conversation ending in an open turn.

    A :class:`~chatstream_lab.prompts.ChatPrompt` encodes itself (forge-safe; a seed subclass that
    overrides ``create_prompt`` is tokenized from its string). Any other seed-style object is
    tokenized from ``create_prompt()``.
    """
    tok = model.tokenizer
    stops = tuple(s for s in (prompt.get_stop_strs() or ()) if s)
    if callable(getattr(prompt, "encode", None)):
        ids = list(prompt.encode(tok))
        replacements = tuple(prompt.get_output_replacements())
        if not stops and template is not None and getattr(prompt, "template", None) is None:
            stops = tuple(template.stop_strings)
        return ids, stops, replacements
    ids = list(tok.encode(prompt.create_prompt(), add_special_tokens=False))
    hook = getattr(prompt, "get_replacement_when_output", None)
    pairs = (hook() if callable(hook) else None) or ()
    return ids, stops, tuple((str(a), str(b)) for a, b in pairs)


def encode_messages(messages: Sequence[dict[str, Any]], template: Any, model: LoadedModel) -> Encoded:
    if template is None:
        raise TemplateError("no chat template: pass template= (a preset name) to ChatStream")
    ids = template.encode(model.tokenizer, list(messages), add_generation_prompt=True)
    return list(ids), tuple(template.stop_strings), tuple(template.output_replacements)


def check_engine_args(num_of_concurrent_executions: Any, max_queue_size: Any) -> None:
    """Fail in the constructor (not on the first request) for bad limits."""
    from ..admission import AdmissionGate

    AdmissionGate(num_of_concurrent_executions, max_queue_size)
