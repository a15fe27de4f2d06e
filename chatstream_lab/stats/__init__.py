"""Stats stage: lifecycle events -> immutable snapshots -> JSON, Prometheus text, plots."""

from .metrics import percentile, rate, window_rate
from .prometheus import PrometheusExporter
from .recorder import KVCacheStats, ModelChange, StatsPoint, StatsRecorder, StatsSnapshot

__all__ = ["KVCacheStats", "ModelChange", "PrometheusExporter", "StatsPoint", "StatsRecorder", "StatsSnapshot",
           "percentile", "rate", "window_rate"]
