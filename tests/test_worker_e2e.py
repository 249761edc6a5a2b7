"""End to end on the real broker: events -> worker -> scores, equal to replay.

One worker, three lives: a graceful restart in the middle of the first half, then
its data directory wiped (records must come back from the changelog) before the
second half. Every event must get exactly one score, and scores and features must
equal ``replay --model`` on the same events.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest
from streaming import ADAPTER, SAMPLE, SPEC, WorkerProcess, chunks, read_topic, train_small_model

from entities.events import Event
from entities.spec import load_spec
from streams.messages import ScoreMessage
from streams.produce import file_events, produce
from streams.replay import replay

pytestmark = pytest.mark.kafka
N_ROWS = 20_000  # the committed sample: 20,000 real Sparkov transactions


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Replay of the sample: features, a model trained on them, replay's scores."""
    d = tmp_path_factory.mktemp("replay")
    spec = load_spec(SPEC)
    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=d / "features.parquet", limit=N_ROWS)
    model = train_small_model(spec, d / "features.parquet", d / "model")
    replay(
        SPEC,
        SAMPLE,
        adapter=ADAPTER,
        features_out=d / "f2.parquet",
        limit=N_ROWS,
        models=[model],
        scores_out=d / "scores.parquet",
    )
    return {"features": d / "f2.parquet", "scores": d / "scores.parquet", "model": model}


@pytest.mark.parametrize(
    "cache_mb",
    [None, 0.3],
    ids=["default cache", "0.3 MB cache"],  # 0.3 MB: a dozen of the ~900 cards' records in memory
)
def test_worker_scores_equal_replay_across_restart_and_wiped_state(
    kafka_broker, replayed: dict[str, Path], tmp_path: Path, cache_mb: float | None
) -> None:
    data_dir = tmp_path / "data"
    extra = [] if cache_mb is None else ["--cache-mb", str(cache_mb)]
    worker = WorkerProcess(kafka_broker.bootstrap, replayed["model"], data_dir, extra=extra)
    codec, items = file_events(SPEC, SAMPLE, N_ROWS, adapter=ADAPTER)
    events = (e for e in items if isinstance(e, Event))
    first, second = chunks(events, 10_000), list(events)
    t = worker.topics

    def publish(batch: list) -> int:
        return asyncio.run(produce(kafka_broker.bootstrap, t["events"], codec, iter(batch), partitions=4))

    worker.start()
    try:
        publish(first)
        scored_first = sum(1 for e in first if e.type == "transaction")
        # Stop mid-stream: some, not all, of the first half are scored.
        read_topic(kafka_broker.bootstrap, t["scores"], expect=2_000, timeout=60)
        worker.stop()
        worker.start()
        read_topic(kafka_broker.bootstrap, t["scores"], expect=scored_first, timeout=120)
        worker.stop()

        shutil.rmtree(data_dir)  # records must come back from the changelog
        worker.start()
        publish(second)
        messages = read_topic(kafka_broker.bootstrap, t["scores"], expect=N_ROWS, timeout=180)

        entity = next(e for e in second if e.type == "transaction").entity_id
        view = worker.get(f"/entities/{entity}")
        metrics = worker.get("/metrics")
        # Idle now: the next checkpoint makes every record durable, and the cache drops to its budget.
        deadline = time.monotonic() + 30
        while cache_mb is not None and time.monotonic() < deadline:
            idle = worker.get("/metrics")
            if _metric(idle, "supernova_cache_bytes") <= cache_mb * 2**20:
                break
            time.sleep(0.5)
        idle_cache = _metric(worker.get("/metrics"), "supernova_cache_bytes")
    finally:
        worker.stop()

    scores = [msgspec.json.decode(m.value, type=ScoreMessage) for m in messages]
    ids = [s.event_id for s in scores]
    assert len(ids) == N_ROWS, (
        f"{len(ids)} scores for {N_ROWS} events ({len(ids) - len(set(ids))} duplicates)"
    )
    assert len(set(ids)) == N_ROWS

    want = pq.read_table(replayed["scores"]).to_pandas().set_index("event_id")
    feats = pq.read_table(replayed["features"]).to_pandas().set_index("event_id")
    spec = load_spec(SPEC)
    names = [n for n in spec.feature_names if n not in spec.personal_features("transaction")]  # as sent
    worst_score = worst_feature = 0.0
    for s in scores:
        worst_score = max(worst_score, abs(s.score - want.at[s.event_id, "score"]))
        assert s.features is not None
        for name in names:
            got, exp = s.features[name], feats.at[s.event_id, name]
            if got is None or math.isnan(exp):
                assert got is None and math.isnan(exp), (s.event_id, name, got, exp)
                continue
            worst_feature = max(worst_feature, abs(got - exp))
    assert worst_score <= 1e-12, worst_score
    assert worst_feature <= 1e-12, worst_feature

    # The HTTP view agrees with replay on the entity's latest state.
    last = feats[feats["entity_id"] == entity].iloc[-1]
    assert view["entity_id"] == entity
    assert view["lifetime_count"]["transactions"] == last["txn_count_lifetime"]
    if cache_mb is None or view["in_memory"]:
        assert view["in_memory"]
        assert view["features"]["transaction"]["amt_sum_24h"] == pytest.approx(last["amt_sum_24h"], abs=1e-12)
        assert view["last_score"]["transaction"]["event_id"] == last.name
    else:  # read from RocksDB for the answer: the record, without its last features and score
        assert view["features"] == {} and view["last_score"] == {}
    if cache_mb is not None:  # the records did go through RocksDB, over and over
        evicted, loaded = (_metric(metrics, f"supernova_records_{m}_total") for m in ("evicted", "loaded"))
        assert evicted > 500 and loaded > 500, (evicted, loaded)  # of the ~900 cards, in 10,000 events
        assert idle_cache <= cache_mb * 2**20, idle_cache
    assert all(s.event_type == "transaction" for s in scores)
    assert isinstance(metrics, str) and "supernova_scores_out_total" in metrics
    assert _metric(metrics, "supernova_records_restored_total") > 0, "the wiped worker did not restore"


def _metric(metrics: str, name: str) -> float:
    return float(next(line for line in metrics.splitlines() if line.startswith(name + " ")).split()[1])
