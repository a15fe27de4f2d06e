"""EventStreamResponse against raw ASGI receive/send fakes: disconnects, send failures, exactly-once."""

import asyncio

from chatstream_lab.server.framing import SeedEncoder
from chatstream_lab.server.streaming import EventStreamResponse, Outcome
from chatstream_lab.types import Delta, Finished, FinishReason, Queued, RequestId

R = RequestId("r")


class FakeStream:
    """Yields scripted events; after cancel() it ends with Finished(CANCELLED), like the engine."""

    def __init__(self, events, delay=0.01):
        self.events = list(events)
        self.delay = delay
        self.cancelled = 0
        self.text = ""

    def cancel(self):
        self.cancelled += 1

    async def __aiter__(self):
        for ev in self.events:
            await asyncio.sleep(self.delay)
            if self.cancelled:
                yield Finished(R, FinishReason.CANCELLED, self.text)
                return
            if isinstance(ev, Delta):
                self.text += ev.text
            yield ev
            if isinstance(ev, Finished):
                return


def run(resp, receive, send):
    outcomes = []

    async def on_done(outcome, finished):
        outcomes.append((outcome, finished))

    resp.on_done = on_done

    async def main():
        await asyncio.wait_for(resp({"type": "http"}, receive, send), 5)

    asyncio.run(main())
    return outcomes


def never_disconnect():
    async def receive():
        await asyncio.sleep(3600)
    return receive


def disconnect_after(seconds):
    async def receive():
        await asyncio.sleep(seconds)
        return {"type": "http.disconnect"}
    return receive


def test_success_sends_all_records_and_reports_once():
    stream = FakeStream([Queued(R, 1), Delta(R, "a"), Delta(R, "b"), Finished(R, FinishReason.STOP, "ab")])
    sent = []

    async def send(msg):
        sent.append(msg)

    outcomes = run(EventStreamResponse(stream, SeedEncoder(), headers={"X-A": "1"}), never_disconnect(), send)
    assert [o for o, _ in outcomes] == [Outcome.SUCCESS]
    assert sent[0]["type"] == "http.response.start" and (b"x-a", b"1") in sent[0]["headers"]
    bodies = [m["body"] for m in sent[1:]]
    assert bodies == [b"a<::EOS::>", b"ab<::EOS::>", b"ab<::EOS::>", b""]
    assert sent[-1]["more_body"] is False


def test_disconnect_while_queued_is_before_streaming_and_cancels():
    events = [Queued(R, 1)] * 20 + [Delta(R, "x"), Finished(R, FinishReason.STOP, "x")]
    stream = FakeStream(events, delay=0.01)

    async def send(msg):
        pass

    outcomes = run(EventStreamResponse(stream, SeedEncoder()), disconnect_after(0.05), send)
    assert stream.cancelled >= 1
    assert [o for o, _ in outcomes] == [Outcome.CLIENT_DISCONNECTED_BEFORE_STREAMING]
    assert outcomes[0][1].finish_reason is FinishReason.CANCELLED  # waited for the engine's retire


def test_disconnect_mid_stream_is_while_streaming():
    events = [Delta(R, "w")] * 100 + [Finished(R, FinishReason.STOP, "w" * 100)]
    stream = FakeStream(events, delay=0.005)

    async def send(msg):
        pass

    outcomes = run(EventStreamResponse(stream, SeedEncoder()), disconnect_after(0.1), send)
    assert [o for o, _ in outcomes] == [Outcome.CLIENT_DISCONNECTED_WHILE_STREAMING]
    assert 0 < len(outcomes[0][1].text) < 100


def test_send_failure_counts_as_disconnect():
    events = [Delta(R, "w")] * 50 + [Finished(R, FinishReason.STOP, "w" * 50)]
    stream = FakeStream(events, delay=0.001)
    calls = 0

    async def send(msg):
        nonlocal calls
        calls += 1
        if calls > 3:
            raise OSError("client gone")

    outcomes = run(EventStreamResponse(stream, SeedEncoder()), never_disconnect(), send)
    assert stream.cancelled >= 1
    assert [o for o, _ in outcomes] == [Outcome.CLIENT_DISCONNECTED_WHILE_STREAMING]


def test_engine_error_is_unknown_error():
    stream = FakeStream([Delta(R, "a"), Finished(R, FinishReason.ERROR, "a", error="boom")])

    async def send(msg):
        pass

    outcomes = run(EventStreamResponse(stream, SeedEncoder()), never_disconnect(), send)
    assert [o for o, _ in outcomes] == [Outcome.UNKNOWN_ERROR_OCCURRED]


def test_dropped_response_cancels_its_stream():
    import gc

    stream = FakeStream([])
    abandoned = []
    resp = EventStreamResponse(stream, SeedEncoder(), on_abandon=lambda: abandoned.append(1))
    del resp
    gc.collect()
    assert stream.cancelled == 1 and abandoned == [1]
