"""A checkpoint persists each record as it was at the boundary, whatever the loop did since.

The worker notes the changed records at the boundary and encodes them over the next
polls; a record a poll is about to change is copied first. Here the worker's own
checkpoint steps run on real Sparkov events without a broker: the events after the
boundary go through ``streams.apply.apply``, the per-partition step of
``BatchWorker.process`` (copy before change, offset stamping, ``Engine.process``),
and every encoded record must equal that of an engine fed only the events before
the boundary.
"""

from __future__ import annotations

import math
import time
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

from aiokafka import TopicPartition

from entities.engine import Engine
from entities.events import Event
from entities.spec import load_spec
from streams.apply import apply
from streams.checkpoint import Checkpoint
from streams.produce import file_events
from streams.state import Partition
from streams.store import PartitionStore
from streams.telemetry import WorkerMetrics
from streams.worker import BatchWorker, WorkerConfig

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "fraud" / "spec.py"
ADAPTER = REPO / "examples" / "fraud" / "sparkov.py"
SAMPLE = REPO / "examples" / "fraud" / "sample.csv.gz"


def _poll(
    part: Partition, events: list[Event], first_offset: int, encoding: Checkpoint | None = None
) -> None:
    """What ``BatchWorker.process`` does to one partition's records for one poll."""
    origin = {id(ev): SimpleNamespace(offset=first_offset + i) for i, ev in enumerate(events)}
    apply(part, events, origin, encoding, WorkerMetrics())
    part.position = first_offset + len(events)


def heads(checkpoint: Checkpoint) -> list[bytes]:
    """Keys of the record heads a checkpoint has encoded so far (segment keys are NUL-led)."""
    return [key for key, _ in checkpoint.spans[0].changed if not key.startswith(b"\x00")]


def test_checkpoint_encodes_the_records_as_at_the_boundary(tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    _, items = file_events(SPEC, SAMPLE, 6_000, adapter=ADAPTER)
    events = [e for e in islice(items, 6_000) if isinstance(e, Event)]
    before, after = events[:4_000], events[4_000:]
    worker = BatchWorker(WorkerConfig(data_dir=tmp_path), spec, scorers={})
    part = Partition(TopicPartition("events", 0), PartitionStore(tmp_path / "p0"), Engine(spec))
    worker.parts[0] = part
    _poll(part, before, 0)

    checkpoint = worker.checkpoints.take()
    assert checkpoint is not None
    assert not checkpoint.encode(until=0.0)  # a deadline already past: one record, not none
    assert len(heads(checkpoint)) == 1
    for _ in range(49):  # some records are encoded before the loop goes on
        checkpoint.encode(until=0.0)
    assert len(heads(checkpoint)) == 50
    for start in range(0, len(after), 500):  # polls after the boundary
        _poll(part, after[start : start + 500], len(before) + start, checkpoint)
    checkpoint.encode()

    # An independent partition that stopped at the boundary.
    reference = Partition(TopicPartition("events", 0), PartitionStore(tmp_path / "ref"), Engine(spec))
    _poll(reference, before, 0)
    encode = reference.engine.codec.encode_parts  # heads and segments, as a first write
    want = {key: data for rec in reference.engine.records.values() for key, data in encode(rec)}
    got = dict(checkpoint.spans[0].changed)
    assert got.keys() == want.keys()
    changed_heads = {ev.entity_id.encode() for ev in after} & got.keys()
    assert len(changed_heads) > 100  # the loop changed many noted records
    stale = [key for key in got if got[key] != want[key]]
    assert not stale, f"{len(stale)} records encoded with state from after the boundary"
    assert checkpoint.spans[0].end == len(before)
    part.store.close()
    reference.store.close()


def test_over_the_cache_budget_a_checkpoint_is_encoded_at_once(tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    _, items = file_events(SPEC, SAMPLE, 2_000, adapter=ADAPTER)
    events = [e for e in islice(items, 2_000) if isinstance(e, Event)]
    worker = BatchWorker(WorkerConfig(data_dir=tmp_path, cache_mb=64), spec, scorers={})
    part = Partition(TopicPartition("events", 0), PartitionStore(tmp_path / "p0"), Engine(spec))
    worker.parts[0] = part
    _poll(part, events, 0)
    started = time.perf_counter()
    assert worker._encode_until(started) < started + 1  # within the budget: a share of the poll
    worker.cfg.cache_mb = part.cache.bytes / 2**20 / 2  # changed records at twice the budget
    assert worker._encode_until(started) == math.inf
    part.store.close()
