import pickle
import threading

import pytest

from chatstream_lab.config import SamplingParams
from chatstream_lab.errors import ConfigError, InvalidParameter, NothingToRegenerate, SessionBusy, SessionError
from chatstream_lab.prompts import ChatPrompt
from chatstream_lab.sessions import SessionHandle, SessionStore
from chatstream_lab.types import Finished, FinishReason, RequestId


def fin(text: str, reason: FinishReason = FinishReason.STOP) -> Finished:
    return Finished(RequestId("r"), reason, text)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make_store(**kw) -> SessionStore:
    return SessionStore(lambda: ChatPrompt(template="chatml"), SamplingParams(), **kw)


def history(store: SessionStore, sid: str) -> list[dict[str, str]]:
    return store.require(sid).prompt.to_messages()


def test_turn_commits_once_on_finish_and_working_copy_is_private():
    store = make_store()
    sid = store.create()
    turn = store.begin_turn(sid, "Hi")
    assert history(store, sid) == []  # nothing changes until the turn ends
    assert turn.prompt.create_prompt().endswith("<|im_start|>assistant\n")  # open turn in the copy
    assert store.finish_turn(turn, fin("Hello!"), message_id="m1") is True
    assert history(store, sid) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert store.finish_turn(turn, fin("again")) is False  # idempotent
    assert store.require(sid).message_ids == {"m1": "Hello!"}
    assert store.require(sid).prompt.get_responder_last_msg_id() == "m1"


def test_one_turn_in_flight_per_session():
    store = make_store()
    sid = store.create()
    turn = store.begin_turn(sid, "a")
    with pytest.raises(SessionBusy):
        store.begin_turn(sid, "b")
    other = store.create()
    store.finish_turn(store.begin_turn(other, "x"), fin("y"))  # other sessions are not blocked
    store.finish_turn(turn, None)
    store.finish_turn(store.begin_turn(sid, "b"), fin("c"))
    assert [m["content"] for m in history(store, sid)] == ["b", "c"]


@pytest.mark.parametrize("reason", [FinishReason.CANCELLED, FinishReason.ERROR])
def test_turn_without_text_leaves_history_unchanged(reason):
    store = make_store()
    sid = store.create()
    store.finish_turn(store.begin_turn(sid, "first"), fin("one"))
    before = history(store, sid)
    store.finish_turn(store.begin_turn(sid, "second"), fin("", reason))
    assert history(store, sid) == before
    assert "assistant\n<|im_end|>" not in store.require(sid).prompt.create_prompt()  # no empty open turn
    store.finish_turn(store.begin_turn(sid, "third"), None)  # no result at all
    assert history(store, sid) == before


def test_cancelled_turn_with_text_keeps_partial_reply():
    store = make_store()
    sid = store.create()
    store.finish_turn(store.begin_turn(sid, "tell me"), fin("Once upon", FinishReason.CANCELLED))
    assert history(store, sid)[-1] == {"role": "assistant", "content": "Once upon"}


def test_regenerate_replaces_last_reply_and_refuses_empty_history():
    store = make_store()
    sid = store.create()
    with pytest.raises(NothingToRegenerate):
        store.begin_turn(sid, None, regenerate=True)
    assert not store.require(sid).busy  # a refused turn does not hold the session
    store.finish_turn(store.begin_turn(sid, "q"), fin("a1"))
    turn = store.begin_turn(sid, None, regenerate=True)
    assert turn.prompt.create_prompt().endswith("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")
    store.finish_turn(turn, fin("", FinishReason.CANCELLED))  # cancelled regenerate keeps the old reply
    assert history(store, sid)[-1]["content"] == "a1"
    store.finish_turn(store.begin_turn(sid, None, regenerate=True), fin("a2"))
    assert [m["content"] for m in history(store, sid)] == ["q", "a2"]


def test_clear_during_turn_discards_its_commit():
    store = make_store()
    sid = store.create()
    turn = store.begin_turn(sid, "q")
    store.clear(sid)
    assert store.finish_turn(turn, fin("late")) is False
    assert history(store, sid) == []
    assert not store.require(sid).busy


def test_non_string_input_is_refused_before_anything_changes():
    store = make_store()
    sid = store.create()
    with pytest.raises(ConfigError):
        store.begin_turn(sid, 42)  # type: ignore[arg-type]
    assert history(store, sid) == [] and not store.require(sid).busy


def test_ttl_expiry_and_lru_cap():
    clock = Clock()
    store = make_store(ttl_s=10, max_sessions=2, clock=clock)
    a = store.create()
    clock.t = 5
    b = store.create()
    busy_turn = store.begin_turn(b, "x")
    clock.t = 6
    c = store.create()  # cap 2: evicts least recently used idle session (a), never the busy one
    assert a not in store and b in store and c in store
    clock.t = 100
    assert store.get(c) is None  # expired
    assert store.get(b) is not None  # busy sessions do not expire
    store.finish_turn(busy_turn, None)
    sid, created = store.get_or_create("not-a-session")
    assert created and sid in store
    assert store.get_or_create(sid) == (sid, False)


def test_history_is_trimmed_to_max_turns():
    store = make_store(max_history_turns=2)
    sid = store.create()
    for i in range(4):
        store.finish_turn(store.begin_turn(sid, f"u{i}"), fin(f"a{i}"))
    assert [m["content"] for m in history(store, sid)] == ["u2", "a2", "u3", "a3"]


def test_params_are_validated_and_session_scoped():
    store = make_store()
    a, b = store.create(), store.create()
    assert store.set_params(a, temperature=0.0, top_k=5).temperature == 0.0
    assert store.params(b).temperature == SamplingParams().temperature
    with pytest.raises(InvalidParameter) as info:
        store.set_params(a, top_p=2.0)
    assert info.value.name == "top_p"
    assert store.params(a).top_k == 5
    with pytest.raises(SessionError):
        store.params("nope")


def test_session_view_is_the_seed_dict():
    store = make_store()
    sid = store.create()
    session = SessionHandle(store, sid).get_session()
    store.finish_turn(store.begin_turn(sid, "hi"), fin("yo"))
    prompt = session.get("chat_prompt")
    assert "yo" in prompt.create_prompt()
    session["user_name"] = "ada"
    assert set(session) == {"chat_prompt", "generation_params", "user_name"}
    assert session["generation_params"]["temperature"] == SamplingParams().temperature
    session.pop("chat_prompt")  # seed's clear_context
    assert history(store, sid) == []


def test_concurrent_begin_turn_admits_exactly_one():
    store = make_store()
    sid = store.create()
    results: list[str] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        try:
            store.begin_turn(sid, "x")
            results.append("ok")
        except SessionBusy:
            results.append("busy")

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1


def test_session_prompt_pickles():
    store = make_store()
    sid = store.create()
    store.finish_turn(store.begin_turn(sid, "hi"), fin("yo"))
    clone = pickle.loads(pickle.dumps(store.require(sid).prompt))
    assert clone.to_messages() == history(store, sid)


def test_session_chars_are_bounded_oldest_turns_first_and_the_newest_turn_is_kept():
    store = make_store(max_session_chars=100)
    sid = store.create()
    for i in range(5):
        store.finish_turn(store.begin_turn(sid, f"q{i} " + "a" * 30), fin(f"r{i} " + "b" * 10), message_id=f"m{i}")
    kept = history(store, sid)
    assert kept[-2]["content"].startswith("q4") and not any(m["content"].startswith("q0") for m in kept)
    assert sum(len(m["content"]) for m in kept) <= 100
    usage = store.usage()
    assert usage["live"] == 1 and 0 < usage["chars"] <= 100 and usage["max_total_chars"] == 1000 * 100
    # one turn bigger than the budget is kept whole (the user just saw it), the rest goes
    store.finish_turn(store.begin_turn(sid, "x" * 300), fin("y"), message_id="big")
    assert [m["content"] for m in history(store, sid)] == ["x" * 300, "y"]
    assert store.require(sid).message_ids.keys() >= {"big"}
    store.clear(sid)
    assert store.usage()["chars"] == sum(len(t) for t in store.require(sid).message_ids.values()) <= 100


def test_lookups_never_create_sessions():
    store = make_store(max_sessions=2)
    sid = store.create()
    for _ in range(50):
        assert store.get("unknown") is None
    assert len(store) == 1 and sid in store


def test_a_stop_string_with_a_lone_surrogate_is_refused_on_every_path():
    with pytest.raises(InvalidParameter) as info:
        SamplingParams(stop=("ok", "\ud800"))
    assert info.value.name == "stop"
    store = make_store()
    sid = store.create()
    with pytest.raises(InvalidParameter):
        store.set_params(sid, stop=("\udfff",))
    assert store.params(sid).stop == ()


def test_on_forget_hears_every_conversation_that_goes():
    clock = Clock()
    gone: list[str] = []
    store = make_store(ttl_s=10, max_sessions=2, clock=clock, on_forget=gone.append)
    a, b = store.create(), store.create()
    store.clear(a)
    assert gone == [a]
    store.set_prompt(b, ChatPrompt(template="chatml"))
    assert gone == [a, b]
    c = store.create()  # over max_sessions: the least recently used (a) is evicted
    assert gone[-1] == a and a not in store
    store.delete(c)
    assert gone[-1] == c
    clock.t += 11
    assert store.get(b) is None and gone[-1] == b  # expired


def test_an_on_forget_that_raises_does_not_break_the_store():
    def broken(sid: str) -> None:
        raise RuntimeError("hook bug")

    store = make_store(on_forget=broken)
    sid = store.create()
    store.clear(sid)
    assert history(store, sid) == []
