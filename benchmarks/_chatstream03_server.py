"""``chatstream==0.3.0`` (the predecessor, from PyPI) serving the converted SmolLM2, for ``throughput.py``.

Runs in its own virtualenv (``benchmarks/setup_chatstream03.sh`` makes
``benchmarks/.venv-chatstream03``), never in the project's: it imports ``chatstream``, not
``chatstream_lab``. uvicorn runs on the MAIN thread of this process, because the predecessor's
startup hook (``start_queue_worker``) installs a SIGINT handler, which Python allows only there.

    .venv-chatstream03/bin/python _chatstream03_server.py --model DIR --port P --limit C

The predecessor has no chat-template support, so a ChatML prompt class is written here in its
style (``<|im_start|>role\\n...<|im_end|>\\n``, stop string ``<|im_end|>``), with the same default
system message SmolLM2's own template inserts, so it prefills the same prompt as the others.
Greedy (temperature < 1e-4 is argmax there), no repetition penalty, queue-full as HTTP 429.
"""



import argparse
import os
import sys
import threading

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _exit_when_stdin_closes() -> None:
    def watch() -> None:
        try:
            while sys.stdin.buffer.read(1):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def build_app(args: argparse.Namespace):  # noqa: ANN201
    import torch
    from chatstream import AbstractChatPrompt, ChatStream
    from fastapi import FastAPI, Request
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class ChatPromptChatML(AbstractChatPrompt):
        """ChatML, as SmolLM2's chat template renders it (the predecessor's prompt-class style)."""

        def __init__(self) -> None:
            super().__init__()
            self.set_system(f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n")
            self.set_requester("user")
            self.set_responder("assistant")

        def get_stop_strs(self) -> list[str]:
            return ["<|im_end|>"]

        def create_prompt(self, opts={}) -> str:  # noqa: B006 - the base class's signature
            ret = self.system
            for content in self.get_contents(opts):
                role, message = content.get_role(), content.get_message()
                if not role:
                    continue
                if message:
                    ret += f"<|im_start|>{role}\n{message}<|im_end|>\n"
                else:
                    ret += f"<|im_start|>{role}\n"
            return ret

        def build_initial_prompt(self, chat_prompt) -> None:  # noqa: ANN001
            pass

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    chat_stream = ChatStream(
        model=model, tokenizer=tokenizer, device="cpu", num_gpus=0,
        num_of_concurrent_executions=args.limit, max_queue_size=args.max_queue_size,
        too_many_request_as_http_error=True, chat_prompt_clazz=ChatPromptChatML,
        max_new_tokens=args.max_new_tokens, context_len=2048, temperature=0.0, top_k=None, top_p=None,
        repetition_penalty=None,
    )
    app = FastAPI()
    chat_stream.append_middlewares(app)

    @app.post("/chat_stream")
    async def stream_api(request: Request):  # noqa: ANN202
        return await chat_stream.handle_chat_stream_request(request)

    @app.on_event("startup")
    async def startup() -> None:
        await chat_stream.start_queue_worker()  # main thread: its signal.signal() is allowed here
        print(f"READY {args.port}", flush=True)

    return app


def main() -> None:
    import logging

    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-queue-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    app = build_app(args)
    logging.getLogger("chatstream").setLevel(logging.WARNING)  # it logs every token at DEBUG/INFO
    _exit_when_stdin_closes()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
