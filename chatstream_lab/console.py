"""``chatstream-lab chat``: a multi-turn console chat that streams replies to the terminal.

Commands: ``/regenerate``, ``/clear``, ``/system TEXT``, ``/quit`` (or end of input). Generation
runs inline (``stream()``); Ctrl-C during a reply stops that reply, not the program.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .types import Delta, Finished, FinishReason, Message

HELP = "commands: /regenerate  /clear  /system TEXT  /quit"


@dataclass
class Conversation:
    """The console's history: whole turns, changed once per turn."""

    system: str | None = None
    turns: list[Message] = field(default_factory=list)

    def messages(self) -> list[Message]:
        head: list[Message] = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns


def _reply(model: Any, convo: Conversation, template: Any, params: dict[str, Any], out: TextIO) -> None:
    from .engine import stream

    gen = stream(model, convo.messages(), template, **params)
    final: Finished | None = None
    try:
        for ev in gen:
            if isinstance(ev, Delta):
                out.write(ev.text)
                out.flush()
            elif isinstance(ev, Finished):
                final = ev
    except KeyboardInterrupt:
        gen.cancel()
        for ev in gen:
            if isinstance(ev, Finished):
                final = ev
    out.write("\n")
    if final is None:
        return
    if final.finish_reason is FinishReason.ERROR:
        out.write(f"[error: {final.error}]\n")
        convo.turns.pop()  # the user turn stays unanswered: drop it so history stays consistent
        return
    convo.turns.append({"role": "assistant", "content": final.text})
    u = final.usage
    out.write(f"[{final.finish_reason.value}, {u.completion_tokens} tokens, {u.tokens_per_s:.1f} tok/s]\n")


def run_chat(model: Any, lines: Iterable[str], out: TextIO, *, template: Any = None,
             system: str | None = None, **params: Any) -> Conversation:
    """Run the chat loop over ``lines`` (user input), writing to ``out``. Returns the history."""
    convo = Conversation(system=system)
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() in ("/quit", "/exit"):
            break
        if line.strip() == "/clear":
            convo.turns.clear()
            out.write("[history cleared]\n")
            continue
        if line.startswith("/system"):
            convo.system = line[len("/system"):].strip() or None
            out.write(f"[system prompt {'set' if convo.system else 'cleared'}]\n")
            continue
        if line.strip() == "/regenerate":
            if convo.turns and convo.turns[-1]["role"] == "assistant":
                convo.turns.pop()
            if not convo.turns:
                out.write("[nothing to regenerate]\n")
                continue
        elif line.startswith("/"):
            out.write(f"[unknown command {line.split()[0]}; {HELP}]\n")
            continue
        else:
            convo.turns.append({"role": "user", "content": line})
        out.write("assistant> ")
        _reply(model, convo, template, params, out)
    return convo


def _input_lines(ask: list[str]) -> Iterable[str]:
    yield from ask
    if ask and not sys.stdin.isatty():
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def add_chat_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = subparsers.add_parser("chat", help="chat with a model in the terminal",
                              description=f"Multi-turn console chat. {HELP}")
    p.add_argument("--model", default=None, help="HF directory, .gguf file or cached hub id "
                   "(default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--template", default=None, help="preset name (default: the tokenizer's own)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (default: the model's own: 0 for the bundled model, else 0.3)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--ask", action="append", default=[],
                   help="a first message to send (repeatable); with no terminal, exit after them")
    p.set_defaults(func=_cmd_chat)
    return p


def _cmd_chat(args: argparse.Namespace) -> int:
    from .errors import ChatStreamLabError
    from .models import load_model

    try:
        model = load_model(args.model, backend=args.backend, dtype=args.dtype, precision=args.precision)
        print(f"{model.name} ready. {HELP}", flush=True)
        run_chat(model, _input_lines(args.ask), sys.stdout, template=args.template, system=args.system,
                 temperature=model.default_params.temperature if args.temperature is None else args.temperature,
                 max_new_tokens=args.max_new_tokens)
    except ChatStreamLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
