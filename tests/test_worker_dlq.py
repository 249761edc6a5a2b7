"""Bad events go to the dead-letter topic with a reason; the good ones around them are scored."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from streaming import ADAPTER, SAMPLE, SPEC, WorkerProcess, metric, read_topic, train_small_model

from entities.events import Event
from entities.spec import load_spec
from streams.kafka_io import partition_for
from streams.messages import DLQ_REASON, DLQ_SOURCE, ScoreMessage
from streams.produce import file_events
from streams.replay import replay

pytestmark = pytest.mark.kafka

GOOD = {"event_id": "x1", "entity_id": "42", "type": "transaction", "ts": 1592741642000}
ATTRS = {"merchant": "m", "category": "c", "amt": 1.0, "merch_lat": 1.0, "merch_long": 1.0}


def _bad_events() -> list[tuple[bytes | None, bytes | None, str]]:
    """(key, value, expected reason pattern) for each kind of malformed input."""
    ok = {**GOOD, "attrs": ATTRS}
    j = msgspec.json.encode
    return [
        (b"42", b"{not json", r"JSON is malformed"),
        (b"42", b"\xff\xfe\x00garbage", r"malformed|invalid"),
        (b"42", j({k: v for k, v in ok.items() if k != "event_id"}), r"event_id"),
        (b"42", j({**ok, "attrs": {**ATTRS, "amt": "12,50"}}), r"attrs\.amt.*Expected `float`"),
        (b"42", j({**ok, "type": "refund"}), r"type"),
        (None, j(ok), r"null key"),
        (b"42", j({**ok, "attrs": {**ATTRS, "merchant": "x" * 70_000}}), r"exceeds"),
        (b"43", j(ok), r"differs from the message key"),
        (b"42", j({**ok, "ts": "2020-06-21T12:14:02"}), r"no UTC offset"),
        (b"42", j({**ok, "attrs": {**ATTRS, "merch_lat": 123.0}}), r"attrs\.merch_lat"),
        (b"42", b"", r"JSON is malformed|truncated|input data"),
        (b"42", j([1, 2, 3]), r"Expected `object`"),
    ]


def test_malformed_events_land_in_dlq_and_good_ones_are_scored(kafka_broker, tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=tmp_path / "f.parquet", limit=2_000)
    model = train_small_model(spec, tmp_path / "f.parquet", tmp_path / "model", trees=5)
    worker = WorkerProcess(kafka_broker.bootstrap, model, tmp_path / "data", partitions=2)
    codec, events = file_events(SPEC, SAMPLE, 300, adapter=ADAPTER)
    good = [e for e in events if isinstance(e, Event)]
    bad = _bad_events()
    t = worker.topics

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            for i, event in enumerate(good):
                key = event.entity_id.encode()
                await producer.send(
                    t["events"], codec.encode(event), key=key, partition=partition_for(key, 2)
                )
                if i % 25 == 0 and i // 25 < len(bad):
                    k, v, _ = bad[i // 25]
                    await producer.send(t["events"], v, key=k, partition=0)
            await producer.flush()
        finally:
            await producer.stop()

    worker.start()
    try:
        asyncio.run(publish())
        scored = sum(1 for e in good if e.type == "transaction")
        scores = read_topic(kafka_broker.bootstrap, t["scores"], expect=scored, timeout=60)
        dead = read_topic(kafka_broker.bootstrap, t["dlq"], expect=len(bad), timeout=30)
        metrics = worker.get("/metrics")
        assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
    finally:
        worker.stop()

    assert sorted(msgspec.json.decode(m.value, type=ScoreMessage).event_id for m in scores) == sorted(
        e.event_id for e in good if e.type == "transaction"
    )
    assert len(dead) == len(bad)
    by_value = {(m.key, m.value): dict(m.headers) for m in dead}
    for key, value, pattern in bad:
        headers = by_value[(key, value or b"")]  # the original bytes, untouched
        reason = headers[DLQ_REASON].decode()
        assert re.search(pattern, reason), (pattern, reason)
        assert headers[DLQ_SOURCE].decode().startswith(t["events"] + "/0/")
    assert metric(metrics, "supernova_dlq_total") == len(bad)
