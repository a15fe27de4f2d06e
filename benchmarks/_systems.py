"""The systems ``throughput.py`` compares, each run in its own process (never imported by it).

``python benchmarks/_systems.py ours  --port P --limit C --max-new-tokens N``
    chatstream_lab: ``create_app(ChatStream(model=load_model(), ...))`` on a ``BackgroundServer``
    (127.0.0.1). ``POST /chat_stream`` answers in the seed framing (whole reply so far + ``<::EOS::>``).
``python benchmarks/_systems.py naive --port P --model DIR --max-new-tokens N``
    What a researcher writes by hand: FastAPI, one ``model.generate()`` thread per request,
    ``TextIteratorStreamer`` iterated by ``StreamingResponse`` (plain text deltas).
``python benchmarks/_systems.py raw --model DIR``
    The ceiling: a padded batched greedy decode loop (attention mask + position ids + the HF
    DynamicCache), no server. Reads one JSON command per stdin line, answers one JSON line.

Every server prints ``READY <port>`` on stdout once it accepts requests, serves loopback only,
and exits on SIGTERM (or when its stdin closes, so an orphan never outlives the benchmark).
"""



import argparse
import json
import os
import sys
import threading
import time
from typing import Any

CHAT_PATH = "/chat_stream"


def _exit_when_stdin_closes() -> None:
    """The parent holds our stdin; when it goes away (crash, Ctrl-C) we go too."""

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(1):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _wait_forever() -> None:
    import signal

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    while not done.wait(0.5):
        pass


# -- ours ---------------------------------------------------------------------------------------
def serve_ours(args: argparse.Namespace) -> None:
    import chatstream_lab as csl
    from chatstream_lab.server import BackgroundServer, ChatStream, create_app

    lm = csl.load_model(dtype=args.dtype, progress=False)
    cs = ChatStream(model=lm, num_of_concurrent_executions=args.limit, max_queue_size=args.max_queue_size,
                    max_new_tokens=args.max_new_tokens, temperature=0.0)
    cs.service.warm(wait=True)  # the engine is built before READY (its own thread builds it)
    server = BackgroundServer(create_app(cs, close_on_shutdown=True), host="127.0.0.1", port=args.port).start()
    print(f"READY {server.port}", flush=True)
    _exit_when_stdin_closes()
    try:
        _wait_forever()
    finally:
        server.stop()
        cs.close()


# -- naive --------------------------------------------------------------------------------------
def serve_naive(args: argparse.Namespace) -> None:
    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(CHAT_PATH)
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        messages = [{"role": "user", "content": body["user_input"]}]
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(**inputs, streamer=streamer, max_new_tokens=args.max_new_tokens, do_sample=False,
                      pad_token_id=tokenizer.eos_token_id)
        threading.Thread(target=model.generate, kwargs=kwargs, daemon=True).start()
        return StreamingResponse(streamer, media_type="text/plain")  # iterated in the threadpool

    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    print(f"READY {args.port}", flush=True)
    _exit_when_stdin_closes()
    _wait_forever()
    server.should_exit = True
    thread.join(10)


# -- raw ----------------------------------------------------------------------------------------
def raw_batch(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> dict[str, Any]:
    """Left-padded batched greedy decode; every row runs until EOS or max_new_tokens.

    Returns one record per row in the client's format (times relative to the start).
    """
    import inspect

    import torch
    from transformers import DynamicCache

    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    rows = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    b = len(rows)
    out_ids: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    t_end = [0.0] * b
    chunk_times: list[list[float]] = [[] for _ in range(b)]
    cache = DynamicCache(config=model.config)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1, **{cache_kw: cache})
        next_pos = pos[:, -1:] + 1
        for step in range(max_new_tokens):
            tok = out.logits[:, -1, :].argmax(-1)
            now = time.perf_counter() - t0
            for i, t in enumerate(tok.tolist()):
                if done[i]:
                    continue
                if t == eos:
                    done[i], t_end[i] = True, now
                    continue
                out_ids[i].append(t)
                chunk_times[i].append(now)
                if len(out_ids[i]) >= max_new_tokens:
                    done[i], t_end[i] = True, now
            if all(done) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.long)], dim=1)
            out = model(input_ids=tok.view(-1, 1), attention_mask=mask, position_ids=next_pos,
                        use_cache=True, **{cache_kw: cache})
            next_pos = next_pos + 1
    wall = time.perf_counter() - t0
    streams = []
    for i in range(b):
        streams.append({"t_send": 0.0, "t_first": chunk_times[i][0] if chunk_times[i] else None,
                        "t_end": t_end[i] or wall, "chunk_times": chunk_times[i],
                        "text": tokenizer.decode(out_ids[i], skip_special_tokens=True),
                        "generated_tokens": len(out_ids[i]), "status": 200, "error": None})
    return {"wall_s": wall, "streams": streams}


def serve_raw(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    print("READY 0", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            result = raw_batch(model, tokenizer, cmd["prompts"], int(cmd["max_new_tokens"]))
        except Exception as exc:  # report, keep serving
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("system", choices=["ours", "naive", "raw"])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--model", help="plain HF directory (naive, raw)")
    ap.add_argument("--limit", type=int, default=16, help="num_of_concurrent_executions (ours)")
    ap.add_argument("--max-queue-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    {"ours": serve_ours, "naive": serve_naive, "raw": serve_raw}[args.system](args)


if __name__ == "__main__":
    main()
