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
    ├── ServerStartError                  port busy, server failed to start
    └── MissingExtra (ImportError)        an optional package is not installed; names the extra
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
    """Every slot is busy and ``max_queue_size`` requests are already waiting.

    The gate counts a request it has not yet handed to the engine as waiting, even when a slot is
    free for it (the engine admits at its next step): so a refusal can see "1 running, 6 waiting"
    with 2 slots and a queue of 5. The message splits those into what takes a slot (running, or
    starting in a free one) and what queues, so its numbers add up to the limits it names.
    """

    def __init__(self, *, running: int, waiting: int, limit: int, max_queue_size: int) -> None:
        self.running = running
        self.waiting = waiting
        self.limit = limit
        self.max_queue_size = max_queue_size
        self.starting = max(0, min(waiting, limit - running))  # bound for a free slot, not queued
        self.queued = waiting - self.starting
        slots = f"{running + self.starting} of {limit} slots busy"
        if self.starting:
            slots += f" ({running} running, {self.starting} starting)"
        super().__init__(
            f"server busy: {slots} and {self.queued} of {max_queue_size} queue places taken "
            f"(num_of_concurrent_executions={limit}, max_queue_size={max_queue_size}); retry shortly, "
            "or serve with a larger max_queue_size for bulk clients such as an evaluation harness"
        )


class SessionError(ChatStreamLabError):
    """Base class for per-user session errors."""


class SessionBusy(SessionError):
    """A turn is already being generated for this session; wait for it or cancel it."""


class NothingToRegenerate(SessionError):
    """``regenerate`` was asked for but the conversation has no user turn yet."""


class ServerStartError(ChatStreamLabError):
    """The background server could not start (for example, the port is in use)."""


class MissingExtra(ChatStreamLabError, ImportError):
    """An optional package is missing; the message names the extra that installs it
    (``pip install 'chatstream_lab[notebook]'``)."""

    def __init__(self, message: str, *, extra: str) -> None:
        super().__init__(message)
        self.extra = extra
