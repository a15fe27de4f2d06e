from __future__ import annotations

import threading

import pytest

from chatstream_lab.admission import AdmissionGate
from chatstream_lab.errors import ConfigError, QueueFull
from chatstream_lab.types import RequestId


def rid(i: int) -> RequestId:
    return RequestId(f"r{i}")


def test_capacity_is_limit_plus_queue_even_in_a_burst() -> None:
    gate = AdmissionGate(2, 3)
    assert [gate.enqueue(rid(i)) for i in range(5)] == [1, 2, 3, 4, 5]
    with pytest.raises(QueueFull):
        gate.enqueue(rid(99))
    assert gate.admit() == [rid(0), rid(1)]
    assert gate.snapshot().running == 2 and gate.snapshot().waiting == 3
    with pytest.raises(QueueFull):
        gate.enqueue(rid(100))
    assert gate.snapshot().rejected_total == 2


def test_the_refusal_message_adds_up_to_the_limits_it_names() -> None:
    """Issue 20's "1 running, 6 waiting (max_queue_size=5)": a slot was free, and the request
    bound for it (not yet admitted by the engine) counted as waiting. The message splits it out."""
    gate = AdmissionGate(2, 5)
    gate.enqueue(rid(0))
    assert gate.admit() == [rid(0)]
    for i in range(1, 7):
        gate.enqueue(rid(i))
    with pytest.raises(QueueFull) as info:
        gate.enqueue(rid(99))
    exc = info.value
    assert (exc.running, exc.waiting, exc.starting, exc.queued) == (1, 6, 1, 5)
    assert "2 of 2 slots busy (1 running, 1 starting) and 5 of 5 queue places taken" in str(exc)
    assert "num_of_concurrent_executions=2, max_queue_size=5" in str(exc)
    assert gate.admit() == [rid(1)]
    with pytest.raises(QueueFull) as info:
        gate.enqueue(rid(100))
    assert "2 of 2 slots busy and 5 of 5 queue places taken" in str(info.value)


def test_fifo_release_and_idempotence() -> None:
    gate = AdmissionGate(1, 2)
    for i in range(3):
        gate.enqueue(rid(i))
    assert gate.admit() == [rid(0)]
    assert gate.position(rid(2)) == 2
    assert gate.release(rid(0)) and not gate.release(rid(0))
    assert gate.admit() == [rid(1)]


def test_withdraw_only_waiting() -> None:
    gate = AdmissionGate(1, 2)
    gate.enqueue(rid(0))
    gate.enqueue(rid(1))
    gate.admit()
    assert not gate.withdraw(rid(0))  # running: must be cancelled through the engine
    assert gate.withdraw(rid(1)) and not gate.withdraw(rid(1))
    assert gate.waiting_ids() == []


def test_zero_queue_means_only_the_slots() -> None:
    gate = AdmissionGate(2, 0)
    gate.enqueue(rid(0))
    gate.enqueue(rid(1))
    with pytest.raises(QueueFull):
        gate.enqueue(rid(2))


@pytest.mark.parametrize(("n", "q"), [(0, 1), (1, -1), (True, 1), (1.5, 2)])
def test_bad_limits(n, q) -> None:
    with pytest.raises(ConfigError):
        AdmissionGate(n, q)


def test_thread_safety_under_contention() -> None:
    gate = AdmissionGate(4, 10)
    accepted: list[RequestId] = []
    lock = threading.Lock()

    def worker(base: int) -> None:
        for i in range(50):
            try:
                gate.enqueue(rid(base + i))
                with lock:
                    accepted.append(rid(base + i))
            except QueueFull:
                pass

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 14
    assert gate.snapshot().rejected_total == 200 - 14
