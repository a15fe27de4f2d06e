"""``stream()``: one request, generated inline in the calling thread.

The same :class:`BatchDecoder` the engine thread runs, driven here step by step for a single
request, so a notebook or script gets the engine's exact semantics (sampling, stop strings,
UTF-8-safe deltas, one final event) without a server or a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..config import SamplingParams
from ..types import Finished, FinishReason, Message, RequestId, StreamEvent
from .decoder import BatchDecoder, Row
from .stream import RequestStream

if TYPE_CHECKING:  # pragma: no cover
    from .remote import RemoteInlineStream


class InlineStream:
    """Iterable of events for one request; ``cancel()`` may be called from any thread."""

    def __init__(self, model: Any, prompt_ids: list[int], params: SamplingParams,
                 stop_strings: tuple[str, ...] = (), output_replacements: tuple[tuple[str, str], ...] = ()
                 ) -> None:
        self._cancel = threading.Event()
        self.id = RequestId("inline")
        self._stream = RequestStream(self.id, lambda _rid: self._cancel.set())
        from .backends import for_model

        self._decoder = BatchDecoder(model, for_model(model), on_retire=self._retire)
        self._row: Row = self._decoder.make_row(self._stream, prompt_ids, params, stop_strings,
                                                output_replacements)
        self.finished: Finished | None = None

    def _retire(self, row: Row) -> None:
        assert row.finished is not None
        row.stream._push(row.finished)

    def cancel(self) -> None:
        self._cancel.set()

    def __iter__(self) -> Iterator[StreamEvent]:
        self._decoder.add(self._row)
        events = self._stream._drain
        while self._row.finished is None:
            if self._cancel.is_set():
                self._decoder.cancel({self.id})
            else:
                self._decoder.step()
            yield from events()
        yield from events()
        self.finished = self._row.finished

    def text(self) -> str:
        """Run to the end and return the reply."""
        for _ in self:
            pass
        assert self.finished is not None
        return self.finished.text


def stream(model: Any, messages: str | list[Message], template: Any = None, **params: Any
           ) -> InlineStream | RemoteInlineStream:
    """Stream a reply to ``messages`` token by token.

    Args:
        model: a :class:`~chatstream_lab.models.LoadedModel` (``load_model()``, ``scripted_model()``).
        messages: a list of ``{"role", "content"}`` dicts, or one user message as a string.
        template: None (the model's own chat template), a preset name (``"chatml"``) or a
            template object.
        **params: :class:`~chatstream_lab.config.SamplingParams` fields (``max_new_tokens``,
            ``temperature`` (0 = greedy), ``top_k``, ``top_p``, ``min_p``,
            ``repetition_penalty``, ``seed``, ``stop``).

    Yields:
        ``Delta`` events (``.text``), then exactly one ``Finished`` (``.finish_reason``,
        ``.usage``, ``.text``).

    Raises:
        InvalidParameter: a parameter is out of range (the message names it).

    Example:
        >>> for ev in stream(load_model(), "What is the capital of France?", temperature=0):
        ...     print(getattr(ev, "text", ""), end="")                  # doctest: +SKIP
    """
    from ..prompts import encode_messages
    from ..prompts.resolve import resolve_served_template

    sampling = SamplingParams().replace(**params)
    encoded = encode_messages(resolve_served_template(template, model.tokenizer), model.tokenizer, messages)
    if getattr(model, "backend", "torch") == "remote":
        return _remote_inline(model, encoded, sampling)
    return InlineStream(model, list(encoded.ids), sampling, encoded.stop_strings,
                        encoded.output_replacements)


def _remote_inline(model: Any, encoded: Any, params: SamplingParams) -> RemoteInlineStream:
    """A remote model has no weights here: its own engine runs the request (closed at the end)."""
    from .remote import inline_remote_stream

    return inline_remote_stream(model, encoded, params)


__all__ = ["FinishReason", "InlineStream", "stream"]
