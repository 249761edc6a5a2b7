"""Reading one changelog partition raw, for a restore: key/values straight from fetched record batches.

A restore only copies key/values. Through ``AIOKafkaConsumer.getmany`` more than half
of its time went to what a consumer does per message (a ``ConsumerRecord`` each, its
positions, its background fetcher), not to the copy. This reader sends the Fetch
requests itself with aiokafka's client (the same connection and security settings as
the worker's consumers) and walks the record batches with aiokafka's parser, CRCs
checked. It skips what a ``read_committed`` consumer skips: control batches and the
batches of aborted transactions (exactly-once checkpoints write the changelog in
transactions), and reads only below the last stable offset. The next fetch is sent
before a response is handed over, so the broker works while the caller copies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import aiokafka.errors as errors
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.offset import OffsetRequest
from aiokafka.record.control_record import ABORT_MARKER, ControlRecord
from aiokafka.record.memory_records import MemoryRecords

from streams.security import client_settings

READ_COMMITTED = 1
LATEST = -1  # ListOffsets: the end of the partition (its last stable offset when read_committed)
FETCH_MAX_BYTES = 64 << 20
# Per fetch: big enough that a response is mostly payload, small enough that the next
# one arrives while this one is copied.
PARTITION_FETCH_BYTES = 8 << 20
FETCH_WAIT_MS = 500
PROBE_BYTES = 1024  # check_read: enough for the answer, not for data
RETRIES = 60  # leader moves and metadata refreshes, 0.5 s apart
RETRY_S = 0.5
# What a refreshed leader fixes; any other error is raised.
_RETRIABLE = (
    errors.NotLeaderForPartitionError,
    errors.UnknownTopicOrPartitionError,
    errors.LeaderNotAvailableError,
    errors.KafkaConnectionError,
    errors.NodeNotReadyError,
    errors.RequestTimedOutError,
)


@dataclass
class Chunk:
    """The messages of one fetch response: key/values in offset order, and where reading goes on."""

    pairs: list[tuple[bytes, bytes | None]]
    next_offset: int  # every message below it has been read (or skipped: aborted, control)
    last_headers: Any  # headers of the last message in ``pairs`` (None when empty)


class ChangelogReader:
    """A Kafka client that reads changelog partitions raw; ``async with`` starts and closes it."""

    def __init__(self, bootstrap: str, kafka: Mapping[str, Any]) -> None:
        """A reader of ``bootstrap`` with the worker's ``--kafka-config`` settings."""
        self.client = AIOKafkaClient(bootstrap_servers=bootstrap, **client_settings(kafka))

    async def __aenter__(self) -> ChangelogReader:
        await self.client.bootstrap()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def end_offset(self, topic: str, partition: int) -> int:
        """The partition's last stable offset: what ``end_offsets`` gives a read_committed consumer."""
        request = OffsetRequest(-1, READ_COMMITTED, [(topic, [(partition, LATEST)])])
        _, found = await self._send(topic, partition, request)
        return int(found[1])  # v1+: timestamp, offset[, leader epoch]

    async def read(self, topic: str, partition: int, start: int, end: int) -> AsyncGenerator[Chunk, None]:
        """The committed messages at offsets ``start`` to ``end`` (excluded), a fetch response at a time."""
        offset = start
        pending: asyncio.Future[Any] | None = asyncio.ensure_future(self._fetch(topic, partition, offset))
        try:
            while pending is not None:
                version, response = await pending
                pending = None
                records, aborted = _partition_data(version, response, topic)
                batches = _batches(records)
                after = batches[-1].next_offset if batches else offset
                if after < end:  # the broker fetches on while this response is copied
                    pending = asyncio.ensure_future(self._fetch(topic, partition, after))
                chunk = _read_batches(batches, aborted, offset, end)
                offset = chunk.next_offset
                yield chunk
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, errors.KafkaError):
                    await pending

    async def _fetch(self, topic: str, partition: int, offset: int) -> tuple[int, Any]:
        request = FetchRequest(
            FETCH_WAIT_MS,
            1,
            FETCH_MAX_BYTES,
            READ_COMMITTED,
            [(topic, [(partition, offset, PARTITION_FETCH_BYTES)])],
        )
        response, _ = await self._send(topic, partition, request)
        return response.API_VERSION, response

    async def _send(self, topic: str, partition: int, request: Any) -> tuple[Any, list[Any]]:
        """A one-partition request to its leader, retrying what a refreshed leader fixes.

        Returns the response and its partition entry after the error code.
        """
        for attempt in range(RETRIES):
            try:
                node = await self._leader(topic, partition)
                response = await self.client.send(node, request)
                ((_, parts),) = response.topics
                ((_, code, *rest),) = parts
                _raise_for(code, topic)
                return response, rest
            except _RETRIABLE as exc:
                await self._retry_later(topic, attempt, exc)
        raise AssertionError("unreachable")

    async def check_read(self, topic: str, partition: int = 0) -> None:
        """Raise TopicAuthorizationFailedError if Kafka refuses Read on ``topic`` (a fetch, no wait)."""
        node = await self._leader(topic, partition)
        request = FetchRequest(0, 0, PROBE_BYTES, READ_COMMITTED, [(topic, [(partition, 0, PROBE_BYTES)])])
        response = await self.client.send(node, request)
        ((_, parts),) = response.topics
        ((_, code, *_rest),) = parts
        if errors.for_code(code) is errors.TopicAuthorizationFailedError:
            raise errors.TopicAuthorizationFailedError(topic)
        # Any other answer (data, an offset out of range) came after Kafka allowed the Read.

    async def _leader(self, topic: str, partition: int) -> int:
        tp = TopicPartition(topic, partition)
        node = self.client.cluster.leader_for_partition(tp)
        if node is None or node < 0:  # not in the metadata yet
            self.client.add_topic(topic)
            await self.client.force_metadata_update()
            node = self.client.cluster.leader_for_partition(tp)
            if node is None or node < 0:
                raise errors.LeaderNotAvailableError(f"{topic}-{partition}")
        return int(node)

    async def _retry_later(self, topic: str, attempt: int, exc: Exception) -> None:
        if attempt == RETRIES - 1:
            raise exc
        self.client.add_topic(topic)
        self.client.force_metadata_update()
        await asyncio.sleep(RETRY_S)


def _raise_for(code: int, topic: str) -> None:
    error = errors.for_code(code)
    if error is errors.TopicAuthorizationFailedError:
        raise error(topic)  # named, as the consumer names it (streams.security.refusal)
    if error is not errors.NoError:
        raise error()


def _partition_data(version: int, response: Any, topic: str) -> tuple[bytes, list[tuple[int, int]]]:
    """(record bytes, aborted transactions as (producer id, first offset)) of the one partition fetched."""
    ((_, parts),) = response.topics
    ((_, _code, _highwater, *data),) = parts
    if version < 4:
        raise errors.UnsupportedVersionError(f"Fetch v{version}: read_committed needs v4 or later ({topic})")
    # v4: lso, aborted, records; v5-v10: lso, log start, aborted, records;
    # v11+: lso, log start, aborted, preferred replica, records.
    aborted = data[2] if version >= 11 else data[-2]
    return data[-1], sorted(aborted or [], key=lambda a: a[1])


def _batches(records: bytes | None) -> list[Any]:
    """The whole record batches of a response (a partial one at its end is fetched again)."""
    memory = MemoryRecords(records or b"")
    out = []
    while memory.has_next():
        batch = memory.next_batch()
        if batch is None:
            break
        out.append(batch)
    return out


def _read_batches(batches: list[Any], aborted: list[tuple[int, int]], offset: int, end: int) -> Chunk:
    """The messages of ``batches`` at ``offset`` to ``end``, as a read_committed consumer sees them.

    The aborted-transaction bookkeeping is aiokafka's (``PartitionRecords``), per response.
    """
    pairs: list[tuple[bytes, bytes | None]] = []
    append = pairs.append
    last = None
    aborting: set[int] = set()
    for batch in batches:
        if not batch.validate_crc():
            raise errors.CorruptRecordException(f"invalid CRC in the batch at offset {batch.base_offset}")
        if batch.producer_id is not None:
            while aborted and aborted[0][1] <= batch.base_offset:
                aborting.add(aborted.pop(0)[0])
            if batch.is_control_batch and _is_abort_marker(batch):
                aborting.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in aborting:
                offset = max(offset, batch.next_offset)
                continue
        if batch.is_control_batch:
            offset = max(offset, batch.next_offset)
            continue
        for record in batch:
            at = record.offset
            if at < offset:  # a fetch returns the whole batch holding ``offset``
                continue
            if at >= end:
                return Chunk(pairs, end, last.headers if last is not None else None)
            append((record.key, record.value))
            last = record
        offset = max(offset, batch.next_offset)  # compaction may have removed its last records
    return Chunk(pairs, min(offset, end), last.headers if last is not None else None)


def _is_abort_marker(batch: Any) -> bool:
    for record in batch:
        return bool(ControlRecord.parse(record.key) == ABORT_MARKER)
    raise errors.KafkaError("a control batch without a record")
