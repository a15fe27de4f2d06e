"""Prometheus text exposition of a :class:`StatsRecorder`'s snapshot.

Each exporter owns its own ``CollectorRegistry`` (never prometheus-client's global one), so two
servers in one kernel, or a server started twice, never collide on metric names.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .recorder import StatsRecorder, StatsSnapshot

__all__ = ["CONTENT_TYPE", "PrometheusExporter", "snapshot_metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


def snapshot_metrics(s: StatsSnapshot, prefix: str = "chatstream") -> list[Metric]:
    """The metric families for one snapshot (pure; used by the collector and by tests)."""
    info = GaugeMetricFamily(f"{prefix}_info", "Configuration of this server", labels=["config_id"])
    info.add_metric([s.config_id], 1.0)
    running = GaugeMetricFamily(f"{prefix}_running_requests", "Requests generating now", value=s.running)
    queued = GaugeMetricFamily(f"{prefix}_queued_requests", "Requests waiting for a slot", value=s.queued)
    outcomes = CounterMetricFamily(f"{prefix}_requests", "Requests by outcome", labels=["outcome"])
    for outcome, n in (("completed", s.completed), ("cancelled", s.cancelled), ("error", s.errors),
                       ("rejected", s.rejected)):
        outcomes.add_metric([outcome], float(n))
    tokens = CounterMetricFamily(f"{prefix}_completion_tokens", "Generated tokens of finished requests",
                                 value=float(s.completion_tokens_total))
    ttft = GaugeMetricFamily(f"{prefix}_ttft_seconds", "Time to first token (recent requests)",
                             labels=["quantile"])
    for q, v in (("0.5", s.ttft_p50), ("0.95", s.ttft_p95)):
        if v is not None:
            ttft.add_metric([q], v)
    tps = GaugeMetricFamily(f"{prefix}_request_tokens_per_second", "Decode speed per request",
                            labels=["quantile"])
    if s.tokens_per_s_p50 is not None:
        tps.add_metric(["0.5"], s.tokens_per_s_p50)
    throughput = GaugeMetricFamily(f"{prefix}_throughput_tokens_per_second",
                                   f"All requests together over the last {s.window_s:g} s",
                                   value=s.throughput_tokens_per_s)
    families: list[Metric] = [info, running, queued, outcomes, tokens, ttft, tps, throughput]
    if s.kv_cache is not None:
        kv = s.kv_cache
        families += [
            GaugeMetricFamily(f"{prefix}_session_kv_bytes", "KV kept for sessions across turns",
                              value=float(kv.bytes)),
            GaugeMetricFamily(f"{prefix}_session_kv_entries", "Sessions with kept KV", value=float(kv.entries)),
            CounterMetricFamily(f"{prefix}_session_kv_reused_tokens",
                                "Prompt tokens not prefilled thanks to kept session KV",
                                value=float(kv.reused_tokens)),
            CounterMetricFamily(f"{prefix}_session_kv_evictions", "Kept session KV entries evicted",
                                value=float(kv.evictions)),
        ]
    return families


class _SnapshotCollector(Collector):
    def __init__(self, recorder: StatsRecorder, prefix: str) -> None:
        self._recorder = recorder
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        yield from snapshot_metrics(self._recorder.snapshot(with_history=False), self._prefix)


class PrometheusExporter:
    """Renders ``recorder``'s numbers as Prometheus text, through a registry of its own.

    Example::

        exporter = PrometheusExporter(recorder)
        body = exporter.render()  # bytes, media type PrometheusExporter.content_type
    """

    content_type = CONTENT_TYPE

    def __init__(self, recorder: StatsRecorder, *, prefix: str = "chatstream") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(recorder, prefix))

    def render(self) -> bytes:
        return generate_latest(self.registry)
