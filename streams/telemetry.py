"""Prometheus metrics of one worker (served at GET /metrics)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric


class BulkHistogram:
    """A Prometheus histogram fed a whole batch at once (numpy), not one call per event."""

    def __init__(self, name: str, doc: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.doc = name, doc
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._bounds = [float(b) for b in buckets]
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self.total = 0.0
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Count every value (a value equal to a bound falls in that bound's bucket)."""
        if len(values):
            idx = np.searchsorted(self.bounds, values, side="left")
            self.counts += np.bincount(idx, minlength=len(self.counts))
            self.total += float(values.sum())

    def observe(self, value: float) -> None:
        """Count one value (bisect: a one-element numpy call costs far more than the count)."""
        self.counts[bisect_left(self._bounds, value)] += 1
        self.total += value

    def collect(self) -> Iterator[Metric]:
        """Prometheus exposition: cumulative buckets, count and sum."""
        cumulative = np.cumsum(self.counts)
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        buckets.append(("+Inf", int(cumulative[-1])))
        yield HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.total)


class WorkerMetrics:
    """Counters, histograms and gauges the batch loop updates once per batch."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter("supernova_events_in", "Messages consumed", registry=r)
        self.scores_out = Counter("supernova_scores_out", "Score messages produced", registry=r)
        self.dlq = Counter("supernova_dlq", "Events sent to the dead-letter topic", ["reason"], registry=r)
        self.duplicates = Counter("supernova_duplicates", "Events ignored as duplicates", registry=r)
        self.replayed = Counter(
            "supernova_replayed_skipped",
            "Events skipped after a restart: their record already held them",
            registry=r,
        )
        self.late = Counter("supernova_late_scored", "Late events scored (older than newest)", registry=r)
        self.quarantined = Counter(
            "supernova_records_quarantined", "Stored records that failed to decode", registry=r
        )
        self.misrouted = Counter(
            "supernova_events_misrouted",
            "Events that arrived on another partition than their key's murmur2 partition",
            registry=r,
        )
        self.restored = Counter(
            "supernova_records_restored", "Records restored from the changelog", registry=r
        )
        self.batch_size = BulkHistogram(
            "supernova_batch_size",
            "Messages per batch",
            (1, 10, 100, 500, 1000, 2000, 5000, 10000),
            r,
        )
        self.latency = BulkHistogram(
            "supernova_end_to_end_seconds",
            "Score sent minus event produced (Kafka timestamp)",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            r,
        )
        self.checkpoint_seconds = BulkHistogram(
            "supernova_checkpoint_seconds",
            "Time to persist a checkpoint (changelog + RocksDB + offsets)",
            (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            r,
        )
        self.model_reloads = Counter("supernova_model_reloads", "Hot model switches", registry=r)
        self.lag = Gauge("supernova_consumer_lag", "Messages behind the log end", ["partition"], registry=r)
        self.cache_bytes = Gauge("supernova_cache_bytes", "Records in memory, estimated bytes", registry=r)
        self.cache_records = Gauge("supernova_cache_records", "Records in memory", registry=r)
        self.records_loaded = Counter(
            "supernova_records_loaded", "Records read from RocksDB into memory", registry=r
        )
        self.records_evicted = Counter(
            "supernova_records_evicted", "Records dropped from memory (--cache-mb)", registry=r
        )

    def render(self) -> bytes:
        """Prometheus text exposition."""
        return generate_latest(self.registry)  # type: ignore[no-any-return]
