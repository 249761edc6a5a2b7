"""BulkHistogram against prometheus_client's own Histogram fed the same values."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streams.telemetry import BulkHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)
# Bounds themselves are drawn often: a value equal to a bound is the edge case.
values = st.lists(st.one_of(st.sampled_from(BUCKETS), st.floats(0, 20, allow_nan=False)), max_size=40)


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#") and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@given(values, values)
def test_bulk_histogram_matches_prometheus_histogram(singles: list[float], batch: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("h", "doc", BUCKETS, ours)
    reference = Histogram("h", "doc", buckets=BUCKETS, registry=theirs)
    for v in singles:
        bulk.observe(v)
        reference.observe(v)
    bulk.observe_many(np.array(batch, dtype=np.float64))
    for v in batch:
        reference.observe(v)
    got, want = _samples(ours), _samples(theirs)
    assert got.keys() == want.keys()
    assert {k: v for k, v in got.items() if k != "h_sum"} == {k: v for k, v in want.items() if k != "h_sum"}
    assert abs(got["h_sum"] - want["h_sum"]) <= 1e-9 * max(1.0, abs(want["h_sum"]))
