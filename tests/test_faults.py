"""Faults on the real broker: crashes, lost state, broker restarts, rebalances, poison records.

Every test streams real Sparkov events, injects its fault, and then checks the two
guarantees: every event has a score (exactly one in exactly-once mode), and every
card's record in RocksDB equals the record replay builds from the same events.
Each prints one row of the fault table (events, scores, duplicates, lost, DLQ, s).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
from streaming import ADAPTER, SPEC, WorkerProcess, metric, read_topic, train_small_model

from entities.engine import Engine
from entities.events import Event
from entities.record import RecordCodec
from entities.spec import load_spec
from streams.messages import ScoreMessage
from streams.produce import file_events, produce
from streams.replay import replay
from streams.store import PartitionStore

pytestmark = [pytest.mark.kafka, pytest.mark.fault]
REPO = Path(__file__).resolve().parents[1]
FULL = REPO.parent / "shared" / "data" / "fraudTest.csv.gz"
SAMPLE = REPO / "examples" / "fraud" / "sample.csv.gz"
INPUT, N_ROWS = (FULL, 100_000) if FULL.exists() else (SAMPLE, 20_000)
PARTITIONS = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model (the faults are about delivery, not accuracy)."""
    d = tmp_path_factory.mktemp("model")
    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=d / "f.parquet", limit=5_000)
    return train_small_model(load_spec(SPEC), d / "f.parquet", d / "model", trees=10)


@pytest.fixture(scope="module")
def events() -> tuple[list[Event], dict[str, tuple]]:
    """The input events and, per card, replay's final record (encoded, for exact comparison)."""
    _, it = file_events(SPEC, INPUT, N_ROWS, adapter=ADAPTER)
    evs = [e for e in it if isinstance(e, Event)]
    engine = Engine(load_spec(SPEC))
    engine.process(evs)
    return evs, {eid: _content(engine.codec, engine.codec.encode(r)) for eid, r in engine.records.items()}


def _publish(bootstrap: str, topic: str, evs: list[Event], rate: float | None = None) -> None:
    codec, _ = file_events(SPEC, SAMPLE, 1, adapter=ADAPTER)
    asyncio.run(produce(bootstrap, topic, codec, iter(evs), rate=rate, partitions=PARTITIONS))


def _publish_in_background(bootstrap: str, topic: str, evs: list[Event], rate: float) -> threading.Thread:
    t = threading.Thread(target=_publish, args=(bootstrap, topic, evs, rate), daemon=True)
    t.start()
    return t


def _scores(
    bootstrap: str, topic: str, expect: int, timeout: float = 240, committed: bool = False
) -> list[ScoreMessage]:
    """Scores until ``expect`` distinct events are scored (duplicates do not count).

    With ``committed``, as a read_committed consumer sees them (what exactly-once promises).
    """
    messages = read_topic(bootstrap, topic, expect, timeout, unique=_event_id, committed=committed)
    return [msgspec.json.decode(m.value, type=ScoreMessage) for m in messages]


class _EventId(msgspec.Struct):
    event_id: str


def _event_id(message: object) -> str:
    return msgspec.json.decode(message.value, type=_EventId).event_id  # type: ignore[attr-defined]


def _content(codec: RecordCodec, data: bytes, segments: list[bytes | None] | None = None) -> tuple:
    """What a record knows, without its duplicates counter (at-least-once replays bump it)."""
    r = codec.decode(data, segments or [])
    return (r.entity_id, r.fixed, r.items, r.lifetime, r.last_ts)


def _stored_records(data_dirs: list[Path], topic: str) -> dict[str, tuple]:
    """Every record in the workers' RocksDB, decoded."""
    codec = RecordCodec(load_spec(SPEC))
    out: dict[str, tuple] = {}
    for data_dir in data_dirs:
        for p in range(PARTITIONS):
            path = data_dir / f"{topic}-{p}"
            if not path.exists():
                continue
            store = PartitionStore(path)
            try:
                for key, value in store.db.items():
                    assert isinstance(key, bytes)  # the store runs in raw mode
                    if not key.startswith(b"\x00"):  # a head: its segments are NUL-led
                        out[key.decode()] = _content(codec, value, store.get_raw(codec.segment_keys(value)))
            finally:
                store.close()
    return out


def _dead_letters(bootstrap: str, topic: str) -> list:
    return read_topic(bootstrap, topic, expect=10**9, timeout=3)


def _check(
    name: str,
    dead: list,
    evs: list[Event],
    scores: list[ScoreMessage],
    want_records: dict[str, tuple],
    got_records: dict[str, tuple],
    started: float,
    exactly_once: bool = False,
) -> None:
    expected = {e.event_id for e in evs if e.type == "transaction"}
    counts = Counter(s.event_id for s in scores)
    lost = expected - counts.keys()
    dups = sum(c - 1 for c in counts.values())
    print(
        f"\nFAULT-TABLE | {name} | events {len(evs):,} | scores {len(scores):,} | duplicates {dups:,} "
        f"| lost {len(lost):,} | dlq {len(dead):,} | {time.monotonic() - started:.0f} s"
    )
    for m in dead[:5]:
        print("  dead letter:", dict(m.headers))
    assert not lost, f"{len(lost)} events never scored"
    assert counts.keys() == expected
    if exactly_once:
        assert dups == 0, f"{dups} duplicate scores in exactly-once mode"
    assert got_records.keys() == want_records.keys()
    differing = [k for k in want_records if got_records[k] != want_records[k]]
    assert not differing, f"{len(differing)} records differ from replay, e.g. {differing[:3]}"


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_kill_9_five_times(kafka_broker, model: Path, events, tmp_path: Path, exactly_once: bool) -> None:
    evs, want = events
    started = time.monotonic()
    worker = WorkerProcess(kafka_broker.bootstrap, model, tmp_path / "data", partitions=PARTITIONS)
    if exactly_once:
        worker.extra = ["--exactly-once"]
    worker.start()
    # Slow enough that the feed spans all five crashes (each restart takes ~10 s).
    feeder = _publish_in_background(kafka_broker.bootstrap, worker.topics["events"], evs, rate=1_500)
    rng = random.Random(1234)
    try:
        for i in range(5):
            time.sleep(rng.uniform(1.0, 4.0))
            consumed = metric(worker.get("/metrics") or "", "supernova_events_in_total")
            print(f"kill {i + 1}: worker consumed {consumed:,.0f} so far")
            worker.kill()
            worker.start()
        feeder.join()
        n = sum(e.type == "transaction" for e in evs)
        scores = _scores(kafka_broker.bootstrap, worker.topics["scores"], n)
        if exactly_once:
            scores = _scores_committed(kafka_broker.bootstrap, worker.topics["scores"], n)
    finally:
        worker.stop()
    got = _stored_records([tmp_path / "data"], worker.topics["events"])
    mode = "exactly-once" if exactly_once else "at-least-once"
    dead = _dead_letters(kafka_broker.bootstrap, worker.topics["dlq"])
    _check(f"kill -9 x5 ({mode})", dead, evs, scores, want, got, started, exactly_once)


def _every_transaction_scored(bootstrap: str, worker: WorkerProcess, evs: list[Event]) -> list[ScoreMessage]:
    """Scores until each transaction of ``evs`` has one."""
    return _scores(bootstrap, worker.topics["scores"], sum(e.type == "transaction" for e in evs))


def _scores_committed(bootstrap: str, topic: str, expect: int) -> list[ScoreMessage]:
    """Scores as a read_committed consumer sees them."""
    return _scores(bootstrap, topic, expect, committed=True)


def test_rocksdb_deleted_between_restarts(kafka_broker, model: Path, events, tmp_path: Path) -> None:
    evs, want = events
    started = time.monotonic()
    data = tmp_path / "data"
    worker = WorkerProcess(kafka_broker.bootstrap, model, data, partitions=PARTITIONS)
    worker.start()
    feeder = _publish_in_background(kafka_broker.bootstrap, worker.topics["events"], evs, rate=8_000)
    try:
        for _ in range(2):
            time.sleep(3)
            worker.kill()
            shutil.rmtree(data)
            worker.start()
        feeder.join()
        scores = _every_transaction_scored(kafka_broker.bootstrap, worker, evs)
    finally:
        worker.stop()
    dead = _dead_letters(kafka_broker.bootstrap, worker.topics["dlq"])
    _check(
        "RocksDB deleted x2",
        dead,
        evs,
        scores,
        want,
        _stored_records([data], worker.topics["events"]),
        started,
    )


def test_killed_between_the_changelog_write_and_the_rocksdb_write(
    kafka_broker, model: Path, events, tmp_path: Path
) -> None:
    """Three lives die (exit 137) at their first checkpoint, its changelog acknowledged, RocksDB not written.

    Each restart finds the changelog ahead of its store: the restore must bring the
    store up to the changelog and the worker resume after what the changelog covers.
    """
    evs, want = events
    started = time.monotonic()
    data = tmp_path / "data"
    worker = WorkerProcess(
        kafka_broker.bootstrap,
        model,
        data,
        partitions=PARTITIONS,
        env={"SUPERNOVA_FAULT": "crash-before-store"},
    )
    feeder = None
    try:
        for life in range(3):
            try:
                worker.start()
            except RuntimeError as exc:  # it may die before it reports ready
                assert "worker exited with 137" in str(exc), exc
            else:
                if feeder is None:
                    feeder = _publish_in_background(
                        kafka_broker.bootstrap, worker.topics["events"], evs, 4_000
                    )
                assert worker.proc is not None
                assert worker.proc.wait(timeout=90) == 137, worker.log_tail()
            worker.proc = None
            print(f"life {life + 1} died before its RocksDB write")
        worker.env = {}
        worker.start()
        assert feeder is not None
        feeder.join()
        scores = _every_transaction_scored(kafka_broker.bootstrap, worker, evs)
    finally:
        worker.stop()
    dead = _dead_letters(kafka_broker.bootstrap, worker.topics["dlq"])
    got = _stored_records([data], worker.topics["events"])
    _check("killed after the changelog, before RocksDB x3", dead, evs, scores, want, got, started)


def test_broker_restart_mid_stream(kafka_broker, model: Path, events, tmp_path: Path) -> None:
    evs, want = events
    evs = evs[: len(evs) // 2]
    engine = Engine(load_spec(SPEC))
    engine.process(evs)
    want = {k: _content(engine.codec, engine.codec.encode(r)) for k, r in engine.records.items()}
    started = time.monotonic()
    worker = WorkerProcess(kafka_broker.bootstrap, model, tmp_path / "data", partitions=PARTITIONS)
    worker.start()
    half = len(evs) // 2
    try:
        _publish(kafka_broker.bootstrap, worker.topics["events"], evs[:half])
        time.sleep(1)
        kafka_broker.stop()
        time.sleep(3)
        kafka_broker.start()
        _publish(kafka_broker.bootstrap, worker.topics["events"], evs[half:])
        scores = _scores(
            kafka_broker.bootstrap, worker.topics["scores"], sum(e.type == "transaction" for e in evs)
        )
        assert worker.proc is not None and worker.proc.poll() is None, "the worker did not survive"
    finally:
        worker.stop()
    got = _stored_records([tmp_path / "data"], worker.topics["events"])
    dead = _dead_letters(kafka_broker.bootstrap, worker.topics["dlq"])
    _check("broker restart", dead, evs, scores, want, got, started)


def _two_workers(
    bootstrap: str, model: Path, tmp_path: Path, evs: list[Event], exactly_once: bool
) -> tuple[WorkerProcess, WorkerProcess, threading.Thread]:
    """Two workers in one group, then the events fed at 8,000/s in the background."""
    a = WorkerProcess(bootstrap, model, tmp_path / "a", partitions=PARTITIONS)
    b = WorkerProcess(bootstrap, model, tmp_path / "b", prefix=a.prefix, partitions=PARTITIONS)
    if exactly_once:  # two transactional producers, fencing nothing: each its own data dir
        a.extra = b.extra = ["--exactly-once"]
    a.start()
    b.start(ready=lambda h: bool(h and h.get("status") == "ok"))
    return a, b, _publish_in_background(bootstrap, a.topics["events"], evs, rate=8_000)


def _check_changelog(
    name: str,
    broker: Any,
    model: Path,
    tmp: Path,
    a: WorkerProcess,
    events: tuple[list[Event], dict[str, tuple]],
    scores: list[ScoreMessage],
    started: float,
    exactly_once: bool,
) -> None:
    """``_check`` against a fresh restore of the changelog: it holds the truth after rebalances."""
    evs, want = events
    c = WorkerProcess(broker.bootstrap, model, tmp / "c", prefix=a.prefix, partitions=PARTITIONS)
    c.start()
    c.stop()
    got = _stored_records([tmp / "c"], a.topics["events"])
    dead = _dead_letters(broker.bootstrap, a.topics["dlq"])
    _check(name, dead, evs, scores, want, got, started, exactly_once)


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_rebalance_two_workers(kafka_broker, model: Path, events, tmp_path: Path, exactly_once: bool) -> None:
    evs, _ = events
    started = time.monotonic()
    a, b, feeder = _two_workers(kafka_broker.bootstrap, model, tmp_path, evs, exactly_once)
    try:
        time.sleep(3)
        b.stop()
        time.sleep(4)
        b.start(ready=lambda h: bool(h and h.get("status") == "ok"))
        feeder.join()
        n = sum(e.type == "transaction" for e in evs)
        scores = (_scores_committed if exactly_once else _scores)(
            kafka_broker.bootstrap, a.topics["scores"], n
        )
    finally:
        a.stop()
        b.stop()
    mode = "exactly-once" if exactly_once else "at-least-once"
    name = f"rebalance (2 workers, 4 partitions, {mode})"
    _check_changelog(name, kafka_broker, model, tmp_path, a, events, scores, started, exactly_once)


def test_kill_one_of_two_exactly_once_workers(kafka_broker, model: Path, events, tmp_path: Path) -> None:
    """The survivor takes over; the dead one's open transaction is aborted at its timeout."""
    evs, _ = events
    started = time.monotonic()
    a, b, feeder = _two_workers(kafka_broker.bootstrap, model, tmp_path, evs, exactly_once=True)
    try:
        time.sleep(4)
        b.kill()
        killed = time.monotonic()
        feeder.join()
        n = sum(e.type == "transaction" for e in evs)
        scores = _scores_committed(kafka_broker.bootstrap, a.topics["scores"], n)
        waited = time.monotonic() - killed
    finally:
        a.stop()
        b.stop()
    print(f"\nevery score committed {waited:.0f} s after the kill")
    # Not a timing benchmark: a config check. With the client's default 60 s transaction
    # timeout the last scores became visible 66 s after the kill; with 10 s, 16 s (the
    # feed itself runs ~9 s past the kill).
    assert waited < 40, f"read_committed readers waited {waited:.0f} s for the dead worker's transaction"
    name = "kill -9 one of two workers (exactly-once)"
    _check_changelog(name, kafka_broker, model, tmp_path, a, events, scores, started, True)


def test_poison_record_is_quarantined(kafka_broker, model: Path, events, tmp_path: Path) -> None:
    evs, _ = events
    first = evs[:3_000]
    data = tmp_path / "data"
    worker = WorkerProcess(kafka_broker.bootstrap, model, data, partitions=PARTITIONS)
    worker.start()
    try:
        _publish(kafka_broker.bootstrap, worker.topics["events"], first)
        n1 = sum(e.type == "transaction" for e in first)
        _scores(kafka_broker.bootstrap, worker.topics["scores"], n1)
        worker.stop()
        victim = next(e.entity_id for e in reversed(first) if e.type == "transaction")
        for p in range(PARTITIONS):  # corrupt the victim's stored bytes wherever it lives
            store = PartitionStore(data / f"{worker.topics['events']}-{p}")
            if store.db.get(victim.encode()) is not None:
                store.db.put(victim.encode(), b"\x93garbage")
            store.close()
        worker.start()
        later = [e for e in evs[3_000:6_000]]
        _publish(kafka_broker.bootstrap, worker.topics["events"], later)
        n2 = n1 + sum(e.type == "transaction" for e in later)
        scores = _scores(kafka_broker.bootstrap, worker.topics["scores"], n2)
        metrics = worker.get("/metrics")
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        worker.stop()
    assert len({s.event_id for s in scores}) == n2
    line = next(x for x in metrics.splitlines() if x.startswith("supernova_records_quarantined_total"))
    assert float(line.split()[1]) == 1.0
    assert "quarantined record of entity" in worker.log_tail(10_000)
