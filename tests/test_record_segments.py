"""Records stored as a head and segments: what checkpoints write, and reading it back.

A checkpoint writes a record's head and only the segments that may have received
items (``RecordCodec.encode_parts``). Here the sample's cards go through many
checkpoints; their records must read back equal to the records in memory from
RocksDB, from a restore of the changelog (compacted or not), and from a changelog
cut anywhere in a checkpoint (a crash while it was being written). On the real
broker, the changelog a worker writes over the sample is measured per event.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import pytest
from streaming import ADAPTER, SAMPLE, SPEC, WorkerProcess, read_topic, train_small_model

from entities.engine import Engine
from entities.events import Event
from entities.record import SEGMENT_PREFIX, RecordCodec
from entities.spec import load_spec
from streams.cache import RecordCache
from streams.produce import file_events, produce
from streams.replay import replay
from streams.store import PartitionStore

N_EVENTS = 8_000
CHECKPOINT_EVENTS = 400  # ~0.4 events per card between checkpoints: each card touched about once


@pytest.fixture(scope="module")
def sample_events() -> list[Event]:
    _, items = file_events(SPEC, SAMPLE, N_EVENTS, adapter=ADAPTER)
    return [e for e in items if isinstance(e, Event)]


def _checkpoints(
    events: list[Event],
) -> tuple[RecordCodec, list[list[tuple[bytes, bytes | None]]], dict[str, bytes], dict[str, bytes]]:
    """The events in checkpoints: each checkpoint's key/values, and every record's whole
    encoding before and after the last checkpoint."""
    engine = Engine(load_spec(SPEC))
    codec = engine.codec
    written: list[list[tuple[bytes, bytes | None]]] = []
    before: dict[str, bytes] = {}
    for start in range(0, len(events), CHECKPOINT_EVENTS):
        if start + CHECKPOINT_EVENTS >= len(events):
            before = {eid: codec.encode(rec) for eid, rec in engine.records.items()}
        changed = engine.process(events[start : start + CHECKPOINT_EVENTS]).changed
        written.append([kv for eid in sorted(changed) for kv in codec.encode_parts(engine.records[eid])])
    most = max(len(s.segments) for r in engine.records.values() for s in r.stored.attrs)  # type: ignore[union-attr]
    assert most > 3  # records span several segments
    return codec, written, before, {eid: codec.encode(rec) for eid, rec in engine.records.items()}


def _store(path: Path, messages: Iterable[tuple[bytes, bytes | None]]) -> PartitionStore:
    """A store holding these key/values in order, as ``recovery.restore`` copies them."""
    store = PartitionStore(path)
    store.commit(list(messages), None, None)
    return store


def _read_all(store: PartitionStore, codec: RecordCodec, entity_ids: list[str]) -> dict[str, bytes]:
    """Every record read back through the cache's load, encoded whole for comparison."""
    cache = RecordCache(load_spec(SPEC), codec, store.get_many, 1 << 40, get_segments=store.get_raw)
    cache.load(entity_ids)
    return {eid: codec.encode(rec) for eid, rec in cache.records.items()}


def test_records_written_in_segments_over_checkpoints_read_back_equal(
    sample_events: list[Event], tmp_path: Path
) -> None:
    codec, written, _, want = _checkpoints(sample_events)
    ids = list(want)
    log = [kv for checkpoint in written for kv in checkpoint]

    # RocksDB as the checkpoints wrote it: no segment left that no head lists.
    store = _store(tmp_path / "rocksdb", log)
    assert _read_all(store, codec, ids) == want
    listed = {k for eid in ids for k in codec.segment_keys(store.get_many([eid])[0])}  # type: ignore[arg-type]
    stored = [cast(bytes, k) for k in store.db.keys(from_key=SEGMENT_PREFIX)]
    assert {k for k in stored if k.startswith(SEGMENT_PREFIX)} == listed

    # A restore of the changelog as written, and as compaction leaves it (the last
    # value of each key; a deleted key gone, or its null kept).
    assert _read_all(_store(tmp_path / "log", log), codec, ids) == want
    last = dict(log)
    compacted = [(k, v) for k, v in last.items() if v is not None]
    assert _read_all(_store(tmp_path / "compacted", compacted), codec, ids) == want
    assert _read_all(_store(tmp_path / "nulls", list(last.items())), codec, ids) == want


def test_a_changelog_cut_inside_a_checkpoint_reads_back_each_record_before_or_after_it(
    sample_events: list[Event], tmp_path: Path
) -> None:
    codec, written, before, after = _checkpoints(sample_events)
    head = [kv for checkpoint in written[:-1] for kv in checkpoint]
    rng = random.Random(19)
    cuts = sorted(rng.sample(range(len(written[-1])), 5))
    # A cut between a head and the deletes after it leaves segments no head lists.
    last = written[-1]
    cuts.append(
        next(i + 1 for i in range(len(last) - 1) if last[i][1] is not None and last[i + 1][1] is None)
    )
    orphaned = 0
    for n, cut in enumerate(cuts):
        store = _store(tmp_path / f"cut{n}", head + written[-1][:cut])
        got = _read_all(store, codec, list(after))  # every head finds its segments
        assert before.keys() <= got.keys() <= after.keys()  # a new card: there once its head is
        for eid, data in got.items():
            assert data in (before.get(eid), after[eid]), eid
        # What a restore does last: delete the segments no head lists, and nothing else.
        listed = {k for eid in after for k in codec.segment_keys(store.get_many([eid])[0] or b"")}
        stored = {cast(bytes, k) for k in store.db.keys(from_key=SEGMENT_PREFIX)}
        stored = {k for k in stored if k.startswith(SEGMENT_PREFIX)}
        assert sorted(store.sweep_segments(codec.listed_segments)) == sorted(stored - listed)
        orphaned += len(stored - listed)
        left = {cast(bytes, k) for k in store.db.keys(from_key=SEGMENT_PREFIX)}
        assert {k for k in left if k.startswith(SEGMENT_PREFIX)} == listed
        assert _read_all(store, codec, list(after)) == got
        store.close()
    assert orphaned  # that cut did leave some


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=d / "f.parquet", limit=5_000)
    return train_small_model(load_spec(SPEC), d / "f.parquet", d / "model", trees=10)


@pytest.mark.kafka
def test_the_changelog_a_worker_writes_is_a_fraction_of_whole_records(
    kafka_broker, model: Path, tmp_path: Path
) -> None:
    """Bytes of changelog values per event, against the whole records the same checkpoints held."""
    codec_events, items = file_events(SPEC, SAMPLE, 20_000, adapter=ADAPTER)
    events = [e for e in items if isinstance(e, Event)]
    worker = WorkerProcess(
        kafka_broker.bootstrap, model, tmp_path / "data", extra=["--commit-interval", "0.25"]
    )
    worker.start()
    try:
        asyncio.run(
            produce(
                kafka_broker.bootstrap,
                worker.topics["events"],
                codec_events,
                iter(events),
                rate=4_000,
                partitions=4,
            )
        )
        n_txn = sum(e.type == "transaction" for e in events)
        read_topic(kafka_broker.bootstrap, worker.topics["scores"], expect=n_txn, timeout=180)
    finally:
        worker.stop()
    changelog = read_topic(kafka_broker.bootstrap, worker.topics["changelog"], expect=10**9, timeout=5)
    codec = RecordCodec(load_spec(SPEC))
    state: dict[int, dict[bytes, bytes]] = {}
    written = whole = 0
    for m in changelog:
        kv = state.setdefault(m.partition, {})
        if m.value is None:
            kv.pop(m.key, None)
            continue
        kv[m.key] = m.value
        written += len(m.value)
        if not m.key.startswith(b"\x00"):  # a head: the record as a whole, as before segments
            record = codec.decode(m.value, [kv.get(k) for k in codec.segment_keys(m.value)])
            whole += len(codec.encode(record))
    per_event, whole_per_event = written / len(events), whole / len(events)
    print(f"changelog values: {per_event:.0f} bytes/event; whole records: {whole_per_event:.0f} bytes/event")
    assert per_event < 0.7 * whole_per_event, (per_event, whole_per_event)
    assert per_event < 1_000


def test_a_whole_record_of_version_2_is_read_and_rewritten_split_at_its_next_checkpoint(
    sample_events: list[Event], tmp_path: Path
) -> None:
    entity = sample_events[0].entity_id
    mine = [e for e in sample_events if e.entity_id == entity]
    engine = Engine(load_spec(SPEC))
    engine.process(mine[:-1])
    codec = engine.codec
    store = _store(tmp_path / "v2", [(entity.encode(), codec.encode(engine.records[entity]))])
    assert store.get_many([entity])[0][1] == 2  # type: ignore[index]  # a whole record, version 2

    cache = RecordCache(load_spec(SPEC), codec, store.get_many, 1 << 40, get_segments=store.get_raw)
    cache.load([entity])
    live = Engine(load_spec(SPEC))
    live.records = cache.records
    live.process(mine[-1:])
    store.commit(codec.encode_parts(cache.records[entity]), None, None)
    engine.process(mine[-1:])
    assert store.get_many([entity])[0][1] == 3  # type: ignore[index]  # now a head
    assert _read_all(store, codec, [entity]) == {entity: codec.encode(engine.records[entity])}
