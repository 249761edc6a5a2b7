"""Hot reload and shadow scoring in a running worker, on the real broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from streaming import ADAPTER, SAMPLE, SPEC, WorkerProcess, chunks, read_topic, train_small_model

from entities.spec import load_spec
from models.artifact import load
from models.registry import Registry
from streams.messages import ScoreMessage
from streams.produce import file_events, produce
from streams.replay import replay

pytestmark = pytest.mark.kafka
N_ROWS = 6_000


def test_promotion_switches_model_between_events_and_shadow_scores_match(
    kafka_broker, tmp_path: Path
) -> None:
    spec = load_spec(SPEC)
    features = tmp_path / "features.parquet"
    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=features, limit=N_ROWS)
    reg = Registry(tmp_path / "registry")
    v1 = reg.register(train_small_model(spec, features, tmp_path / "m1", trees=5, version="v1"))
    v2 = reg.register(train_small_model(spec, features, tmp_path / "m2", trees=12, version="v2"))
    reg.promote(v1.key)
    reg.promote(v2.key, role="challenger")

    worker = WorkerProcess(kafka_broker.bootstrap, None, tmp_path / "data", partitions=2)
    worker.extra = ["--registry", str(reg.root)]
    codec, events = file_events(SPEC, SAMPLE, N_ROWS, adapter=ADAPTER)
    events = iter(events)
    first, second = chunks(events, 3_000), list(events)
    n_first = sum(e.type == "transaction" for e in first)

    def publish(batch: list) -> None:
        asyncio.run(
            produce(kafka_broker.bootstrap, worker.topics["events"], codec, iter(batch), partitions=2)
        )

    worker.start()
    try:
        assert worker.get("/health")["models"]["transaction"]["shadow"] == "fraud v2"
        publish(first)
        read_topic(kafka_broker.bootstrap, worker.topics["scores"], expect=n_first, timeout=60)
        reg.promote(v2.key)  # champion := v2, challenger cleared
        deadline = time.monotonic() + 30
        while (
            worker.get("/health")["models"]["transaction"]["model"] != "fraud v2"
            and time.monotonic() < deadline
        ):
            time.sleep(0.2)
        publish(second)
        messages = read_topic(kafka_broker.bootstrap, worker.topics["scores"], expect=N_ROWS, timeout=90)
    finally:
        worker.stop()

    scores = [msgspec.json.decode(m.value, type=ScoreMessage) for m in messages]
    assert len(scores) == N_ROWS and len({s.event_id for s in scores}) == N_ROWS  # none lost, none twice
    # In each partition's order the version goes v1...v1 then v2...v2: one switch, between two events.
    for p in (0, 1):
        versions = [
            s.model_version for s in sorted(scores, key=lambda s: s.source.offset) if s.source.partition == p
        ]
        switch = versions.index("v2")
        assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
    assert sum(s.model_version == "v1" for s in scores) == n_first

    # Every score (and shadow score) equals that model alone on replay's features.
    table = pq.read_table(features).to_pandas().set_index("event_id")
    rows = table.loc[[s.event_id for s in scores], spec.feature_names].to_numpy()
    models = {"v1": load(v1.path, spec), "v2": load(v2.path, spec)}
    expected = {v: m.predict(rows) for v, m in models.items()}
    got = np.array([s.score for s in scores])
    want = np.array([expected[s.model_version][i] for i, s in enumerate(scores)])
    assert np.max(np.abs(got - want)) <= 1e-12
    shadowed = [(i, s) for i, s in enumerate(scores) if s.model_version == "v1"]
    assert all(s.shadow_model_version == "v2" and s.shadow_score is not None for _, s in shadowed)
    assert max(abs(s.shadow_score - expected["v2"][i]) for i, s in shadowed) <= 1e-12
    assert all(s.shadow_score is None for s in scores if s.model_version == "v2")  # challenger cleared
