"""Wire framing of a stream of events: the seed's cumulative records and typed SSE.

Pure functions from :data:`~chatstream_lab.types.StreamEvent` to bytes, so every frame is unit
tested without a server.

* Seed framing (``text/plain``): each record is the *whole reply so far* followed by
  ``<::EOS::>``; a client splits on the delimiter and shows the last complete record
  (ChatStream's own clients keep working). There is no in-band "done" record: the end of the
  body is the end of the reply.
* SSE (``text/event-stream``): ``queued`` {position}, ``delta`` {text}, ``done``
  {finish_reason, usage, message_id, text}, ``error`` {message, type}.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from ..types import Delta, Finished, FinishReason, Queued, StreamEvent
from .errors import public_generation_error
from .logprobs_wire import chat_content

SEED_DELIMITER = "<::EOS::>"
# The record that ends a seed-framed body whose generation failed: ``<::ERROR::>message<::EOS::>``
# (the seed protocol has no error record; a client that shows records shows this one).
SEED_ERROR_MARKER = "<::ERROR::>"
MESSAGE_ID_HEADER = "X-ChatStream-Last-Generated-Message-Id"


class Framing(str, enum.Enum):
    """How ``/chat_stream`` frames its body; chosen by the request's ``Accept`` header."""

    SEED = "seed"
    SSE = "sse"

    @property
    def media_type(self) -> str:
        return "text/event-stream" if self is Framing.SSE else "text/plain; charset=utf-8"

    @classmethod
    def from_accept(cls, accept: str | None) -> Framing:
        return cls.SSE if accept and "text/event-stream" in accept.lower() else cls.SEED


def sse_event(event: str, data: Any) -> bytes:
    """One SSE frame; ``data`` is JSON-encoded on one line (so it never needs splitting)."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


def sse_comment(text: str = "keepalive") -> bytes:
    return f": {text}\n\n".encode()


class SeedEncoder:
    """Cumulative records: keeps the text so far and emits it whole on every delta."""

    def __init__(self) -> None:
        self.text = ""

    def encode(self, event: StreamEvent) -> bytes | None:
        if isinstance(event, Delta):
            if not event.text:
                return None
            self.text += event.text
            return (self.text + SEED_DELIMITER).encode()
        if isinstance(event, Finished):
            if event.finish_reason is FinishReason.ERROR:
                return (SEED_ERROR_MARKER + public_generation_error(event) + SEED_DELIMITER).encode()
            # one last record with the final text, as ChatStream did (it may differ from the
            # deltas only if the engine trimmed a pending stop-string prefix)
            self.text = event.text
            return (event.text + SEED_DELIMITER).encode()
        return None


class SSEEncoder:
    """Typed SSE events; ``message_id`` is repeated in the ``done`` event."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id

    def encode(self, event: StreamEvent) -> bytes | None:
        if isinstance(event, Queued):
            return sse_event("queued", {"position": event.position})
        if isinstance(event, Delta):
            if event.logprobs:  # asked for (generation param logprobs): OpenAI's entries + token_id
                return sse_event("delta", {"text": event.text,
                                           "logprobs": chat_content(event.logprobs, with_ids=True)})
            return sse_event("delta", {"text": event.text}) if event.text else None
        if isinstance(event, Finished):
            if event.finish_reason is FinishReason.ERROR:
                return sse_event("error", {"message": public_generation_error(event),
                                           "type": "generation_error", "message_id": self.message_id})
            return sse_event("done", {"finish_reason": event.finish_reason.value,
                                      "usage": event.usage.as_dict(), "message_id": self.message_id,
                                      "text": event.text})
        return None


def make_encoder(framing: Framing, message_id: str) -> SeedEncoder | SSEEncoder:
    return SSEEncoder(message_id) if framing is Framing.SSE else SeedEncoder()


def parse_seed_records(body: str) -> list[str]:
    """Complete records of a seed-framed body (what a correct client does); for tests and tools."""
    parts = body.split(SEED_DELIMITER)
    return parts[:-1]
