"""``remote_model()``: a model handle whose tokens come from OpenAI-compatible servers elsewhere.

The handle is an ordinary :class:`~chatstream_lab.models.LoadedModel` with ``backend="remote"``,
so it goes wherever a loaded model goes (``csl.stream``, ``Lab``, ``ChatStream``, ``create_app``);
the engine factory gives it a :class:`~chatstream_lab.engine.remote.RemoteEngine` instead of the
local batching engine. Building one never touches the network (a notebook cell must not hang on a
dead URL): the upstreams are first contacted by the first request, which fails with a clear error
if none answers.

Which wire path a request takes:

* a local ``tokenizer`` is given: our template renders the prompt here and ``/v1/completions`` is
  sent its token ids (the decoded text if an upstream refuses ids), so the remote model sees
  exactly the prompt ``inspect_prompt`` shows;
* no tokenizer and ``template=None``: ``/v1/chat/completions`` is sent the messages, and the
  upstream applies its own chat template.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, ModelLoadError
from .loaded import Backend, LoadedModel

DEFAULT_CONTEXT_WINDOW = 2048


@dataclass(frozen=True, slots=True)
class RemoteSpec:
    """Where a remote model lives: what :class:`~chatstream_lab.engine.remote.RemoteEngine` reads.

    ``urls`` are base URLs without a trailing ``/v1``; ``model`` is the upstream's model name (None:
    the first one its ``/v1/models`` lists, asked at first use); ``token_ids_ok`` says whether the
    upstreams accept token ids as a prompt (None: try, and fall back to text if one refuses);
    ``context_window`` is the window the caller gave (None: the upstream's ``max_model_len`` when it
    reports one, else :data:`DEFAULT_CONTEXT_WINDOW`).
    """

    urls: tuple[str, ...]
    model: str | None = None
    api_key: str | None = None
    token_ids_ok: bool | None = None
    context_window: int | None = None

    is_scripted = False  # LoadedModel.is_scripted reads this of ``model``

    def __repr__(self) -> str:  # never print the key
        key = "***" if self.api_key else None
        return f"RemoteSpec(urls={self.urls!r}, model={self.model!r}, api_key={key!r})"


def normalize_url(url: str) -> str:
    """``http://host:port[/prefix]`` without a trailing slash or ``/v1`` (both spellings work)."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"an upstream URL must be a non-empty string, got {url!r}", name="url")
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"not an http(s) URL: {url!r}", name="url")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _normalize_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls:
        raise ConfigError("remote_model needs at least one upstream URL", name="url")
    out = tuple(dict.fromkeys(normalize_url(u) for u in urls))  # keeps order, drops duplicates
    return out


def _resolve_tokenizer(tokenizer: Any) -> tuple[Any, tuple[int, ...]]:
    """A tokenizer object, a LoadedModel (its tokenizer and stop ids), a local HF dir, or None."""
    if tokenizer is None:
        return None, ()
    if isinstance(tokenizer, LoadedModel):
        return tokenizer.tokenizer, tuple(tokenizer.stop_token_ids)
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        if not path.is_dir():
            raise ModelLoadError(f"tokenizer={str(tokenizer)!r} is not a local directory; pass a "
                                 "tokenizer object, a LoadedModel or an HF directory")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
    return tokenizer, _eos_ids(tokenizer)


def _eos_ids(tokenizer: Any) -> tuple[int, ...]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        return (eos,)
    if isinstance(eos, (list, tuple)):
        return tuple(int(i) for i in eos)
    return ()


def _check_window(context_window: int | None) -> None:
    if context_window is None:
        return
    if isinstance(context_window, bool) or not isinstance(context_window, int) or context_window < 2:
        raise ConfigError(f"context_window must be an integer >= 2, got {context_window!r}",
                          name="context_window")


def remote_model(url: str | Sequence[str], model: str | None = None, tokenizer: Any = None,
                 api_key: str | None = None, *, context_window: int | None = None,
                 name: str | None = None) -> LoadedModel:
    """A model served by one or more OpenAI-compatible servers (vLLM, llama-server, SGLang).

    Args:
        url: the base URL of one upstream (``http://host:8080`` or ``.../v1``), or a list of them
            (requests are spread over the healthy ones; see ``RemoteEngine``).
        model: the upstream's model name (None: the first one its ``/v1/models`` lists).
        tokenizer: the model's tokenizer, for rendering our templates locally: a tokenizer
            object, a :class:`LoadedModel` (its tokenizer), or a local HF directory. None: no local
            tokenizer; the upstream's own chat template is used (``template`` must be None).
        api_key: sent as ``Authorization: Bearer <api_key>``.
        context_window: prompt + reply limit checked before sending (default: the upstream's
            ``max_model_len`` when it reports one, else 2048).
        name: shown in ``/stats``, ``/v1/models`` and previews (default: ``model`` or the host).

    Nothing is contacted here; the first request is.

    Example:
        >>> lm = remote_model("http://127.0.0.1:8080", tokenizer=load_model())   # doctest: +SKIP
        >>> csl.stream(lm, "Hi!", temperature=0).text()
    """
    urls = _normalize_urls(url)
    _check_window(context_window)
    if model is not None and (not isinstance(model, str) or not model):
        raise ConfigError(f"model must be a non-empty string or None, got {model!r}", name="model")
    tok, stop_ids = _resolve_tokenizer(tokenizer)
    spec = RemoteSpec(urls, model, api_key, None, context_window)
    label = name or model or f"remote:{urlsplit(urls[0]).netloc}"
    return LoadedModel(name=label, model=spec, tokenizer=tok, source=" ".join(urls), device="remote",
                       dtype="remote", context_window=context_window or DEFAULT_CONTEXT_WINDOW,
                       stop_token_ids=stop_ids, backend=Backend.REMOTE)


__all__ = ["DEFAULT_CONTEXT_WINDOW", "RemoteSpec", "normalize_url", "remote_model"]
