"""``chatstream-lab``: command-line entry point (``serve``; more subcommands plug into ``build_parser``).

Nothing runs at import; :func:`main` parses arguments and dispatches to one ``_cmd_*`` function.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TOKEN_ENV = "CHATSTREAM_LAB_TOKEN"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--dtype`` and ``--precision``, shared by ``serve`` and ``chat`` (see ``load_model``)."""
    p.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto",
                   help="what runs the model: openvino (fast, CPU), torch (any device), or auto: the "
                        "fastest installed (default)")
    p.add_argument("--dtype", default=None,
                   help="torch: float32 (default), bfloat16, float16; openvino: the calibrated precision "
                        "(default), or fix it: float16, float32, int8, int4, optionally with the compute "
                        "precision: int8/f32, float16/bf16")
    p.add_argument("--precision", choices=("auto",), default=None,
                   help="openvino: measure the fastest correct precision for this machine again now "
                        "(default: the cached choice, measured on first use)")


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("serve", help="serve a model as a streaming chat endpoint + web page",
                              description="Serve a model over HTTP: /chat_stream (seed protocol and SSE), "
                                          "/v1/chat/completions (OpenAI), /stats, /metrics and a web page.")
    p.add_argument("--model", default=None,
                   help="HF directory, .gguf file or cached hub id (default: bundled SmolLM2-135M-Instruct)")
    p.add_argument("--template", default=None,
                   help="chat template preset name (default: the tokenizer's own chat template)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_non_negative_int, default=8000, help="port (0 = any free port)")
    p.add_argument("--num-of-concurrent-executions", type=_positive_int, default=2,
                   help="requests generating at once (default 2)")
    p.add_argument("--max-queue-size", type=_non_negative_int, default=5,
                   help="requests that may wait; more get HTTP 429 (default 5, for a demo). Each prompt of a "
                        "batched /v1/completions request takes a place: for lm-evaluation-harness serve with "
                        "this + --num-of-concurrent-executions >= num_concurrent x batch_size (README)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None, help="reply length cap (default 256)")
    p.add_argument("--config", default=None, metavar="PATH",
                   help="serve a configuration saved from a notebook (lab.config.save(PATH), .json or .toml): "
                        "its model, template, system prompt and sampling, with the same config_id "
                        "(--model, --backend, --dtype override its model; --max-new-tokens, --temperature "
                        "its sampling)")
    p.add_argument("--temperature", type=float, default=None,
                   help="default sampling temperature (0 = greedy; default: the model's own, 0 for the "
                        "bundled model, else 0.3)")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help=f"require 'Authorization: Bearer TOKEN', TOKEN read from this file (or set ${TOKEN_ENV}); "
                        "the printed page URL carries it as #token=, which never reaches the server's log")
    p.add_argument("--session-kv-budget-mb", type=float, default=None, metavar="MB",
                   help="memory for sessions' KV kept across turns, so a next turn prefills only what is "
                        "new (default 512; 0 = off)")
    p.add_argument("--token", default=None,
                   help=f"the bearer token on the command line (visible to every user in ps: prefer "
                        f"${TOKEN_ENV} or --token-file)")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="accept this Host name (e.g. a reverse proxy's public name; '*.example.org', '*'); "
                        "repeatable. Default: on loopback only loopback names, on other interfaces any")
    p.add_argument("--shutdown-timeout", type=_non_negative_float, default=10.0, metavar="SECONDS",
                   help="on Ctrl-C or SIGTERM, new requests get 503 while open replies may finish for up "
                        "to this long; the rest are then cancelled (each still ends with its final event). "
                        "A second signal cancels them at once. Default 10; 0 = cancel at once")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default cpu)")
    add_backend_arguments(p)
    p.add_argument("--upstream", action="append", default=None, metavar="URL",
                   help="serve an OpenAI-compatible server (vLLM, llama-server) instead of a local model; "
                        "repeat for several (least-loaded dispatch, failover)")
    p.add_argument("--tokenizer", default=None, metavar="DIR_OR_bundled",
                   help="with --upstream: render prompts locally with this tokenizer (an HF directory, or "
                        "'bundled' for SmolLM2's) and send token ids; default: the upstream's own template")
    p.add_argument("--upstream-model", default=None, metavar="NAME",
                   help="with --upstream: the upstream's model name (default: the first in its /v1/models)")
    p.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatstream-lab", description="Streaming LLM chat toolkit.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_serve_parser(subparsers)
    from .console import add_chat_parser

    add_backend_arguments(add_chat_parser(subparsers))
    return parser


def resolve_token(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token: ``--token-file`` or ``--token`` (which every local user can read in ``ps``:
    it still works, with a warning), else ``$CHATSTREAM_LAB_TOKEN``. None: no auth.

    Raises:
        ConfigError: two sources given, an unreadable or empty file, a token with whitespace.
    """
    from .errors import ConfigError

    if args.token is not None and args.token_file is not None:
        raise ConfigError("pass --token or --token-file, not both", name="token")
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {args.token_file!r}: {exc.strerror}",
                              name="token_file") from exc
        source = f"--token-file {args.token_file}"
    elif args.token is not None:
        print(f"warning: --token is visible to every local user in the process list; set ${TOKEN_ENV} "
              "or use --token-file instead", file=sys.stderr)
        token, source = args.token, "--token"
    elif environ.get(TOKEN_ENV):
        token, source = environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"the token from {source} is empty or contains whitespace", name="token")
    return token


def _cmd_serve(args: argparse.Namespace) -> int:
    from .errors import ChatStreamLabError
    from .server import BackgroundServer, ChatStream, create_app
    from .server.auth import page_url

    try:
        token = resolve_token(args)
        saved = _saved_config(args)
        print("Loading model…", file=sys.stderr, flush=True)
        model = _model(args, saved)
        params = saved.params if saved is not None else model.default_params.replace(max_new_tokens=256)
        if args.max_new_tokens is not None:
            params = params.replace(max_new_tokens=args.max_new_tokens)
        if args.temperature is not None:
            params = params.replace(temperature=args.temperature)
        template = saved.template if saved is not None else args.template
        chat_stream = ChatStream(model=model, template=template,
                                 num_of_concurrent_executions=args.num_of_concurrent_executions,
                                 max_queue_size=args.max_queue_size, params=params,
                                 session_kv_budget_mb=args.session_kv_budget_mb)
        app = create_app(chat_stream, token=token, allowed_hosts=args.allowed_host, close_on_shutdown=True)
        server = BackgroundServer(app, host=args.host, port=args.port, log_level="info").start()
    except ChatStreamLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while loading: nothing is served yet, nothing to drain
        print("\ninterrupted while loading", file=sys.stderr)
        return 130
    try:  # the engine builds on its own thread (the server answers /health "starting" meanwhile);
        # the URL is printed once it can serve, so the first user does not wait for the build
        print("Warming up the engine…", file=sys.stderr, flush=True)
        chat_stream.service.warm(wait=True)
    except (ChatStreamLabError, KeyboardInterrupt) as exc:
        print(f"error: {exc}" if isinstance(exc, ChatStreamLabError) else "\ninterrupted while warming up",
              file=sys.stderr)
        server.stop()
        chat_stream.close()
        return 2 if isinstance(exc, ChatStreamLabError) else 130
    choice = getattr(model, "precision", None)
    if choice is not None:
        print(f"Precision: {choice.label}", file=sys.stderr, flush=True)
    print(f"Serving {model.name} at {page_url(server.url, token)}  config_id {chat_stream.service.config_id}  "
          "(Ctrl-C to stop)", flush=True)
    return _serve_until_signalled(server, chat_stream, args.shutdown_timeout)


def _serve_until_signalled(server: Any, chat_stream: Any, shutdown_timeout_s: float) -> int:
    """Serve until SIGINT or SIGTERM, then stop gracefully (``server/shutdown.py``): exit status 0
    when every open reply ended with its final event, 1 when the server could not be stopped."""
    report = None
    try:
        report = server.run_until_signalled(
            shutdown_timeout_s, announce=lambda line: print(f"\n{line}", file=sys.stderr, flush=True))
    finally:
        server.stop()  # idempotent: stops it on any path out
        chat_stream.close()
    if report is not None:
        print(f"Stopped: {report.summary()}.", file=sys.stderr, flush=True)
    return 1 if server.running or (report is not None and report.unfinished) else 0


def _saved_config(args: argparse.Namespace) -> Any:
    """The configuration of ``--config`` (None without it)."""
    from .errors import ConfigError
    from .prompts.config_file import load_config

    if args.config is None:
        return None
    if args.template is not None:
        raise ConfigError("--config already has a template: leave --template out", name="template")
    return load_config(args.config)


def _model(args: argparse.Namespace, saved: Any) -> Any:
    """``--upstream``'s remote model, ``--model``, the saved configuration's model, or the bundled one."""
    from .models import load_model, load_ref

    if args.upstream:
        return _remote(args)
    if args.model is None and saved is not None and saved.model_ref is not None:
        ref = saved.model_ref
        if args.backend == "auto" and args.dtype is None:
            return load_ref(ref)
        return load_model(None if ref.source == "bundled" else ref.source, backend=args.backend,
                          device=args.device, dtype=args.dtype, precision=args.precision)
    return load_model(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                      precision=args.precision)


def _remote(args: argparse.Namespace) -> Any:
    """The ``--upstream`` model: our front-end in front of OpenAI-compatible servers."""
    from .errors import ConfigError
    from .models import load_model, remote_model

    if args.model is not None:
        raise ConfigError("--model and --upstream exclude each other: the upstream serves the model",
                          name="model")
    if args.template is not None and args.tokenizer is None:
        raise ConfigError("--template renders prompts locally, which needs --tokenizer (or 'bundled')",
                          name="template")
    tokenizer: Any = load_model(progress=False) if args.tokenizer == "bundled" else args.tokenizer
    return remote_model(args.upstream, args.upstream_model, tokenizer=tokenizer)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chatstream-lab`` script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
