"""Small Kafka helpers shared by the worker, the producer and recovery."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

MAX_PRODUCER_BATCH = 1 << 20
DEFAULT_PARTITIONS = 4  # of the topics the worker and the producer create
# The records changelog (created by the worker or by `supernova bootstrap`).
CHANGELOG_CONFIG = {"cleanup.policy": "compact", "max.message.bytes": str(8 << 20)}

# (key, value, headers, partition)
Message = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]  # a None value: a tombstone


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partition for a key (murmur2), so topics co-partition."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def ensure_topics(bootstrap: str, topics: list[NewTopic], kafka: dict[str, Any]) -> None:
    """Create the topics that do not exist yet (a concurrent creator is fine)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def send_batches(
    producer: AIOKafkaProducer, topic: str, messages: Iterable[Message], count: bool = False
) -> list[Any]:
    """Append messages to one producer batch per partition (as many as needed).

    Each batch is closed before it is handed over: aiokafka keeps an open batch for
    ``linger_ms`` waiting for appends that never come here, which would add the
    linger to every event's latency. Returns the delivery futures; with
    ``count`` each resolves to (base offset, n).
    """
    futures: list[Any] = []
    open_batches: dict[int, Any] = {}
    counts: dict[int, int] = {}

    async def flush(p: int) -> None:
        batch = open_batches.pop(p)
        batch.close()
        fut = await producer.send_batch(batch, topic, partition=p)
        n = counts.pop(p)
        futures.append(_with_count(fut, n) if count else fut)

    for key, value, headers, p in messages:
        batch = open_batches.get(p)
        if batch is None:
            batch = open_batches[p] = producer.create_batch()
            counts[p] = 0
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            await flush(p)
            batch = open_batches[p] = producer.create_batch()
            counts[p] = 0
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"message of {len(value or b'')} bytes exceeds the producer batch")
        counts[p] += 1
    for p in list(open_batches):
        await flush(p)
    return futures


async def _with_count(fut: Any, n: int) -> tuple[int, int]:
    meta = await fut
    return meta.offset, n
