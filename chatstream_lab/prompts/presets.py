"""Named chat formats: ``presets.get("llama3")``, ``presets.names()``, ``presets.register(name, t)``.

Each preset renders a conversation exactly as the model family's official chat template does (the
tests render the official Jinja sources next to them). Formats without an official Jinja template
follow their authors' documented format; the source is cited beside each.
``presets.chatml`` (attribute access) works too.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from ..errors import TemplateError
from .base import is_template
from .declarative import DeclarativeTemplate

_REGISTRY: dict[str, Any] = {}
_BUILTIN: set[str] = set()


def _key(name: str) -> str:
    return re.sub(r"[\s_.\-]", "", name.lower())


def names() -> list[str]:
    """Registered preset names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> Any:
    """The template registered as ``name`` (case, ``-``, ``_`` and ``.`` ignored).

    Raises TemplateError listing the known names, with a close match if there is one.
    """
    if not isinstance(name, str):
        raise TemplateError(f"a preset name must be a string, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    wanted = _key(name)
    for known, template in _REGISTRY.items():
        if _key(known) == wanted:
            return template
    close = difflib.get_close_matches(name.lower(), names(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TemplateError(f"unknown chat template preset {name!r}{hint} Known presets: "
                        f"{', '.join(names())}")


def register(name: str, template: Any, *, overwrite: bool = False) -> Any:
    """Register ``template`` under ``name`` and return it.

    Re-registering a name of your own replaces it (re-running a notebook cell is safe); replacing a
    built-in preset needs ``overwrite=True``.
    """
    if not isinstance(name, str) or not name.strip():
        raise TemplateError(f"a preset name must be a non-empty string, got {name!r}")
    if not is_template(template):
        raise TemplateError(f"{type(template).__name__} is not a chat template: it needs name, "
                            "stop_strings, output_replacements, render() and encode()")
    if name in _BUILTIN and not overwrite:
        raise TemplateError(f"{name!r} is a built-in preset; pass overwrite=True to replace it")
    _REGISTRY[name] = template
    return template


def name_of(template: Any) -> str | None:
    """The registered name of ``template`` (by equality), or None."""
    for known, t in _REGISTRY.items():
        if t is template or (type(t) is type(template) and t == template):
            return known
    return None


def __getattr__(attr: str) -> Any:
    if attr in _REGISTRY:
        return _REGISTRY[attr]
    raise AttributeError(f"module 'presets' has no attribute {attr!r}")


def _builtin(template: DeclarativeTemplate) -> None:
    _REGISTRY[template.name] = template
    _BUILTIN.add(template.name)


# ChatML as in teknium/OpenHermes-2.5-Mistral-7B's tokenizer_config.json (plain ChatML, no default
# system message; SmolLM2's template is ChatML plus a default system message).
_builtin(DeclarativeTemplate(
    name="chatml",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
    generation_prefix="<|im_start|>assistant\n",
    stop_strings=("<|im_end|>",),
))

# meta-llama/Llama-2-7b-chat-hf tokenizer_config.json: <s>[INST] per user turn, the system message in
# <<SYS>> merged into the first user message, content stripped, add_generation_prompt ignored.
_builtin(DeclarativeTemplate(
    name="llama2",
    system="<<SYS>>\n{content}\n<</SYS>>\n\n",
    system_mode="merge",
    user="{bos}[INST] {content} [/INST]",
    assistant=" {content} {eos}",
    bos="<s>", eos="</s>",
    strip_content=True,
    alternate=True,
    stop_strings=("</s>",),
))

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json.
_builtin(DeclarativeTemplate(
    name="llama3",
    prefix="{bos}",
    system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
    user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
    generation_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
    bos="<|begin_of_text|>", eos="<|eot_id|>",
    strip_content=True,
    stop_strings=("<|eot_id|>", "<|end_of_text|>"),
))

# mistralai/Mixtral-8x7B-Instruct-v0.1 and Mistral-7B-Instruct-v0.2 tokenizer_config.json (2024
# revision): the system message goes in front of the first user message, separated by a blank line.
_builtin(DeclarativeTemplate(
    name="mistral",
    prefix="{bos}",
    system="{content}\n\n",
    system_mode="merge",
    user=" [INST] {content} [/INST]",
    assistant=" {content}{eos}",
    bos="<s>", eos="</s>",
    alternate=True,
    stop_strings=("</s>",),
))

# google/gemma-7b-it tokenizer_config.json: no system role (the template raises), assistant is "model".
_builtin(DeclarativeTemplate(
    name="gemma",
    prefix="{bos}",
    system_mode="unsupported",
    user="<start_of_turn>user\n{content}<end_of_turn>\n",
    assistant="<start_of_turn>model\n{content}<end_of_turn>\n",
    generation_prefix="<start_of_turn>model\n",
    bos="<bos>", eos="<eos>",
    strip_content=True,
    alternate=True,
    stop_strings=("<end_of_turn>", "<eos>"),
))

# microsoft/Phi-3-mini-4k-instruct tokenizer_config.json: EOS written when no generation prompt.
_builtin(DeclarativeTemplate(
    name="phi3",
    system="<|system|>\n{content}<|end|>\n",
    user="<|user|>\n{content}<|end|>\n",
    assistant="<|assistant|>\n{content}<|end|>\n",
    generation_prefix="<|assistant|>\n",
    end_without_generation="{eos}",
    bos="<s>", eos="<|endoftext|>",
    stop_strings=("<|end|>", "<|endoftext|>"),
))

# HuggingFaceH4/zephyr-7b-beta tokenizer_config.json.
_builtin(DeclarativeTemplate(
    name="zephyr",
    system="<|system|>\n{content}{eos}\n",
    user="<|user|>\n{content}{eos}\n",
    assistant="<|assistant|>\n{content}{eos}\n",
    generation_prefix="<|assistant|>\n",
    bos="<s>", eos="</s>",
    stop_strings=("</s>", "<|user|>"),
))

# Vicuna v1.1 as in lm-sys/FastChat fastchat/conversation.py ("vicuna_v1.1": ADD_COLON_TWO,
# sep=" ", sep2="</s>", roles USER/ASSISTANT, this default system message).
_builtin(DeclarativeTemplate(
    name="vicuna",
    default_system="A chat between a curious user and an artificial intelligence assistant. The "
                   "assistant gives helpful, detailed, and polite answers to the user's questions.",
    system="{content} ",
    user="USER: {content} ",
    assistant="ASSISTANT: {content}{eos}",
    generation_prefix="ASSISTANT:",
    bos="<s>", eos="</s>",
    stop_strings=("</s>", "USER:"),
    role_markers=("USER:", "ASSISTANT:"),
))

# Alpaca: tatsu-lab/stanford_alpaca README / train.py PROMPT_DICT["prompt_no_input"] ("Below is an
# instruction ... ### Instruction:\n{instruction}\n\n### Response:"); later turns repeat the blocks, the
# response on its own line as in tloen/alpaca-lora templates/alpaca.json.
_builtin(DeclarativeTemplate(
    name="alpaca",
    default_system="Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request.",
    system="{content}\n\n",
    user="### Instruction:\n{content}\n\n",
    assistant="### Response:\n{content}\n\n",
    generation_prefix="### Response:\n",
    bos="<s>", eos="</s>",
    stop_strings=("</s>", "### Instruction:"),
    role_markers=("### Instruction:", "### Response:", "### Input:"),
))

# togethercomputer/RedPajama-INCITE-Chat-3B-v1 model card: "<human>: ...\n<bot>:"; no system role.
_builtin(DeclarativeTemplate(
    name="redpajama_incite",
    system_mode="unsupported",
    user="<human>: {content}\n",
    assistant="<bot>: {content}\n",
    generation_prefix="<bot>:",
    eos="<|endoftext|>",
    stop_strings=("<human>:", "<|endoftext|>"),
    role_markers=("<human>:", "<bot>:"),
))

# rinna/japanese-gpt-neox-3.6b-instruction-sft model card: utterances "ユーザー: ..." / "システム: ..."
# joined with "<NL>", the prompt ending "<NL>システム: "; newlines are written "<NL>" both ways.
_builtin(DeclarativeTemplate(
    name="rinna",
    system_mode="unsupported",
    user="ユーザー: {content}<NL>",
    assistant="システム: {content}<NL>",
    generation_prefix="システム: ",
    eos="</s>",
    stop_strings=("</s>", "ユーザー:"),
    input_replacements=(("\n", "<NL>"),),
    output_replacements=(("<NL>", "\n"),),
    role_markers=("ユーザー:", "システム:"),
))
