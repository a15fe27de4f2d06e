"""``stream()``: one request, generated inline in the calling thread.

The same :class:`BatchDecoder` the engine thread runs, driven here step by step for a single
request, so a notebook or script gets the engine's exact semantics (sampling, stop strings,
UTF-8-safe deltas, one final event) without a server or a thread. A model whose tokens come from
elsewhere (a remote server, OpenVINO) runs on a private one-request engine instead, started when
the iteration starts and closed when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..admission import AdmissionGate
from ..config import Limits, SamplingParams
from ..errors import GenerationError
from ..types import Finished, FinishReason, Message, Queued, RequestId, StreamEvent
from .batching.decoder import BatchDecoder, Row
from .core.stream import RequestStream

if TYPE_CHECKING:  # pragma: no cover
    from ..prompts.encode import EncodedPrompt


class InlineStream:
    """Iterable of events for one request; ``cancel()`` may be called from any thread."""

    def __init__(self, model: Any, prompt_ids: list[int], params: SamplingParams,
                 stop_strings: tuple[str, ...] = (), output_replacements: tuple[tuple[str, str], ...] = ()
                 ) -> None:
        self._cancel = threading.Event()
        self.id = RequestId("inline")
        self._stream = RequestStream(self.id, lambda _rid: self._cancel.set())
        from .batching.backends import for_model

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
           ) -> InlineStream | EngineInlineStream:
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
    from .factory import capabilities_of

    sampling = SamplingParams().replace(**params)
    encoded = encode_messages(resolve_served_template(template, model.tokenizer), model.tokenizer, messages)
    if not capabilities_of(model).inline:
        return EngineInlineStream(model, encoded, sampling)
    return InlineStream(model, list(encoded.ids), sampling, encoded.stop_strings,
                        encoded.output_replacements)


class EngineInlineStream:
    """What ``stream()`` returns for a model that runs on its own engine (remote, OpenVINO).

    Backed by a private request-level engine (one request, no queue) that starts when the
    iteration starts and is closed when it ends, so a notebook cell leaves no thread behind.
    ``cancel()`` may be called from any thread.
    """

    def __init__(self, model: Any, encoded: EncodedPrompt, params: SamplingParams) -> None:
        self._model = model
        self._encoded = encoded
        self._params = params
        self._cancelled = threading.Event()
        self._stream: RequestStream | None = None
        self.finished: Finished | None = None

    def cancel(self) -> None:
        self._cancelled.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()

    def __iter__(self) -> Iterator[StreamEvent]:
        from .factory import build_generator

        engine = build_generator(self._model, AdmissionGate(Limits(1, 0)))
        try:
            enc = self._encoded
            extra: dict[str, Any] = {} if enc.messages is None else {"messages": enc.messages}
            engine.wait_ready()  # this iteration is the caller's own wait; a failed build says why
            self._stream = engine.submit(enc.ids, self._params, stop_strings=enc.stop_strings,
                                         output_replacements=enc.output_replacements, **extra)
            if self._cancelled.is_set():
                self._stream.cancel()
            for event in self._stream:
                if isinstance(event, Queued):
                    continue
                if isinstance(event, Finished):
                    self.finished = event
                yield event
        finally:
            if self._stream is not None and not self._stream.done:
                self._stream.cancel()
            engine.close()

    def text(self) -> str:
        """Run to the end and return the reply; raises GenerationError if generation failed."""
        for _ in self:
            pass
        assert self.finished is not None
        if self.finished.finish_reason is FinishReason.ERROR:
            raise GenerationError(self.finished.error or "generation failed")
        return self.finished.text


__all__ = ["EngineInlineStream", "FinishReason", "InlineStream", "stream"]
