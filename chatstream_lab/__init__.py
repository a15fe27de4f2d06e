"""chatstream_lab: streaming LLM chat for notebooks, and the same configuration as an endpoint.

    >>> import chatstream_lab as csl
    >>> lm = csl.load_model()                                   # bundled SmolLM2-135M-Instruct
    >>> for ev in csl.stream(lm, "What is the capital of France?", temperature=0):
    ...     print(getattr(ev, "text", ""), end="")

Importing the package has no side effects (no threads, handlers or patching); heavy modules
(torch, transformers, fastapi, ipywidgets) load on first use of the name that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import SamplingParams
from .errors import (
    ChatStreamLabError,
    ConfigError,
    GenerationError,
    InvalidParameter,
    MissingExtra,
    ModelLoadError,
    NothingToRegenerate,
    QueueFull,
    ServerStartError,
    SessionBusy,
    TemplateError,
)
from .types import Delta, Finished, FinishReason, Queued, ReplyScore, TokenLogprob, TopLogprob, Usage

__version__ = "0.1.0"

# name -> module that defines it (imported lazily, PEP 562)
_LAZY = {
    "load_model": ".models",
    "scripted_model": ".models",
    "LoadedModel": ".models",
    "remote_model": ".models",
    "stream": ".engine",
    "score": ".engine",
    "Engine": ".engine",
    "RequestStream": ".engine",
    "presets": ".prompts",
    "ChatPrompt": ".prompts",
    "DeclarativeTemplate": ".prompts",
    "JinjaTemplate": ".prompts",
    "inspect_prompt": ".prompts",
    "Constraint": ".constraint",
    "Tool": ".prompts.tools",
    "ChatStream": ".server",
    "create_app": ".server",
    "Lab": ".lab",
    "GridResult": ".experiments",
    "Judge": ".experiments",
    "checks": ".experiments",
    "load_config": ".prompts.config_file",
}

__all__ = sorted([
    "ChatStreamLabError", "ConfigError", "Delta", "FinishReason", "Finished", "GenerationError",
    "InvalidParameter", "MissingExtra", "ModelLoadError", "NothingToRegenerate", "QueueFull", "Queued",
    "ReplyScore", "SamplingParams", "ServerStartError", "SessionBusy", "TemplateError", "TokenLogprob",
    "TopLogprob", "Usage", "__version__",
    *_LAZY,
])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chatstream_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .constraint import Constraint
    from .engine import Engine, RequestStream, score, stream
    from .experiments import GridResult, Judge, checks
    from .lab import Lab
    from .models import LoadedModel, load_model, remote_model, scripted_model
    from .prompts import ChatPrompt, DeclarativeTemplate, JinjaTemplate, inspect_prompt, presets
    from .prompts.config_file import load_config
    from .prompts.tools import Tool
    from .server import ChatStream, create_app
