"""Publish a recorded file as events (same mapping and order as replay), and tail a topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import NewTopic

from entities.events import Event, EventCodec
from entities.spec import load_spec
from streams.adapters import AdapterRef
from streams.kafka_io import (
    DEFAULT_PARTITIONS,
    MAX_PRODUCER_BATCH,
    Message,
    ensure_topics,
    partition_for,
    send_batches,
)
from streams.sources import Rejected, read_events

CHUNK = 2000


def file_events(
    spec_path: Path, input_path: Path, limit: int | None, adapter: AdapterRef = None
) -> tuple[EventCodec, Iterator[Event | Rejected]]:
    """The events of a file in arrival order (read whole and sorted stably by ts).

    ``adapter`` maps CSV rows to events (a class or ``FILE.py[:NAME]``); JSON lines need none.
    """
    codec = EventCodec(load_spec(spec_path))
    return codec, read_events(input_path, codec, adapter, limit, sort=True)


async def produce(
    bootstrap: str,
    topic: str,
    codec: EventCodec,
    events: Iterator[Event | Rejected],
    rate: float | None = None,
    partitions: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_reject: Callable[[Rejected], None] | None = None,
    kafka: dict[str, Any] | None = None,
) -> int:
    """Publish events keyed by entity_id; at most ``rate`` events/s. Returns the count."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=MAX_PRODUCER_BATCH,
        **(kafka or {}),
    )
    await ensure_topics(bootstrap, [NewTopic(topic, partitions or DEFAULT_PARTITIONS, 1)], kafka or {})
    try:
        await producer.start()
    except BaseException:  # refused (an ACL): close it, or it is reported unclosed after the error
        await producer.stop()
        raise
    sent = 0
    started = time.perf_counter()
    try:
        n_parts = partitions or len(await producer.partitions_for(topic))
        chunk: list[Event] = []
        futures: list[Any] = []

        async def flush() -> None:
            nonlocal sent
            futures.extend(await _send_chunk(producer, topic, codec, chunk, n_parts))
            sent += len(chunk)
            if on_progress is not None:
                on_progress(len(chunk))
            chunk.clear()
            if rate:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            if len(futures) > 64:
                await asyncio.gather(*futures)
                futures.clear()

        step = CHUNK if not rate else max(1, min(CHUNK, int(rate / 100)))
        for item in events:
            if isinstance(item, Rejected):
                if on_reject is not None:
                    on_reject(item)
                continue
            chunk.append(item)
            if len(chunk) >= step:
                await flush()
        if chunk:
            await flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def _send_chunk(
    producer: AIOKafkaProducer, topic: str, codec: EventCodec, chunk: list[Event], n_parts: int
) -> list[Any]:
    messages: list[Message] = []
    for event in chunk:
        key = event.entity_id.encode()
        messages.append((key, codec.encode(event), [], partition_for(key, n_parts)))
    return await send_batches(producer, topic, messages)


async def tail(
    bootstrap: str,
    topic: str,
    on_message: Callable[[Any], None],
    from_beginning: bool = False,
    limit: int | None = None,
    idle_timeout: float | None = None,
    kafka: dict[str, Any] | None = None,
) -> int:
    """Print (via ``on_message``) messages of a topic as they arrive; returns the count."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        **(kafka or {}),
    )
    try:
        await consumer.start()
    except BaseException:  # as the producer above
        await consumer.stop()
        raise
    seen = 0
    last = time.monotonic()
    try:
        while limit is None or seen < limit:
            got = await consumer.getmany(timeout_ms=200, max_records=1000)
            for records in got.values():
                for rec in records:
                    if limit is not None and seen >= limit:
                        break
                    on_message(rec)
                    seen += 1
            if got:
                last = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
    finally:
        await consumer.stop()
    return seen
