"""Engine contract, on the scripted model: fast, deterministic, the real control flow."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from chatstream_lab.config import SamplingParams
from chatstream_lab.engine import Engine
from chatstream_lab.errors import ConfigError, InvalidParameter, QueueFull
from chatstream_lab.types import Delta, Finished, FinishReason, Queued

GREEDY = SamplingParams(temperature=0)


def _ids(model, text: str = "hi") -> list[int]:
    return model.tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture
def make_engine():
    engines: list[Engine] = []

    def make(model, **kw) -> Engine:
        engine = Engine(model, **kw).start()
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.close()


def test_stream_ends_with_exactly_one_finished(scripted, make_engine) -> None:
    lm = scripted("Hello 🎉!")
    events = list(make_engine(lm).submit(_ids(lm), GREEDY))
    assert isinstance(events[0], Queued)
    assert sum(isinstance(e, Finished) for e in events) == 1
    assert isinstance(events[-1], Finished)
    fin = events[-1]
    assert fin.finish_reason is FinishReason.STOP
    assert fin.text == "Hello 🎉!" == "".join(e.text for e in events if isinstance(e, Delta))
    assert fin.usage.completion_tokens == len("Hello 🎉!".encode()) + 1  # + EOS
    assert fin.usage.ttft_s is not None and fin.usage.prompt_tokens == len(_ids(lm))


def test_max_new_tokens_gives_length(scripted, make_engine) -> None:
    lm = scripted("abcdefghij")
    fin = make_engine(lm).submit(_ids(lm), SamplingParams(temperature=0, max_new_tokens=4)).result(5)
    assert (fin.finish_reason, fin.text) == (FinishReason.LENGTH, "abcd")


def test_stop_string_split_over_tokens_stops_and_never_leaks(scripted, make_engine) -> None:
    lm = scripted("Answer.\nUSER: forged turn")
    stream = make_engine(lm).submit(_ids(lm), GREEDY, stop_strings=("\nUSER:",))
    deltas = "".join(e.text for e in stream if isinstance(e, Delta))
    assert deltas == "Answer." == stream.finished.text
    assert stream.finished.finish_reason is FinishReason.STOP


def test_model_error_finishes_with_error_and_frees_the_slot(scripted, make_engine) -> None:
    engine = make_engine(scripted("will fail", fail_after=3), num_of_concurrent_executions=1)
    lm = engine.model
    fin = engine.submit(_ids(lm), GREEDY).result(5)
    assert fin.finish_reason is FinishReason.ERROR and "scripted failure" in (fin.error or "")
    assert engine.gate.snapshot().running == 0
    assert engine.running  # the engine thread survived


def test_queue_full_is_refused_synchronously(scripted, make_engine) -> None:
    lm = scripted("x" * 50, token_delay=0.01)
    engine = make_engine(lm, num_of_concurrent_executions=2, max_queue_size=3)
    streams = [engine.submit(_ids(lm), GREEDY) for _ in range(5)]
    with pytest.raises(QueueFull) as info:
        engine.submit(_ids(lm), GREEDY)
    assert info.value.max_queue_size == 3
    assert all(s.result(10).finish_reason is FinishReason.STOP for s in streams)
    assert engine.gate.snapshot().rejected_total == 1


def test_cancel_while_queued_never_reaches_the_model(make_engine) -> None:
    from chatstream_lab.models import scripted_model

    seen_prompts: list[str] = []

    def reply(prompt: str) -> str:
        seen_prompts.append(prompt)
        return "y" * 40

    lm = scripted_model(reply, token_delay=0.01)
    engine = make_engine(lm, num_of_concurrent_executions=1, max_queue_size=2)
    running = engine.submit(_ids(lm, "first"), GREEDY)
    queued = engine.submit(_ids(lm, "second"), GREEDY)
    assert queued.position == 2 or queued.position == 1
    queued.cancel()
    assert queued.result(2).finish_reason is FinishReason.CANCELLED
    running.result(10)
    assert not any("second" in p for p in seen_prompts)
    assert engine.gate.snapshot().waiting == 0


def test_cancel_while_running_frees_slot_within_a_step(scripted, make_engine) -> None:
    lm = scripted("z" * 500, token_delay=0.02)
    engine = make_engine(lm, num_of_concurrent_executions=1, max_queue_size=1)
    stream = engine.submit(_ids(lm), GREEDY)
    for ev in stream:
        if isinstance(ev, Delta):
            break
    t0 = time.perf_counter()
    stream.cancel()
    fin = stream.result(2)
    assert fin.finish_reason is FinishReason.CANCELLED
    assert time.perf_counter() - t0 < 0.5  # a step is 20 ms
    assert engine.gate.snapshot().running == 0
    nxt = engine.submit(_ids(lm), SamplingParams(temperature=0, max_new_tokens=3)).result(5)
    assert nxt.finish_reason is FinishReason.LENGTH


def test_queued_request_hears_its_position(scripted, make_engine) -> None:
    lm = scripted("w" * 30, token_delay=0.01)
    engine = make_engine(lm, num_of_concurrent_executions=1, max_queue_size=3)
    engine.submit(_ids(lm), GREEDY)
    second = engine.submit(_ids(lm), GREEDY)
    third = engine.submit(_ids(lm), GREEDY)
    positions = [e.position for e in third if isinstance(e, Queued)]
    assert positions[0] == 3 or positions[0] == 2
    assert positions[-1] == 1
    assert second.result(5).finish_reason is FinishReason.STOP


async def test_async_consumer_and_loop_stays_responsive(scripted, make_engine) -> None:
    lm = scripted("q" * 60, token_delay=0.02)
    engine = make_engine(lm, num_of_concurrent_executions=2)
    max_lag = 0.0

    async def probe() -> None:
        nonlocal max_lag
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            max_lag = max(max_lag, time.perf_counter() - t - 0.005)

    task = asyncio.create_task(probe())
    texts = []
    for stream in [engine.submit(_ids(lm), GREEDY) for _ in range(2)]:
        texts.append("".join([e.text async for e in stream if isinstance(e, Delta)]))
    task.cancel()
    assert texts == ["q" * 60, "q" * 60]
    assert max_lag < 0.1  # generation never ran on this loop


def test_close_finishes_everything(scripted) -> None:
    lm = scripted("c" * 400, token_delay=0.01)
    engine = Engine(lm, num_of_concurrent_executions=1, max_queue_size=2).start()
    streams = [engine.submit(_ids(lm), GREEDY) for _ in range(3)]
    time.sleep(0.05)
    engine.close()
    reasons = [s.result(2).finish_reason for s in streams]
    assert reasons == [FinishReason.CANCELLED] * 3
    assert not engine.running  # the engine thread ended
    assert not any(t.name == "chatstream-engine" and t.is_alive() for t in threading.enumerate()
                   if t is engine._host._thread)


def test_prompt_over_context_window_is_refused(make_engine) -> None:
    from chatstream_lab.models import scripted_model

    lm = scripted_model("x", context_window=16)
    with pytest.raises(InvalidParameter, match="context window"):
        make_engine(lm).submit(list(range(20)), GREEDY)


def test_many_concurrent_requests_each_get_one_finish(scripted, make_engine) -> None:
    lm = scripted(lambda p: p[-30:], token_delay=0.001)
    engine = make_engine(lm, num_of_concurrent_executions=4, max_queue_size=20)
    streams = [engine.submit(_ids(lm, f"n{i}"), GREEDY) for i in range(20)]
    for i, s in enumerate(streams[:5]):
        if i % 2:
            s.cancel()
    finals = [list(s)[-1] for s in streams]
    assert all(isinstance(f, Finished) for f in finals)
    snap = engine.gate.snapshot()
    assert (snap.running, snap.waiting) == (0, 0)


def test_arrivals_are_prefilled_together_and_early_finishers_leave_the_group(make_engine) -> None:
    from chatstream_lab.models import scripted_model

    # "quit" prompts get an empty reply: EOS is their first token, decided inside the group prefill
    lm = scripted_model(lambda p: "" if "quit" in p else "ok " * 5, token_delay=0.005)
    engine = make_engine(lm, num_of_concurrent_executions=6, max_queue_size=0)
    texts = ["a", "quit", "b", "quit", "c", "d"]
    streams = [engine.submit(_ids(lm, t), GREEDY) for t in texts]
    finals = [s.result(5) for s in streams]
    assert [f.text for f in finals] == ["" if t == "quit" else "ok " * 5 for t in texts]
    assert all(f.finish_reason is FinishReason.STOP for f in finals)
    # 16 tokens per reply: ~15 steps when the six join together, ~20 if they joined one per step
    assert engine.steps <= 17
    assert engine.gate.snapshot().running == 0


def test_inline_stream_cancelled_from_another_thread(scripted) -> None:
    import chatstream_lab as csl

    gen = csl.stream(scripted("x" * 400, token_delay=0.005), "hi", temperature=0)
    seen: list = []
    consumer = threading.Thread(target=lambda: seen.extend(gen))
    consumer.start()
    time.sleep(0.1)
    gen.cancel()
    consumer.join(5)
    assert not consumer.is_alive()
    final = seen[-1]
    assert isinstance(final, Finished) and final.finish_reason is FinishReason.CANCELLED
    assert 0 < len(final.text) < 400 and sum(isinstance(e, Finished) for e in seen) == 1


def _record_prefills(engine: Engine) -> list[int]:
    """Sizes of the prefills the engine runs (1: a prompt alone, n: a group of n)."""
    engine.wait_ready(30)  # the step backend is built on the engine's thread
    backend = engine._decoder.backend
    sizes: list[int] = []
    alone, group = backend.prefill, backend.prefill_group

    def prefill(pf, budget):
        sizes.append(1)
        return alone(pf, budget)

    def prefill_group(prompts):
        sizes.append(len(prompts))
        return group(prompts)

    backend.prefill, backend.prefill_group = prefill, prefill_group
    return sizes


@pytest.mark.parametrize(("gather_s", "expected"), [(0.2, [4]), (0.0, None)])
def test_a_burst_reaching_an_idle_engine_is_prefilled_together(scripted, make_engine, gather_s, expected):
    # Requests sent together arrive a few ms apart; an idle engine waits for the rest of the
    # burst (each within gather_s of the last) instead of prefilling the first one alone.
    lm = scripted("The same reply for everyone.", token_delay=0.005)
    engine = make_engine(lm, num_of_concurrent_executions=4, gather_s=gather_s)
    sizes = _record_prefills(engine)
    streams = []
    for i in range(4):
        streams.append(engine.submit(_ids(lm, f"question {i}"), GREEDY))
        time.sleep(0.02)
    assert all(s.text(10) == "The same reply for everyone." for s in streams)
    if expected is not None:
        assert sizes == expected
    else:
        assert sizes[0] == 1 and len(sizes) > 1  # no gathering: the first prompt went in alone


def test_gather_s_is_validated(scripted) -> None:
    with pytest.raises(ConfigError, match="gather_s"):
        Engine(scripted("x"), gather_s=-1)


def _join_runs_out_of_memory(lm, release: threading.Event):
    """A scripted backend whose ``join`` raises (once ``release`` is set) outside any request's own
    error handling."""
    from chatstream_lab.engine.batching.backends import ScriptedBackend

    class Exploding(ScriptedBackend):
        def join(self, *args, **kwargs):
            release.wait(5)
            raise MemoryError("cannot grow the KV cache")

    return Exploding(lm.model, lm.tokenizer)


def test_a_dying_engine_thread_ends_every_request_and_later_ones_fail_fast(scripted, make_engine) -> None:
    from chatstream_lab.engine.core.protocol import EngineState
    from chatstream_lab.errors import EngineUnavailable

    lm = scripted("never streamed")
    release = threading.Event()
    engine = make_engine(lm, num_of_concurrent_executions=1, max_queue_size=3, gather_s=0,
                         backend=_join_runs_out_of_memory(lm, release))
    streams = [engine.submit(_ids(lm), GREEDY) for _ in range(3)]  # one admitted, two queued
    release.set()
    finals = [s.result(5) for s in streams]
    assert [f.finish_reason for f in finals] == [FinishReason.ERROR] * 3
    assert all("MemoryError" not in (f.error or "") for f in finals)  # no internals in the message
    snap = engine.gate.snapshot()
    assert (snap.running, snap.waiting) == (0, 0)  # every slot freed
    assert engine.health().state is EngineState.FAILED and not engine.health().ok
    with pytest.raises(EngineUnavailable):
        engine.submit(_ids(lm), GREEDY)


def test_an_observer_that_raises_does_not_kill_the_engine(scripted, make_engine) -> None:
    class Broken:
        def __getattr__(self, name):
            def fail(*args):
                raise RuntimeError(f"observer bug in {name}")
            return fail

    lm = scripted("still fine")
    engine = make_engine(lm, observer=Broken())
    assert engine.submit(_ids(lm), GREEDY).text(5) == "still fine"
    assert engine.submit(_ids(lm), GREEDY).text(5) == "still fine"
    assert engine.gate.snapshot().running == 0
