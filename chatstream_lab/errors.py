"""One error hierarchy for the whole package.

Every exception a user can see derives from :class:`ChatStreamLabError`, and each carries the
data that explains it (not just text). HTTP status codes are mapped in one place
(``server/errors.py``), never here::

    ChatStreamLabError
    ├── ConfigError (ValueError)          bad argument; .name names it
    │   └── InvalidParameter              a sampling / limit value out of range
    ├── ModelLoadError                    model or bundled package missing, bad dtype/device
    ├── TemplateError                     unknown preset, template that cannot render
    ├── ModelClosed                       a LoadedModel used after close()
    ├── GenerationError                   the model failed while generating
    │   └── EngineUnavailable             the generator cannot serve now (HTTP 503 + Retry-After)
    │       ├── EngineClosed              it was closed (503 ``engine_closed``)
    │       └── ShuttingDown              the server is stopping (503 ``shutting_down``)
    ├── AdmissionError
    │   └── QueueFull                     every slot busy and the queue is full (HTTP 429)
    ├── SessionError
    │   ├── SessionBusy                   a turn is already in flight for this session (409)
    │   └── NothingToRegenerate           regenerate on an empty history (409)
    └── ServerStartError                  port busy, server failed to start
"""

from __future__ import annotations


class ChatStreamLabError(Exception):
    """Base class of every error raised by chatstream_lab."""


class ConfigError(ChatStreamLabError, ValueError):
    """A configuration value is wrong. ``name`` is the offending argument."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class InvalidParameter(ConfigError):
    """A generation parameter is out of range or of the wrong type."""


class ModelLoadError(ChatStreamLabError):
    """The model could not be loaded; the message says how to fix it."""


class TemplateError(ChatStreamLabError):
    """A prompt template is unknown or cannot render the conversation."""


class ModelClosed(ChatStreamLabError):
    """A :class:`~chatstream_lab.models.LoadedModel` was used after ``close()`` freed its weights."""


class GenerationError(ChatStreamLabError):
    """The model raised while generating. The request ended with finish reason ``error``."""


class EngineUnavailable(GenerationError):
    """The generator cannot serve now (its build failed, its thread died, or every upstream is
    down): HTTP 503 with ``Retry-After``."""


class EngineClosed(EngineUnavailable):
    """The generator was closed, or the endpoint serving it was stopped: HTTP 503. Create a new
    one (or call ``Lab.serve`` / ``start`` again)."""


class ShuttingDown(EngineUnavailable):
    """The server is stopping (SIGTERM, Ctrl-C, ``stop()``): it takes no new request. HTTP 503
    ``shutting_down`` with ``Retry-After``: retry on another replica, or once it is back."""


class AdmissionError(ChatStreamLabError):
    """Base class for admission (concurrency limit + queue) refusals."""


class QueueFull(AdmissionError):
    """Every slot is busy and ``max_queue_size`` requests are already waiting."""

    def __init__(self, *, running: int, waiting: int, max_queue_size: int) -> None:
        super().__init__(
            f"server busy: {running} running, {waiting} waiting (max_queue_size={max_queue_size}); "
            "retry shortly"
        )
        self.running = running
        self.waiting = waiting
        self.max_queue_size = max_queue_size


class SessionError(ChatStreamLabError):
    """Base class for per-user session errors."""


class SessionBusy(SessionError):
    """A turn is already being generated for this session; wait for it or cancel it."""


class NothingToRegenerate(SessionError):
    """``regenerate`` was asked for but the conversation has no user turn yet."""


class ServerStartError(ChatStreamLabError):
    """The background server could not start (for example, the port is in use)."""
