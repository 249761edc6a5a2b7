"""The shop on the real broker: two scored types, each with its own model, equal to replay.

Wire events of the generator go to the events topic through a plain aiokafka
producer (an outside client: raw JSON lines as written, keyed by entity id, Kafka's
default partitioner), in replay's arrival order. The worker must send exactly one
score per scored event (logins and orders), each equal to ``replay --model`` of its
type, with ``event_type`` set.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaProducer
from streaming import REPO, WorkerProcess, read_topic, train_small_model

from entities.events import EventCodec
from entities.spec import load_spec
from streams.messages import ScoreMessage
from streams.replay import replay

pytestmark = pytest.mark.kafka

SHOP_SPEC = REPO / "examples" / "shop" / "spec.py"
TOLERANCE = 1e-12


def _generate(out: Path) -> Path:
    cmd = [sys.executable, "-m", "examples.shop.generate", "--users", "600", "--days", "30", "--seed", "3"]
    subprocess.run([*cmd, "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    return out


def _arrival_order(path: Path, codec: EventCodec) -> list[tuple[bytes, bytes]]:
    """(key, line) of every event, sorted stably by ts: the order replay applies them in.

    The lines go out as written (ISO or epoch-ms timestamps); only their order is set here.
    """
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    events = [(codec.decode(line), line) for line in lines]
    events.sort(key=lambda p: p[0].ts)
    return [(event.entity_id.encode(), line) for event, line in events]


async def _publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def test_shop_scores_of_both_types_equal_replay(kafka_broker, tmp_path: Path) -> None:
    spec = load_spec(SHOP_SPEC)
    events = _generate(tmp_path / "shop.jsonl")
    replay(SHOP_SPEC, events, features_out=tmp_path / "features")
    models = [
        train_small_model(spec, tmp_path / "features" / f"{t}.parquet", tmp_path / f"model-{t}", trees=20)
        for t in spec.scored_types
    ]
    replay(SHOP_SPEC, events, models=models, scores_out=tmp_path / "scores")
    want: dict[str, tuple[str, float]] = {}
    for event_type in spec.scored_types:
        table = pq.read_table(tmp_path / "scores" / f"{event_type}.parquet", columns=["event_id", "score"])
        for event_id, score in zip(table["event_id"].to_pylist(), table["score"].to_pylist(), strict=True):
            want[event_id] = (event_type, score)
    assert {t for t, _ in want.values()} == {"order", "login"}

    worker = WorkerProcess(
        kafka_broker.bootstrap,
        models[0],
        tmp_path / "data",
        extra=["--model", str(models[1])],
        spec=SHOP_SPEC,
    )
    worker.start()
    try:
        asyncio.run(
            _publish(
                kafka_broker.bootstrap, worker.topics["events"], _arrival_order(events, EventCodec(spec))
            )
        )
        messages = read_topic(kafka_broker.bootstrap, worker.topics["scores"], expect=len(want), timeout=120)
        health = worker.get("/health")
    finally:
        worker.stop()

    scores = [msgspec.json.decode(m.value, type=ScoreMessage) for m in messages]
    got = [s.event_id for s in scores]
    assert len(got) == len(set(got)), "an event was scored twice"
    assert set(got) == set(want)
    worst = 0.0
    for s in scores:
        event_type, score = want[s.event_id]
        assert s.event_type == event_type
        worst = max(worst, abs(s.score - score))
    assert worst <= TOLERANCE
    print(f"{len(scores):,} scores ({len(set(got)):,} events) equal to replay: max |delta| {worst:.1e}")
    assert set(health["models"]) == {"order", "login"}
