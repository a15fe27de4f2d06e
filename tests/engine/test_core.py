"""The shared engine core (engine/core/): the per-row output pipeline, the engine-thread host
(builds on its own thread, a failed build, a crash), prompt validation and the capability
declaration, on the fast scripted model and a scripted upstream; the real engines run the same
code in test_generator_contract.py, test_openvino.py and the server tests."""

from __future__ import annotations

import threading
import time

import pytest

from chatstream_lab.admission import AdmissionGate
from chatstream_lab.config import Limits, SamplingParams
from chatstream_lab.engine import Engine
from chatstream_lab.engine.core.capabilities import Capabilities
from chatstream_lab.engine.core.protocol import EngineState
from chatstream_lab.engine.core.rows import OutputRow, RowFactory
from chatstream_lab.engine.core.stream import RequestStream
from chatstream_lab.engine.core.validation import check_prompt
from chatstream_lab.engine.factory import capabilities_of
from chatstream_lab.errors import EngineUnavailable, InvalidParameter, ModelLoadError
from chatstream_lab.models import remote_model, scripted_model
from chatstream_lab.prompts import encode_messages, resolve_template
from chatstream_lab.service import Service
from chatstream_lab.types import Delta, FinishReason, Queued, RequestId, TokenLogprob

GREEDY = SamplingParams(temperature=0, max_new_tokens=64)


def _ids(lm, text: str = "hi") -> list[int]:
    return list(encode_messages(resolve_template(None, lm.tokenizer), lm.tokenizer, text).ids)


def _row(stop_strings=(), max_new=64, constraint=None, detokenize=True) -> tuple[OutputRow, RequestStream]:
    lm = scripted_model()
    rows = RowFactory(lm, detokenize=detokenize)
    stream = RequestStream(RequestId("r1"), lambda _rid: None)
    params = SamplingParams(max_new_tokens=max_new)
    row = rows.new_row(OutputRow, stream, [1, 2], params, rows.stops(params, stop_strings), constraint=constraint)
    return row, stream


def _tokens(text: str) -> list[int]:
    return list(scripted_model().tokenizer.encode(text, add_special_tokens=False))


def _deltas(stream: RequestStream) -> list[Delta]:
    return [e for e in stream._drain() if isinstance(e, Delta)]


# -- the per-row output pipeline --------------------------------------------------------------------
def test_a_row_turns_ids_into_deltas_and_stops_at_a_stop_string_split_over_tokens() -> None:
    row, stream = _row(stop_strings=("END",))
    for token in _tokens("Hello EN"):
        row.take(token)
    assert row.finished is None and "".join(d.text for d in _deltas(stream)) == "Hello "  # "EN" held back
    row.take(_tokens("D")[0])
    assert row.finished is not None and row.finished.finish_reason is FinishReason.STOP
    assert row.finished.text == "Hello " and row.finished.usage.completion_tokens == len("Hello END")


def test_a_stop_id_ends_the_row_and_is_reported_last_without_text() -> None:
    """The stop token is a generated token like the others (its id, its logprob marked
    ``ends_reply``), in a last Delta with no text: the arrays hold what completion_tokens counts."""
    row, stream = _row()
    eos = scripted_model().tokenizer.eos_token_id
    for token in _tokens("Hi"):
        row.take(token, TokenLogprob(token, chr(token), -0.1))
    row.take(eos, TokenLogprob(eos, "<eos>", -0.7))
    deltas = _deltas(stream)
    assert [t for d in deltas for t in d.token_ids] == [*_tokens("Hi"), eos]
    assert deltas[-1].text == "" and deltas[-1].token_ids == (eos,)
    assert [(lp.logprob, lp.ends_reply) for d in deltas for lp in d.logprobs] == [(-0.1, False)] * 2 + [(-0.7, True)]
    assert row.finished is not None and row.finished.finish_reason is FinishReason.STOP
    assert row.finished.text == "Hi" == "".join(d.text for d in deltas)
    assert row.finished.usage.completion_tokens == 3


def test_a_stop_id_without_logprobs_is_reported_by_its_id() -> None:
    row, stream = _row()
    eos = scripted_model().tokenizer.eos_token_id
    for token in [*_tokens("Hi"), eos]:
        row.take(token)
    deltas = _deltas(stream)
    assert deltas[-1].token_ids == (eos,) and deltas[-1].text == "" and deltas[-1].logprobs == ()
    assert row.finished is not None and row.finished.text == "Hi"


def test_max_new_tokens_gives_length_with_the_held_back_text_flushed() -> None:
    row, stream = _row(stop_strings=("xyz",), max_new=3)
    for token in _tokens("abx"):
        row.take(token)
    assert row.finished is not None and row.finished.finish_reason is FinishReason.LENGTH
    assert row.finished.text == "abx" == "".join(d.text for d in _deltas(stream))


class _Allow:
    """A constraint (the structured-output hook) that allows ``allowed`` and is complete after
    ``complete_after`` tokens."""

    def __init__(self, allowed: set[int], complete_after: int) -> None:
        self.allowed, self.left = allowed, complete_after

    def accept(self, token: int) -> bool:
        self.left -= 1
        return token in self.allowed

    @property
    def complete(self) -> bool:
        return self.left <= 0


def test_the_constraint_hook_can_end_a_row_as_complete_or_as_refused() -> None:
    ab = set(_tokens("ab"))
    row, stream = _row(constraint=_Allow(ab, complete_after=2))
    for token in _tokens("ab"):
        row.take(token)
    assert row.finished is not None and row.finished.finish_reason is FinishReason.STOP
    assert row.finished.text == "ab"
    row, _ = _row(constraint=_Allow(ab, complete_after=5))
    row.take(_tokens("a")[0])
    row.take(_tokens("z")[0])
    assert row.finished is not None and row.finished.finish_reason is FinishReason.ERROR


def test_a_text_row_filters_upstream_text_and_starts_over_clean() -> None:
    row, stream = _row(stop_strings=("END",), detokenize=False)
    assert not row.take_text("Hello E")
    row.restart_text()  # the attempt failed before anything was delivered past "Hello "
    assert not row.take_text("Bye")
    assert row.take_text(" ENDing")
    row.finish(FinishReason.STOP)
    assert row.finished is not None and row.finished.text == "Hello Bye "
    assert row.finished.usage.completion_tokens == 2  # pieces of the last attempt


def test_a_row_finishes_once() -> None:
    row, _ = _row()
    assert row.finish(FinishReason.CANCELLED)
    assert not row.finish(FinishReason.ERROR, "late")
    assert row.finished is not None and row.finished.finish_reason is FinishReason.CANCELLED


# -- prompt validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(("ids", "position"), [([1, 2, 999999], 2), ([-1, 2], 0), ([5, 259], 1)])
def test_an_id_outside_the_vocabulary_is_refused_naming_its_position(ids, position) -> None:
    with pytest.raises(InvalidParameter) as info:
        check_prompt(ids, window=4096, vocab_size=259)
    assert info.value.name == "prompt" and f"at position {position}" in str(info.value)
    assert check_prompt([0, 258], window=4096, vocab_size=259) == [0, 258]
    with pytest.raises(InvalidParameter, match="at position 1"):
        check_prompt([3, -5], window=4096, vocab_size=None)  # unknown vocabulary: negatives still refused


def test_every_engine_refuses_a_bad_id_before_anything_is_queued(scripted) -> None:
    from chatstream_lab.engine.remote import RemoteEngine
    from chatstream_lab.models import ByteTokenizer

    torch_engine = Engine(scripted("x"))
    remote = RemoteEngine(remote_model("http://127.0.0.1:9", tokenizer=ByteTokenizer()))
    for engine in (torch_engine, remote):
        for bad in ([1, 2, 999999], [1, -3]):
            with pytest.raises(InvalidParameter, match="position"):
                engine.submit(bad, GREEDY)
        assert engine.gate.snapshot().waiting == 0 and not engine.running  # nothing queued or started
        engine.close()


# -- the host: builds on the engine's thread ---------------------------------------------------------
class _SlowBuild(Engine):
    """An engine whose build waits for ``release`` (a model that takes long to load)."""

    def __init__(self, *args, release: threading.Event, fail: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release, self.fail = release, fail
        self.build_thread: str | None = None

    def build(self) -> None:
        self.build_thread = threading.current_thread().name
        self.release.wait(10)
        if self.fail:
            raise ModelLoadError("no weights at /private/models/x")
        super().build()


def test_start_returns_at_once_and_requests_wait_queued_while_the_engine_builds(scripted) -> None:
    release = threading.Event()
    engine = _SlowBuild(scripted("Hello"), release=release, gather_s=0)
    try:
        t0 = time.perf_counter()
        stream = engine.start().submit(_ids(engine.model), GREEDY)
        assert time.perf_counter() - t0 < 0.5
        first = next(iter(stream))
        assert isinstance(first, Queued)
        health = engine.health()
        assert health.state is EngineState.STARTING and not health.ok and "loading" in (health.detail or "")
        release.set()
        assert stream.result(10).text == "Hello"
        assert engine.build_thread == "chatstream-engine"  # built on the engine's thread
        assert engine.health().state is EngineState.RUNNING
        engine.wait_ready(1)
    finally:
        release.set()
        engine.close()


def test_a_failed_build_ends_every_waiting_request_and_health_says_why(scripted) -> None:
    release = threading.Event()
    engine = _SlowBuild(scripted("x"), release=release, fail=True, num_of_concurrent_executions=1,
                        max_queue_size=3)
    try:
        streams = [engine.submit(_ids(engine.model), GREEDY) for _ in range(3)]
        release.set()
        finals = [s.result(10) for s in streams]
        assert [f.finish_reason for f in finals] == [FinishReason.ERROR] * 3
        assert all(f.error == "the engine could not start" for f in finals)
        snap = engine.gate.snapshot()
        assert (snap.running, snap.waiting) == (0, 0)
        health = engine.health()
        assert health.state is EngineState.FAILED and not health.ok
        assert "ModelLoadError" in (health.detail or "") and "/private" not in (health.detail or "")
        with pytest.raises(EngineUnavailable):
            engine.submit(_ids(engine.model), GREEDY)
        with pytest.raises(EngineUnavailable, match="/private/models/x"):  # a local caller hears it all
            engine.wait_ready(1)
    finally:
        engine.close()


def test_close_while_building_cancels_the_waiting_requests(scripted) -> None:
    release = threading.Event()
    engine = _SlowBuild(scripted("x"), release=release)
    stream = engine.submit(_ids(engine.model), GREEDY)
    closer = threading.Thread(target=engine.close)
    closer.start()
    release.set()
    closer.join(10)
    assert stream.result(5).finish_reason is FinishReason.CANCELLED
    assert engine.health().state is EngineState.CLOSED


# -- capabilities ---------------------------------------------------------------------------------------
def test_capabilities_are_declared_and_known_before_anything_is_built(scripted) -> None:
    local = Service.build(scripted("x"))
    remote = Service.build(remote_model("http://127.0.0.1:9"))
    assert local.capabilities == Capabilities(logprobs=True, scoring=True, grammar=True, kv_reuse=True, inline=True)
    assert remote.capabilities.remote and not remote.capabilities.logprobs
    assert not remote.capabilities.reply_token_ids and remote.capabilities.message_prompts
    assert all(c.grammar for c in (local.capabilities, remote.capabilities))  # constrained decoding everywhere
    assert local._m.built is None and remote._m.built is None  # asked without building
    assert local.generator.capabilities == local.capabilities
    assert remote.generator.capabilities == capabilities_of(remote.model)
    assert local.health().state is EngineState.IDLE  # made, not started


def test_a_shared_generator_reports_its_own_capabilities(scripted) -> None:
    engine = Engine(scripted("x"), gate=AdmissionGate(Limits(1, 1)))
    service = Service.build(scripted("x"), generator=engine)
    assert service.capabilities is engine.capabilities
