"""Going live warm on the real broker: ``supernova bootstrap``, then workers on live events.

History: the first 15,000 rows of the committed sample; live: the next 5,000, produced
by an outside client (``streams.produce``, Kafka's default partitioner) with their
profile events. The oracle is ``replay --warmup <history> --input <live> --model M``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.structs import OffsetAndMetadata
from streaming import ADAPTER, SPEC, WorkerProcess, metric, read_topic, train_small_model
from test_history import sample_lines, write_csv

from entities.events import Event
from entities.spec import load_spec
from streams.cli import main
from streams.kafka_io import Message, ensure_topics, partition_for, send_batches
from streams.messages import CL_BATCH_START, ScoreMessage
from streams.produce import file_events, produce
from streams.replay import replay

pytestmark = pytest.mark.kafka
HISTORY_ROWS, LIVE_ROWS = 15_000, 5_000
PARTITIONS = 4


# The full acceptance, by hand (not in CI: minutes): SUPERNOVA_GO_LIVE_FULL=1 pytest -s -k two_workers
# takes fraudTrain as the history and the first 50,000 fraudTest transactions as live events.
FULL = os.environ.get("SUPERNOVA_GO_LIVE_FULL") == "1"
DATA = SPEC.parents[2].parent / "shared" / "data"
if FULL:
    LIVE_ROWS = 50_000


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """History and live slices of the sample, a model, and replay --warmup's features and scores."""
    d = tmp_path_factory.mktemp("bootstrap")
    if FULL:
        history = DATA / "fraudTrain.csv.gz"
        header, lines = sample_lines(DATA / "fraudTest.csv.gz", LIVE_ROWS)
        live = write_csv(d / "live.csv.gz", header, lines)
    else:
        header, lines = sample_lines()
        history = write_csv(d / "history.csv.gz", header, lines[:HISTORY_ROWS])
        live = write_csv(d / "live.csv.gz", header, lines[HISTORY_ROWS : HISTORY_ROWS + LIVE_ROWS])
    return {"history": history, "live": live, **_oracle(SPEC, history, live, d)}


def _oracle(spec: Path, history: Path, live: Path, d: Path) -> dict[str, Path]:
    replay(spec, history, adapter=ADAPTER, features_out=d / "history.parquet")
    model = train_small_model(load_spec(spec), d / "history.parquet", d / "model")
    features, scores = d / "live-features.parquet", d / "live-scores.parquet"
    replay(
        spec, live, adapter=ADAPTER, features_out=features, models=model, scores_out=scores, warmup=[history]
    )
    return {"model": model, "features": features, "scores": scores}


def _bootstrap(broker: str, app: str, history: Path, *extra: str, spec: Path = SPEC) -> int:
    return main(
        [
            "bootstrap", "--spec", str(spec), "--input", str(history), "--adapter", str(ADAPTER),
            "--bootstrap", broker,
            "--app-id", app, "--events-topic", f"{app}.events", "--partitions", str(PARTITIONS), *extra,
        ]
    )  # fmt: skip


def _get_json(worker: WorkerProcess, path: str) -> Any:
    """GET a JSON path of a worker, error answers (404) included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}{path}", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def _entity_views(workers: tuple[WorkerProcess, ...], entity: str, timeout: float = 30) -> list[Any]:
    """Each worker's answer for an entity, once one of them holds it.

    A rebalance (a member slow to heartbeat on a loaded machine) leaves the entity's
    partition with no owner for a moment, and both answer 404: ask again.
    """
    deadline = time.monotonic() + timeout
    while True:
        views = [_get_json(w, f"/entities/{entity}") for w in workers]
        if any(v and "entity_id" in v for v in views) or time.monotonic() > deadline:
            return views
        time.sleep(0.5)


def _live_events(live: Path) -> list[Event]:
    _, items = file_events(SPEC, live, None, adapter=ADAPTER)
    return [e for e in items if isinstance(e, Event)]


def _publish(broker: str, topic: str, events: list[Event]) -> None:
    codec, _ = file_events(SPEC, SPEC.parent / "sample.csv.gz", 1, adapter=ADAPTER)
    asyncio.run(produce(broker, topic, codec, iter(events), partitions=PARTITIONS))


def _scores(broker: str, topic: str, expect: int) -> list[ScoreMessage]:
    def event_id(m: object) -> str:
        return msgspec.json.decode(m.value, type=ScoreMessage).event_id  # type: ignore[attr-defined]

    messages = read_topic(broker, topic, expect, timeout=180, unique=event_id, committed=True)
    return [msgspec.json.decode(m.value, type=ScoreMessage) for m in messages]


def _assert_equal_to_replay(scores: list[ScoreMessage], oracle: dict[str, Path], spec: Path, n: int) -> None:
    ids = [s.event_id for s in scores]
    assert len(ids) == n, f"{len(ids)} scores for {n} transactions ({len(ids) - len(set(ids))} duplicates)"
    assert len(set(ids)) == n
    want = pq.read_table(oracle["scores"]).to_pandas().set_index("event_id")
    feats = pq.read_table(oracle["features"]).to_pandas().set_index("event_id")
    assert set(ids) == set(want.index)
    worst_score = worst_feature = 0.0
    for s in scores:
        worst_score = max(worst_score, abs(s.score - want.at[s.event_id, "score"]))
        assert s.features is not None
        loaded = load_spec(spec)
        for name in loaded.feature_names:
            if name in loaded.personal_features("transaction"):  # withheld from score messages
                continue
            got, exp = s.features[name], feats.at[s.event_id, name]
            if got is None or math.isnan(exp):
                assert got is None and math.isnan(exp), (s.event_id, name, got, exp)
                continue
            worst_feature = max(worst_feature, abs(got - exp))
    print(f"\n{n:,} scores, each once; worst |score - replay| {worst_score:.1e}, feature {worst_feature:.1e}")
    assert worst_score <= 1e-12, worst_score
    assert worst_feature <= 1e-12, worst_feature


def test_two_workers_after_bootstrap_score_like_replay_with_warmup(
    kafka_broker, slices, tmp_path: Path
) -> None:
    """Exactly-once, two processes; their data dirs are wiped halfway (restore from the changelog)."""
    bs = kafka_broker.bootstrap
    app = f"t{uuid.uuid4().hex[:8]}"
    assert _bootstrap(bs, app, slices["history"]) == 0
    a = WorkerProcess(bs, slices["model"], tmp_path / "a", prefix=app, partitions=PARTITIONS)
    b = WorkerProcess(bs, slices["model"], tmp_path / "b", prefix=app, partitions=PARTITIONS)
    a.extra = b.extra = ["--exactly-once"]
    events = _live_events(slices["live"])
    half = len(events) // 2
    first, second = events[:half], events[half:]
    n_first = sum(e.type == "transaction" for e in first)
    try:
        a.start()
        b.start(ready=lambda h: bool(h and h.get("status") == "ok"))
        _publish(bs, a.topics["events"], first)
        _scores(bs, a.topics["scores"], n_first)
        a.stop()
        b.stop()
        shutil.rmtree(tmp_path / "a")
        shutil.rmtree(tmp_path / "b")
        a.start()
        b.start(ready=lambda h: bool(h and h.get("status") == "ok"))
        _publish(bs, a.topics["events"], second)
        scores = _scores(bs, a.topics["scores"], LIVE_ROWS)
        metrics = [w.get("/metrics") for w in (a, b)]
        entity = next(e.entity_id for e in reversed(second) if e.type == "transaction")
        views = _entity_views((a, b), entity)
    finally:
        a.stop()
        b.stop()
    _assert_equal_to_replay(scores, slices, SPEC, LIVE_ROWS)
    assert sum(metric(m, "supernova_records_restored_total") for m in metrics) > 0
    assert sum(metric(m, "supernova_events_misrouted_total") for m in metrics) == 0
    found = [v for v in views if v and "entity_id" in v]
    assert len(found) == 1 and found[0]["partition"] == partition_for(entity.encode(), PARTITIONS)
    missing = next(v for v in views if v and "error" in v)
    assert "hashes to partition" in missing["error"]


def test_bootstrap_refuses_non_empty_changelog(
    kafka_broker, slices, capsys: pytest.CaptureFixture[str]
) -> None:
    bs = kafka_broker.bootstrap
    app = f"t{uuid.uuid4().hex[:8]}"
    assert _bootstrap(bs, app, slices["history"]) == 0
    assert "bootstrapped" in capsys.readouterr().out
    assert _bootstrap(bs, app, slices["history"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the changelog {app}-records-changelog already holds")
    assert "--force" in err and len(err.splitlines()) == 1


def test_bootstrap_refuses_committed_offsets_and_force_resumes_there(
    kafka_broker, slices, capsys: pytest.CaptureFixture[str]
) -> None:
    bs = kafka_broker.bootstrap
    app = f"t{uuid.uuid4().hex[:8]}"
    events = f"{app}.events"
    committed = {0: 7, 2: 3}

    async def commit() -> None:
        await ensure_topics(bs, [NewTopic(events, PARTITIONS, 1)], {})
        consumer = AIOKafkaConsumer(bootstrap_servers=bs, group_id=f"{app}-worker")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(events, p) for p in committed])
            await consumer.commit(
                {TopicPartition(events, p): OffsetAndMetadata(o, "") for p, o in committed.items()}
            )
        finally:
            await consumer.stop()

    asyncio.run(commit())
    assert _bootstrap(bs, app, slices["history"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the consumer group {app}-worker has committed offsets on {events}")
    assert len(err.splitlines()) == 1
    assert _bootstrap(bs, app, slices["history"], "--force") == 0
    changelog = read_topic(bs, f"{app}-records-changelog", expect=10**9, timeout=5)
    starts = {(m.partition, dict(m.headers)[CL_BATCH_START].decode()) for m in changelog}
    assert starts == {(p, str(committed.get(p, 0))) for p in range(PARTITIONS)}


def _spec_variant(tmp: Path, name: str, old: str, new: str) -> Path:
    """The fraud spec with one text change, beside a copy of its CSV mapping."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(SPEC.parent / "sparkov.py", tmp / "sparkov.py")
    text = SPEC.read_text()
    assert text.count(old) == 1, old
    path = tmp / f"{name}.py"
    path.write_text(text.replace(old, new))
    return path


NEW_FEATURE = '''

def amt_cents(event: Event, fixed: dict[str, Any]) -> float:
    """Cents of the amount (a new feature over existing fields)."""
    return round(event.attrs.amt * 100) % 100


TXN = "transactions"'''


def test_spec_changes_keep_or_refuse_the_records(kafka_broker, slices, tmp_path: Path) -> None:
    """New features over the same layout: served without bootstrap. A new field: refused."""
    bs = kafka_broker.bootstrap
    app = f"t{uuid.uuid4().hex[:8]}"
    assert _bootstrap(bs, app, slices["history"]) == 0
    d = tmp_path / "specs"
    features = _spec_variant(d, "features", '\n\nTXN = "transactions"', NEW_FEATURE)
    last = 'Derived("dist_km_home_merchant", dist_km_home_merchant),'
    text = features.read_text()
    assert text.count(last) == 1
    features.write_text(text.replace(last, f'{last} Derived("amt_cents", amt_cents),'))
    layout = _spec_variant(
        d, "layout", '            "job": Text,\n', '            "job": Text,\n            "tier": Text,\n'
    )
    assert (
        load_spec(features).layout_hash() == load_spec(SPEC).layout_hash() != load_spec(layout).layout_hash()
    )
    assert "amt_cents" in load_spec(features).feature_names

    # The layout change: the worker refuses the records and names the way forward.
    layout_model = train_small_model(
        load_spec(layout), _features(layout, slices["history"], d), d / "layout-model"
    )
    refused = WorkerProcess(bs, layout_model, tmp_path / "c", prefix=app, partitions=PARTITIONS)
    refused.spec = layout
    with pytest.raises(RuntimeError, match="exited with 2") as exc:
        refused.start(timeout=60)
    line = next(x for x in str(exc.value).splitlines() if x.startswith("error: "))
    assert "holds records of layout" in line and "`supernova bootstrap`" in line

    # New features over the same layout: a worker with the new spec serves the bootstrapped records.
    oracle = _oracle(features, slices["history"], slices["live"], d)
    worker = WorkerProcess(bs, oracle["model"], tmp_path / "w", prefix=app, partitions=PARTITIONS)
    worker.spec = features
    worker.extra = ["--exactly-once"]
    try:
        worker.start()
        _publish(bs, worker.topics["events"], _live_events(slices["live"]))
        scores = _scores(bs, worker.topics["scores"], LIVE_ROWS)
    finally:
        worker.stop()
    _assert_equal_to_replay(scores, oracle, features, LIVE_ROWS)


def _features(spec: Path, history: Path, d: Path) -> Path:
    out = d / f"{spec.stem}-history.parquet"
    replay(spec, history, adapter=ADAPTER, features_out=out)
    return out


def test_misrouted_events_are_counted_and_their_entities_found(kafka_broker, tmp_path: Path) -> None:
    """A producer with librdkafka's default partitioner (CRC32 of the key), not Kafka's murmur2."""
    bs = kafka_broker.bootstrap
    events = _live_events(SPEC.parent / "sample.csv.gz")[:3_000]
    worker = WorkerProcess(bs, None, tmp_path / "data", partitions=PARTITIONS)
    model_dir = tmp_path / "model"
    replay(
        SPEC, SPEC.parent / "sample.csv.gz", adapter=ADAPTER, features_out=tmp_path / "f.parquet", limit=3_000
    )
    worker.model = train_small_model(load_spec(SPEC), tmp_path / "f.parquet", model_dir, trees=5)

    def crc32_partition(key: bytes) -> int:
        return zlib.crc32(key) % PARTITIONS

    async def publish() -> None:
        codec, _ = file_events(SPEC, SPEC.parent / "sample.csv.gz", 1, adapter=ADAPTER)
        producer = AIOKafkaProducer(bootstrap_servers=bs)
        await producer.start()
        try:
            messages: list[Message] = [
                (e.entity_id.encode(), codec.encode(e), [], crc32_partition(e.entity_id.encode()))
                for e in events
            ]
            await asyncio.gather(*await send_batches(producer, worker.topics["events"], messages))
        finally:
            await producer.stop()

    misrouted = [
        e
        for e in events
        if crc32_partition(e.entity_id.encode()) != partition_for(e.entity_id.encode(), PARTITIONS)
    ]
    assert misrouted
    try:
        worker.start()
        asyncio.run(publish())
        read_topic(bs, worker.topics["scores"], sum(e.type == "transaction" for e in events), timeout=120)
        text = worker.get("/metrics")
        entity = misrouted[-1].entity_id
        view = _get_json(worker, f"/entities/{entity}")
    finally:
        worker.stop()
    assert metric(text, "supernova_events_misrouted_total") == len(misrouted)
    assert view["partition"] == crc32_partition(entity.encode())
    assert view["hashed_partition"] == partition_for(entity.encode(), PARTITIONS)
    assert "murmur2_random" in view["misrouted"]
    assert "murmur2_random" in worker.log_tail(10_000)
