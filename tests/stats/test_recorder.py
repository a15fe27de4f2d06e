import threading

from chatstream_lab.stats import PrometheusExporter, StatsRecorder
from chatstream_lab.types import FinishReason, RequestId, Usage


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lifecycle_counts_and_percentiles():
    clock = FakeClock()
    rec = StatsRecorder("cfg1", window_s=10.0, clock=clock)
    a, b, c = RequestId("a"), RequestId("b"), RequestId("c")
    rec.on_queued(a)
    rec.on_queued(b)
    rec.on_queued(c)
    rec.on_rejected()
    s = rec.snapshot()
    assert (s.running, s.queued, s.rejected) == (0, 3, 1)
    rec.on_admitted(a)
    rec.on_admitted(b)
    assert (rec.snapshot().running, rec.snapshot().queued) == (2, 1)
    rec.on_first_token(a)
    clock.t += 2.0
    rec.on_finished(a, FinishReason.STOP, Usage(5, 20, ttft_s=0.2, tokens_per_s=10.0))
    rec.on_finished(b, FinishReason.ERROR, Usage(5, 0))
    rec.on_finished(c, FinishReason.CANCELLED, Usage(5, 0))  # withdrawn while queued
    s = rec.snapshot()
    assert (s.running, s.queued, s.completed, s.errors, s.cancelled) == (0, 0, 1, 1, 1)
    assert s.ttft_p50 == 0.2 and s.tokens_per_s_p50 == 10.0
    assert s.throughput_tokens_per_s == 20 / 10.0
    assert s.completion_tokens_total == 20
    assert s.config_id == "cfg1"
    assert s.history[-1].running == 0 and max(p.running for p in s.history) == 2
    d = s.as_dict()
    assert d["config_id"] == "cfg1" and isinstance(d["history"], list)
    assert "history" not in s.as_dict(with_history=False)


def test_history_is_bounded_and_recording_is_thread_safe():
    rec = StatsRecorder(max_history=50, max_samples=10)

    def worker(k: int) -> None:
        for i in range(200):
            rid = RequestId(f"{k}-{i}")
            rec.on_queued(rid)
            rec.on_admitted(rid)
            rec.on_first_token(rid)
            rec.on_finished(rid, FinishReason.LENGTH, Usage(1, 2, ttft_s=0.01, tokens_per_s=5.0))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = rec.snapshot()
    assert s.completed == 800 and s.running == 0 and s.queued == 0
    assert len(s.history) == 50


def test_prometheus_uses_own_registry_and_renders_snapshot():
    r1, r2 = StatsRecorder("one"), StatsRecorder("two")
    r1.on_rejected()
    text1 = PrometheusExporter(r1).render().decode()
    text2 = PrometheusExporter(r2).render().decode()  # no "duplicated timeseries" error
    assert 'chatstream_info{config_id="one"} 1.0' in text1
    assert 'chatstream_requests_total{outcome="rejected"} 1.0' in text1
    assert 'chatstream_requests_total{outcome="rejected"} 0.0' in text2
    assert "chatstream_running_requests 0.0" in text2


def test_session_kv_figures_come_from_the_provider_into_json_and_prometheus():
    from chatstream_lab.stats import KVCacheStats

    figures = KVCacheStats(entries=2, bytes=4096, budget_bytes=1 << 20, hits=3, reused_tokens=700,
                           prefilled_tokens=90, stored=4, evictions=1)
    rec = StatsRecorder("cfg", kv_cache=lambda: figures)
    d = rec.snapshot().as_dict()
    assert d["kv_cache"]["reused_tokens"] == 700 and d["kv_cache"]["bytes"] == 4096
    text = PrometheusExporter(rec).render().decode()
    assert "chatstream_session_kv_bytes 4096.0" in text
    assert "chatstream_session_kv_reused_tokens_total 700.0" in text
    assert StatsRecorder("cfg").snapshot().as_dict()["kv_cache"] is None
