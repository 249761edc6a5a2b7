"""Round trips through a real Kafka broker (see conftest.py: never mocked).

pytest-asyncio is not a dependency: each test is a plain function that runs
its coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from streams.local_kafka import KafkaBroker

N_MESSAGES = 100


def _messages(n: int) -> list[tuple[bytes, bytes]]:
    # A few repeated keys, as with real entity ids, plus distinct values.
    return [(f"card-{i % 7}".encode(), f"txn-{i:04d}".encode()) for i in range(n)]


async def _create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        # The broker learns about the topic through the metadata log; wait
        # until it is listed so producers don't race it.
        for _ in range(100):
            if topic in await admin.list_topics():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"topic {topic} never appeared")
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, group: str, n: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(got) < n and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                got.extend((r.key, r.value) for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_round_trip_keys_values_order(kafka_broker: KafkaBroker) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    sent = _messages(N_MESSAGES)

    async def scenario() -> list[tuple[bytes, bytes]]:
        await _create_topic(kafka_broker.bootstrap, topic)
        await _produce(kafka_broker.bootstrap, topic, sent)
        return await _consume(kafka_broker.bootstrap, topic, f"g-{topic}", N_MESSAGES)

    received = asyncio.run(scenario())
    # One partition: the whole sequence comes back in the order it was sent.
    assert received == sent


@pytest.mark.kafka
@pytest.mark.fault
@pytest.mark.timeout(240)
def test_data_and_offsets_survive_broker_sigkill(tmp_path: Path) -> None:
    """Its own broker (the session one must stay up): SIGKILL, restart, and
    the acknowledged messages and the group's committed offset are still there."""
    broker = KafkaBroker(tmp_path / "kafka")
    topic, group = "survivor", "g-survivor"
    sent = _messages(N_MESSAGES)
    try:
        broker.start()

        async def before() -> list[tuple[bytes, bytes]]:
            await _create_topic(broker.bootstrap, topic)
            await _produce(broker.bootstrap, topic, sent)
            return await _consume(broker.bootstrap, topic, group, N_MESSAGES)

        assert asyncio.run(before()) == sent

        broker.kill()
        assert broker.pid is None
        broker.restart()

        async def after() -> tuple[int, list[tuple[bytes, bytes]]]:
            consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group)
            await consumer.start()
            try:
                tp = TopicPartition(topic, 0)
                # After a restart the broker loads __consumer_offsets before it answers for
                # the group (GroupCoordinatorNotAvailable meanwhile): ask until it does.
                deadline = time.monotonic() + 60
                committed = await consumer.committed(tp)
                while committed is None and time.monotonic() < deadline:
                    await asyncio.sleep(1)
                    committed = await consumer.committed(tp)
            finally:
                await consumer.stop()
            # A fresh group re-reads everything from the start.
            return committed, await _consume(broker.bootstrap, topic, f"{group}-2", N_MESSAGES)

        committed, reread = asyncio.run(after())
        assert committed == N_MESSAGES
        assert reread == sent
    finally:
        broker.stop()
    assert broker.pid is None


def test_produce_with_the_wrong_spec_rejects_every_row_and_exits_2(
    kafka_broker: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shop events validated by the fraud spec: nothing is produced, and the command says why."""
    from streams.cli import main

    repo = Path(__file__).resolve().parents[1]
    events = tmp_path / "logins.jsonl"
    events.write_text(
        '{"type": "login", "event_id": "l1", "entity_id": "u1", "ts": 1700000000000, "attrs": {}}\n' * 3
    )
    topic = f"wrong-spec-{uuid.uuid4().hex[:8]}"
    argv = ["produce", "--spec", str(repo / "examples" / "fraud" / "spec.py"), "--input", str(events)]
    assert main([*argv, "--topic", topic, "--bootstrap", kafka_broker.bootstrap]) == 2
    captured = capsys.readouterr()
    assert f"produced 0 events to {topic}; rejected 3 rows" in captured.out
    assert captured.err.splitlines()[-1] == (
        f"error: every row was rejected: are they events of {repo / 'examples' / 'fraud' / 'spec.py'}?"
    )
