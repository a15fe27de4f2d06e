"""The correctness gate a precision must pass before calibration may choose it.

The reference is the torch fp32 model, greedy, one prompt at a time, on a fixed set of prompts
(:data:`GATE_PROMPTS`, rendered with the tokenizer's own chat template). A candidate's greedy
replies to the same prompts are compared token for token, over each reply's first
:data:`REPLY_TOKENS` tokens (the stop token counts: stopping early or late is a difference):

* the first prompt, the bundled model's demo question ("What is the capital of France?" ->
  "The capital of France is Paris."), must agree **exactly**, in a batch and alone;
* every other reply must agree token for token until it ends, or until a position where the
  reference itself was undecided: its log-probability for its own token exceeded that of the
  candidate's token by less than :data:`NEAR_TIE_NATS` (ln 1.5: the reference found the two
  tokens within a factor of 1.5 of each other). A greedy reply parts there on any change of
  arithmetic (another CPU kernel, batching, llama.cpp), so that is not an error; parting where the
  reference was sure is.

Measured on the bundled model (2026-12): fp16 weights agreed on every token; int8 (asymmetric,
per channel) parted at 4 near ties (margins 0.007-0.17 nats); int4 (group 64) answered
"Paris, France." and parted on 4 other prompts where the reference was sure (margins 0.95-1.8).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .precision import GateResult, PromptVerdict, Verdict

GATE_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",  # the exact one
    "Write a haiku about the sea.",
    "日本の首都はどこですか？日本語で答えてください。",
    "What is 12 times 7?",
    "Give me three tips for staying focused while studying.",
    "Translate 'good morning' into Spanish.",
    "Explain what a neural network is in one sentence.",
    "Write a Python function that returns the square of a number.",
)
EXACT_PROMPTS = 1  # the first prompts that must agree exactly
REPLY_TOKENS = 32
NEAR_TIE_NATS = math.log(1.5)
TOP_K = 8  # reference log-probabilities kept per position; a token outside them is a sure difference


@dataclass(frozen=True)
class Reference:
    """The torch fp32 greedy replies to the gate prompts, with the reference's top log-probs per
    position (``top[i][pos]`` = ((token, logprob), ...), best first)."""

    prompts: tuple[str, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    replies: tuple[tuple[int, ...], ...]
    top: tuple[tuple[tuple[tuple[int, float], ...], ...], ...]
    stop_ids: tuple[int, ...]
    reply_tokens: int = REPLY_TOKENS

    def as_dict(self) -> dict[str, Any]:
        return {"prompts": list(self.prompts), "prompt_ids": [list(p) for p in self.prompt_ids],
                "replies": [list(r) for r in self.replies], "stop_ids": list(self.stop_ids),
                "reply_tokens": self.reply_tokens,
                "top": [[[[t, round(lp, 5)] for t, lp in pos] for pos in reply] for reply in self.top]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        return cls(tuple(d["prompts"]), tuple(tuple(p) for p in d["prompt_ids"]), tuple(tuple(r) for r in d["replies"]),
                   tuple(tuple(tuple((int(t), float(lp)) for t, lp in pos) for pos in reply) for reply in d["top"]),
                   tuple(d["stop_ids"]), int(d.get("reply_tokens", REPLY_TOKENS)))


def render_prompt(tokenizer: Any, text: str) -> list[int]:
    """The prompt ids for one user message: the tokenizer's chat template, or the plain text."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)
        return [int(i) for i in out["input_ids"]]
    return [int(i) for i in tokenizer(text)["input_ids"]]


def cut_reply(ids: Sequence[int], stop_ids: Sequence[int], limit: int = REPLY_TOKENS) -> tuple[int, ...]:
    """A reply as the gate compares it: up to and including the first stop token, at most ``limit``."""
    out: list[int] = []
    for t in ids[:limit]:
        out.append(int(t))
        if t in stop_ids:
            break
    return tuple(out)


def build_reference(hf_dir: Path, tokenizer: Any, stop_ids: Sequence[int],
                    prompts: Sequence[str] = GATE_PROMPTS, *, reply_tokens: int = REPLY_TOKENS,
                    top_k: int = TOP_K) -> Reference:
    """Greedy replies of the fp32 torch model in ``hf_dir``, one prompt at a time (no padding)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True).eval()
    prompt_ids, replies, tops = [], [], []
    try:
        with torch.inference_mode():
            for text in prompts:
                ids = render_prompt(tokenizer, text)
                reply, top = _greedy(model, ids, stop_ids, reply_tokens, top_k)
                prompt_ids.append(tuple(ids))
                replies.append(reply)
                tops.append(top)
    finally:
        del model
    return Reference(tuple(prompts), tuple(prompt_ids), tuple(replies), tuple(tops), tuple(stop_ids), reply_tokens)


def _greedy(model: Any, ids: list[int], stop_ids: Sequence[int], limit: int,
            top_k: int) -> tuple[tuple[int, ...], tuple[tuple[tuple[int, float], ...], ...]]:
    """A plain KV-cache greedy loop on raw logits (no generation-config processors)."""
    import torch

    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    reply: list[int] = []
    top: list[tuple[tuple[int, float], ...]] = []
    for _ in range(limit):
        logprobs = out.logits[0, -1].float().log_softmax(-1)
        values, indices = logprobs.topk(top_k)
        top.append(tuple((int(i), float(v)) for i, v in zip(indices.tolist(), values.tolist())))
        token = int(indices[0])
        reply.append(token)
        if token in stop_ids:
            break
        out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tuple(reply), tuple(top)


def judge(reference: Reference, replies: Sequence[Sequence[int]], alone: Sequence[int] | None = None, *,
          exact_prompts: int = EXACT_PROMPTS, near_tie: float = NEAR_TIE_NATS) -> GateResult:
    """The gate's verdict on a candidate's greedy ``replies`` to ``reference.prompts`` (same order),
    plus ``alone``: its reply to the first prompt when it ran by itself. Pure; see the module doc."""
    if len(replies) != len(reference.replies):
        raise ValueError(f"expected {len(reference.replies)} replies, got {len(replies)}")
    verdicts = [_verdict(reference, i, reply, exact=i < exact_prompts, near_tie=near_tie)
                for i, reply in enumerate(replies)]
    if alone is not None:
        v = _verdict(reference, 0, alone, exact=exact_prompts > 0, near_tie=near_tie)
        verdicts.append(PromptVerdict(f"{v.prompt} (alone)", v.verdict, v.agreed_tokens, v.reference_tokens,
                                      v.parted_at, v.margin))
    return GateResult(tuple(verdicts))


def _verdict(reference: Reference, i: int, reply: Sequence[int], *, exact: bool, near_tie: float) -> PromptVerdict:
    ref = reference.replies[i]
    got = cut_reply(reply, reference.stop_ids, reference.reply_tokens)
    prompt = reference.prompts[i]
    parted = next((k for k, (a, b) in enumerate(zip(ref, got)) if a != b), None)
    if parted is None and len(got) != len(ref):  # one stopped (or was cut) where the other did not
        parted = min(len(got), len(ref))
    if parted is None:
        return PromptVerdict(prompt, Verdict.AGREES, len(ref), len(ref))
    margin = _margin(reference.top[i][parted], ref[parted], got[parted]) if parted < min(len(ref), len(got)) \
        else math.inf
    verdict = Verdict.NEAR_TIE if not exact and margin < near_tie else Verdict.DIFFERS
    return PromptVerdict(prompt, verdict, parted, len(ref), parted, margin)


def _margin(top: Sequence[tuple[int, float]], ours: int, theirs: int) -> float:
    """The reference's log-prob of its token minus that of the candidate's (inf if not in its top)."""
    lp = dict(top)
    return lp[ours] - lp[theirs] if theirs in lp and ours in lp else math.inf
