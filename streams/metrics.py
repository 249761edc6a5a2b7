"""Prometheus metrics of one worker (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class WorkerMetrics:
    """Counters, histograms and gauges the batch loop updates once per batch."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("supernova_events_in", "Messages consumed", registry=r)
        self.scores_out = Counter("supernova_scores_out", "Score messages produced", registry=r)
        self.dlq = Counter("supernova_dlq", "Events sent to the dead-letter topic", ["reason"], registry=r)
        self.duplicates = Counter("supernova_duplicates", "Events ignored as duplicates", registry=r)
        self.late = Counter("supernova_late_scored", "Late events scored (older than newest)", registry=r)
        self.quarantined = Counter(
            "supernova_records_quarantined", "Stored records that failed to decode", registry=r
        )
        self.restored = Counter(
            "supernova_records_restored", "Records restored from the changelog", registry=r
        )
        self.batch_size = Histogram(
            "supernova_batch_size",
            "Messages per batch",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.latency = Histogram(
            "supernova_end_to_end_seconds",
            "Score sent minus event produced (Kafka timestamp)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.lag = Gauge("supernova_consumer_lag", "Messages behind the log end", ["partition"], registry=r)

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return generate_latest(self.registry)  # type: ignore[no-any-return]
