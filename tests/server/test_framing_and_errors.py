import json

import pytest

from chatstream_lab.errors import (
    ConfigError,
    InvalidParameter,
    NothingToRegenerate,
    QueueFull,
    SessionBusy,
    TemplateError,
)
from chatstream_lab.server.errors import BadRequest, classify, error_response
from chatstream_lab.server.framing import (
    SEED_DELIMITER,
    SEED_ERROR_MARKER,
    Framing,
    SeedEncoder,
    SSEEncoder,
    parse_seed_records,
    sse_event,
)
from chatstream_lab.server.requests import generation_param_changes, parse_chat_stream, parse_json_object
from chatstream_lab.types import Delta, Finished, FinishReason, Queued, RequestId, Usage

R = RequestId("r1")


def test_seed_records_are_cumulative_and_end_with_the_final_text():
    enc = SeedEncoder()
    out = [enc.encode(e) for e in (Queued(R, 1), Delta(R, "Hel"), Delta(R, ""), Delta(R, "lo"),
                                   Finished(R, FinishReason.STOP, "Hello"))]
    assert out == [None, b"Hel<::EOS::>", None, b"Hello<::EOS::>", b"Hello<::EOS::>"]
    body = b"".join(o for o in out if o).decode()
    assert parse_seed_records(body)[-1] == "Hello"
    assert parse_seed_records("abc<::EOS::>ab") == ["abc"]  # an incomplete record is not shown
    failed = SeedEncoder().encode(Finished(R, FinishReason.ERROR, "", error="boom")).decode()
    assert failed.startswith(SEED_ERROR_MARKER) and failed.endswith("<::EOS::>")  # a visible error record
    assert "boom" not in failed and "error id" in failed  # the detail goes to the log, not the client


def test_sse_events_are_typed_json_frames():
    enc = SSEEncoder("mid")
    assert enc.encode(Queued(R, 3)) == b'event: queued\ndata: {"position":3}\n\n'
    assert enc.encode(Delta(R, "a\nb")) == b'event: delta\ndata: {"text":"a\\nb"}\n\n'
    done = enc.encode(Finished(R, FinishReason.LENGTH, "ab", Usage(1, 2)))
    assert done.startswith(b"event: done\ndata: ")
    data = json.loads(done.split(b"data: ", 1)[1])
    assert data["finish_reason"] == "length" and data["message_id"] == "mid"
    assert data["usage"]["completion_tokens"] == 2 and data["text"] == "ab"
    err = enc.encode(Finished(R, FinishReason.ERROR, "", error="boom"))
    assert err.startswith(b"event: error\n") and b"error id" in err and b"boom" not in err
    assert sse_event("x", {"k": "ü"}) == 'event: x\ndata: {"k":"ü"}\n\n'.encode()


def test_framing_follows_accept_header():
    assert Framing.from_accept(None) is Framing.SEED
    assert Framing.from_accept("text/plain, */*") is Framing.SEED
    assert Framing.from_accept("text/event-stream") is Framing.SSE
    assert Framing.SSE.media_type == "text/event-stream"
    assert SEED_DELIMITER == "<::EOS::>"


@pytest.mark.parametrize("exc,status,kind", [
    (QueueFull(running=2, waiting=5, limit=2, max_queue_size=5), 429, "queue_full"),
    (SessionBusy("x"), 409, "session_busy"),
    (NothingToRegenerate("x"), 409, "nothing_to_regenerate"),
    (InvalidParameter("bad", name="top_p"), 400, "invalid_parameter"),
    (ConfigError("bad", name="x"), 400, "invalid_request"),
    (TemplateError("bad"), 422, "template_error"),
    (BadRequest("big", param="user_input", status=413), 413, "invalid_request"),
    (RuntimeError("secret detail"), 500, "internal_error"),
])
def test_one_exception_mapping(exc, status, kind):
    info = classify(exc)
    assert (info.status, info.type) == (status, kind)
    resp = error_response(exc)
    body = json.loads(resp.body)
    extra = {"error_id"} if status == 500 else set()  # OpenAI's shape, + the log's id for a 500
    assert resp.status_code == status and set(body["error"]) == {"message", "type", "param", "code", *extra}
    assert body["error"]["code"] == kind
    if status == 429:
        assert resp.headers["retry-after"] == "1"
    if status == 500:
        assert "secret" not in body["error"]["message"]
        assert body["error"]["error_id"] in body["error"]["message"]
    if isinstance(exc, InvalidParameter):
        assert body["error"]["param"] == "top_p"


@pytest.mark.parametrize("raw,param", [
    (b"not json", None), (b"", None), (b"[1, 2]", None), ({"user_input": None}, "user_input"),
    ({}, "user_input"), ({"user_input": 5}, "user_input"), ({"user_input": ["a"]}, "user_input"),
    ({"user_input": "   "}, "user_input"), ({"user_input": "x" * 11}, "user_input"),
    ({"user_input": "ok", "regenerate": "True"}, "regenerate"),
])
def test_chat_stream_body_validation(raw, param):
    with pytest.raises(BadRequest) as info:
        parse_chat_stream(parse_json_object(raw), max_input_chars=10)
    assert info.value.param == param


def test_chat_stream_body_accepts_seed_shapes():
    assert parse_chat_stream({"user_input": "hi", "regenerate": False}, max_input_chars=10).user_input == "hi"
    req = parse_chat_stream({"user_input": None, "regenerate": True}, max_input_chars=10)
    assert req.regenerate and req.user_input is None


def test_generation_param_changes_accepts_seed_aliases_and_rejects_unknown():
    assert generation_param_changes({"temperature": 0.5, "top_k_value": 3, "top_p_value": None}) == \
        {"temperature": 0.5, "top_k": 3}
    with pytest.raises(InvalidParameter):
        generation_param_changes({"warmth": 1})
