"""truncate_messages drops whole oldest turns and keeps the system message and the last user turn."""

from __future__ import annotations

import pytest

from chatstream_lab.errors import ConfigError
from chatstream_lab.prompts import truncate_messages


def _count(msgs):
    return sum(len(m["content"]) for m in msgs)


SYSTEM = {"role": "system", "content": "S" * 10}
HISTORY = [SYSTEM]
for i in range(5):
    HISTORY += [{"role": "user", "content": f"u{i}" * 5}, {"role": "assistant", "content": f"a{i}" * 5}]
HISTORY.append({"role": "user", "content": "last" * 5})


def test_fits_unchanged():
    assert truncate_messages(HISTORY, _count, 10_000) == HISTORY


def test_drops_oldest_whole_turns():
    out = truncate_messages(HISTORY, _count, 70)
    assert out[0] == SYSTEM
    assert out[-1] == HISTORY[-1]
    assert _count(out) <= 70
    assert out[1]["role"] == "user"  # never an answer without its question
    assert out == [SYSTEM] + HISTORY[len(HISTORY) - (len(out) - 1):]
    # the fewest turns dropped: one more turn would not fit
    assert _count([SYSTEM] + HISTORY[len(HISTORY) - (len(out) + 1):]) > 70


def test_keeps_system_and_last_user_even_when_tight():
    out = truncate_messages(HISTORY, _count, 30)
    assert out == [SYSTEM, HISTORY[-1]]


def test_raises_when_even_minimum_does_not_fit():
    with pytest.raises(ConfigError, match="max_tokens"):
        truncate_messages(HISTORY, _count, 29)


def test_last_user_turn_with_open_assistant_prefill_is_kept():
    msgs = [{"role": "user", "content": "old" * 10}, {"role": "assistant", "content": "x" * 10},
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "pre"}]
    assert truncate_messages(msgs, _count, 5) == msgs[2:]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_max_tokens_validated(bad):
    with pytest.raises(ConfigError):
        truncate_messages(HISTORY, _count, bad)


def test_input_not_mutated():
    msgs = list(HISTORY)
    truncate_messages(msgs, _count, 70)
    assert msgs == HISTORY
