"""The byte-bounded record cache (``streams/cache.py``) against a dict standing for the store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from streaming import ADAPTER, SPEC
from test_history import sample_lines, write_csv

from entities.engine import Engine
from entities.events import EventCodec
from entities.record import RecordError, SupernovaRecord
from entities.spec import Spec, load_spec_module
from streams.cache import RECORD_BYTES, TEXT_ID_BYTES, RecordCache, item_bytes
from streams.replay import replay

FRAUD_SPEC = Path(__file__).resolve().parents[1] / "examples" / "fraud" / "spec.py"
ATTRS = {"merchant": "m", "category": "c", "amt": 1.5, "merch_lat": 34.0, "merch_long": -81.0}


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec_module(FRAUD_SPEC).spec  # type: ignore[no-any-return]


def _setup(spec: Spec, budget: int) -> tuple[RecordCache, Engine, dict[str, bytes], EventCodec]:
    store: dict[str, bytes] = {}
    engine = Engine(spec)
    cache = RecordCache(spec, engine.codec, lambda ids: [store.get(i) for i in ids], budget)
    engine.records = cache.records
    return cache, engine, store, EventCodec(spec)


def _feed(
    cache: RecordCache,
    engine: Engine,
    codec: EventCodec,
    entity: str,
    n: int,
    start: int = 0,
    hex_ids: bool = False,
) -> None:
    events = [
        codec.build(
            "transaction",
            f"{i:032x}" if hex_ids else f"{entity}-{i}",
            entity,
            1_592_741_642_000 + i * 1000,
            ATTRS,
        )
        for i in range(start, start + n)
    ]
    cache.load([entity])
    result = engine.process(events)
    cache.note_changed(result.changed)


def test_sizes_follow_items_and_the_total_is_their_sum(spec: Spec) -> None:
    cache, engine, _, codec = _setup(spec, 10**9)
    _feed(cache, engine, codec, "a", 3, hex_ids=True)
    _feed(cache, engine, codec, "b", 5)
    per_item = item_bytes(spec)["transactions"]
    text_item = per_item + TEXT_ID_BYTES  # ids that are not 32 hex digits are kept as strings
    assert cache.sizes == {"a": RECORD_BYTES + 3 * per_item, "b": RECORD_BYTES + 5 * text_item}
    _feed(cache, engine, codec, "a", 2, start=3, hex_ids=True)
    assert cache.sizes["a"] == RECORD_BYTES + 5 * per_item
    assert cache.bytes == sum(cache.sizes.values())


def test_least_recently_used_leave_first_and_kept_ones_stay(spec: Spec) -> None:
    per_record = RECORD_BYTES + 2 * (item_bytes(spec)["transactions"] + TEXT_ID_BYTES)
    cache, engine, store, codec = _setup(spec, 3 * per_record)
    for entity in "abcde":
        _feed(cache, engine, codec, entity, 2)
    cache.load(["a"])  # a becomes the most recent: b and c are the oldest now
    written: list[str] = []

    def write(records: list[tuple[str, SupernovaRecord]]) -> None:
        for eid, rec in records:
            store[eid] = engine.codec.encode(rec)
            written.append(eid)

    assert cache.evict(keep=lambda e: e == "b", write=write) == ["c", "d"]
    assert list(cache.records) == ["b", "e", "a"] and written == ["c", "d"]
    assert cache.bytes == 3 * per_record
    # An evicted record comes back from the store as it was, and goes on growing.
    _feed(cache, engine, codec, "c", 1, start=2)
    assert cache.loads == 1 and len(cache.records["c"].items["transactions"]) == 3


def test_a_corrupt_stored_record_goes_to_on_corrupt_and_is_not_cached(spec: Spec) -> None:
    store = {"x": b"not a record"}
    seen: list[str] = []
    engine = Engine(spec)
    cache = RecordCache(
        spec, engine.codec, lambda ids: [store.get(i) for i in ids], 10**9, lambda e, d, err: seen.append(e)
    )
    cache.load(["x", "y"])
    assert seen == ["x"] and cache.records == {} and cache.bytes == 0
    strict = RecordCache(spec, engine.codec, lambda ids: [store.get(i) for i in ids], 10**9)
    with pytest.raises(RecordError):
        strict.load(["x"])


@pytest.mark.parametrize(("warmup_rows", "jobs"), [(0, 1), (4_000, 1), (4_000, 2)])
def test_replay_with_a_cache_far_smaller_than_the_population_gives_the_same_output(
    tmp_path: Path, warmup_rows: int, jobs: int
) -> None:
    """0.2 MB holds a few of the ~900 cards: nearly every batch reads records back from RocksDB."""
    header, lines = sample_lines(n=12_000)
    warmup = [write_csv(tmp_path / "warmup.csv.gz", header, lines[:warmup_rows])] if warmup_rows else []
    data = write_csv(tmp_path / "input.csv.gz", header, lines[warmup_rows:])
    want = replay(
        SPEC, data, adapter=ADAPTER, features_out=tmp_path / "all.parquet", warmup=warmup, cache_mb=0
    )
    got = replay(
        SPEC,
        data,
        adapter=ADAPTER,
        features_out=tmp_path / "cached.parquet",
        warmup=warmup,
        cache_mb=0.2,
        jobs=jobs,
    )
    assert got.entities == want.entities > 800 and got.scored == want.scored
    cached, uncached = (pq.read_table(tmp_path / f) for f in ("cached.parquet", "all.parquet"))
    assert cached.schema.metadata == uncached.schema.metadata
    pd.testing.assert_frame_equal(cached.to_pandas(), uncached.to_pandas(), check_exact=True)
    assert not list(tmp_path.glob(".supernova-records-*"))  # the spill store is gone


def test_replay_within_its_default_budget_makes_no_spill_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default --cache-mb bounds replay's memory; a population under it never touches RocksDB."""

    def refuse(path: Path) -> None:
        raise AssertionError(f"a spill store was made at {path}")

    monkeypatch.setattr("streams.replay.PartitionStore", refuse)
    header, lines = sample_lines(n=2_000)
    data = write_csv(tmp_path / "input.csv.gz", header, lines)
    got = replay(SPEC, data, adapter=ADAPTER, features_out=tmp_path / "f.parquet")
    assert got.scored > 1_000 and got.entities > 100
    with pytest.raises(AssertionError, match="spill store"):  # and one is made once records must leave
        replay(SPEC, data, adapter=ADAPTER, features_out=tmp_path / "g.parquet", cache_mb=0.05)
