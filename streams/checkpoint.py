"""The checkpoint: making what the worker processed durable, without stalling the loop.

Every ``commit_interval`` (5 s; 0.1 s in exactly-once mode) the worker takes a
boundary: it notes the records changed since the last checkpoint and takes the
score deliveries pending. The noted records are encoded a little per loop
iteration, so that no poll waits for all of them (work in bursts is what makes
latency tails at steady load). A noted record that a poll is about to change is
first copied (``RecordCodec.snapshot``); the others are encoded as they are, since
they still hold the boundary's state.

Then, as a background task, the checkpoint waits until the scores sent before the
boundary are acknowledged, writes the records once to the compacted changelog, then
one RocksDB ``WriteBatch`` per partition with those records *and* the input offset
they cover, then commits the consumer offsets. In exactly-once mode the span between
checkpoints is one Kafka transaction (scores, dead letters, changelog and offsets),
persisted before the next poll.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from rocksdict import WriteBatch

from streams import messages as msg
from streams.kafka_io import send_batches
from streams.state import Partition
from streams.telemetry import WorkerMetrics

if TYPE_CHECKING:  # streams.worker imports this module
    from streams.worker import WorkerConfig

log = logging.getLogger(__name__)
# Fault tests only: die like kill -9 once a checkpoint's changelog is acknowledged and
# before its RocksDB write (the worst moment: the changelog is ahead of the store).
_CRASH_BEFORE_STORE = os.environ.get("SUPERNOVA_FAULT") == "crash-before-store"
GC_INTERVAL = 1.0  # seconds between the checkpoints' collections of the middle generation


@dataclass
class Span:
    """What one checkpoint persists for one partition: offsets [start, end) and its records."""

    part: Partition
    start: int
    end: int
    batch: WriteBatch  # the records for RocksDB, filled as they are encoded
    # The same key/values for the changelog (None: a delete, a null on the changelog).
    changed: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    # The records to encode: a copy (RecordCodec.snapshot) taken before the loop
    # changed the record again, or None while the live record holds the boundary's state.
    pending: dict[str, Any] = field(default_factory=dict)


@dataclass
class Checkpoint:
    """A checkpoint's boundary: records still to encode, the sends to wait for."""

    spans: list[Span]
    in_flight: list[Any]

    def copy_before_change(self, part: Partition, entity_ids: set[str]) -> None:
        """Copy the records of ``entity_ids`` still to be encoded as at the boundary."""
        for span in self.spans:
            if span.part is part:
                pending, records, snapshot = span.pending, part.cache.records, part.cache.codec.snapshot
                for entity_id in entity_ids:
                    if entity_id in pending and pending[entity_id] is None:
                        pending[entity_id] = snapshot(records[entity_id])

    def encode(self, until: float | None = None) -> bool:
        """Encode records until ``perf_counter()`` passes ``until`` (all if None); True once none are left.

        At least one record per call, so that a checkpoint always moves on.
        """
        clock = time.perf_counter
        for span in self.spans:
            pending, records, codec = span.pending, span.part.cache.records, span.part.cache.codec
            while pending:
                entity_id, snapshot = pending.popitem()
                # snapshot None: the record is unchanged since the boundary
                for key, data in codec.encode_parts(records[entity_id], snapshot):
                    span.changed.append((key, data))
                    if data is None:  # copied now: a little at a time, too
                        span.batch.delete(key)
                    else:
                        span.batch.put(key, data)
                if until is not None and clock() >= until:
                    return not any(span.pending for span in self.spans)
        return True


class Checkpointer:
    """Takes the worker's checkpoints and persists them: scores, then changelog, then store, then offsets.

    It also owns what a checkpoint waits for or closes: the score deliveries sent
    since the last boundary (``in_flight``) and, in exactly-once mode, the open
    transaction (``begin``).
    """

    def __init__(self, cfg: WorkerConfig, parts: dict[int, Partition], metrics: WorkerMetrics) -> None:
        """Checkpoints of ``parts`` (the worker's own dict, which assignment changes)."""
        self.cfg = cfg
        self.parts = parts
        self.metrics = metrics
        self.producer: AIOKafkaProducer | None = None
        self.changelog_producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.in_flight: list[Any] = []  # delivery futures since the last boundary
        self.in_transaction = False
        self.encoding: Checkpoint | None = None  # taken, its records not all encoded yet
        self._persisting: asyncio.Future[None] | None = None
        self.last = time.monotonic()  # when the last boundary was taken
        self._collected = 0.0  # when gc.collect(1) last ran

    def connect(
        self, producer: AIOKafkaProducer, changelog_producer: AIOKafkaProducer, consumer: AIOKafkaConsumer
    ) -> None:
        """The started clients: scores and transactions, changelog, offsets."""
        self.producer, self.changelog_producer, self.consumer = producer, changelog_producer, consumer

    async def begin(self) -> None:
        """In exactly-once mode, open the transaction the next sends belong to (if none is open)."""
        if self.cfg.exactly_once and not self.in_transaction:
            assert self.producer is not None
            await self.producer.begin_transaction()
            self.in_transaction = True

    def due(self, interval: float) -> bool:
        """Whether the next boundary is due: ``interval`` seconds passed and the last checkpoint persisted."""
        return time.monotonic() - self.last >= interval and (
            self._persisting is None or self._persisting.done()
        )

    async def checkpoint(self, wait: bool = True) -> None:
        """Make everything processed so far durable: scores, then changelog, then store, then offsets.

        The boundary is taken here: the changed records are noted, and each is copied
        before the loop changes it again. With ``wait=False`` they are encoded a little
        per loop iteration (``encode_some``) and the I/O runs as a task while the loop
        goes on; in exactly-once mode, and with ``wait``, all of it happens now (the
        next transaction may only start once this one is committed). Checkpoints never
        overlap: a new one first finishes the previous.
        """
        if self._persisting is not None:
            await self._persisting
            self._persisting = None
        if self.encoding is not None:
            taken, self.encoding = self.encoding, None
            taken.encode()
            await self._persist(taken)
        self.last = time.monotonic()
        # What survived the per-poll collections, at a boundary rather than mid-poll; at
        # most once a second (over its cache budget the worker checkpoints back to back).
        if self.last - self._collected >= GC_INTERVAL:
            gc.collect(1)
            self._collected = self.last
        boundary = self.take()
        if boundary is None:
            return
        if wait or self.cfg.exactly_once:
            boundary.encode()
            await self._persist(boundary)
        else:
            self.encoding = boundary

    def take(self) -> Checkpoint | None:
        """Note the records changed since the last checkpoint; take the pending sends."""
        spans = []
        for part in self.parts.values():
            if part.position <= part.checkpointed and not part.orphans:
                continue
            span = Span(part, part.checkpointed, part.position, part.store.batch())
            # First: a record of this checkpoint may write a segment under a swept key again.
            span.changed = [(key, None) for key in part.orphans]
            part.orphans = []
            span.pending = dict.fromkeys(part.cache.take_changed())
            spans.append(span)
            part.checkpointed = part.position
        in_flight, self.in_flight = self.in_flight, []
        if not spans and not in_flight and not self.in_transaction:
            return None
        return Checkpoint(spans, in_flight)

    def encode_some(self, until: float) -> None:
        """Encode records of the checkpoint in progress until ``until``; persist it once complete."""
        assert self.encoding is not None
        if self.encoding.encode(until=until):
            taken, self.encoding = self.encoding, None
            self._persisting = asyncio.ensure_future(self._persist(taken))

    async def _persist(self, taken: Checkpoint) -> None:
        assert self.changelog_producer is not None and self.consumer is not None
        started = time.monotonic()
        spans = taken.spans
        await asyncio.gather(*taken.in_flight)  # scores first: a changelog entry means "done"
        await self.begin()
        deliveries = []
        for span in spans:
            p = span.part.tp.partition
            headers = [
                (msg.CL_BATCH_START, str(span.start).encode()),
                (msg.CL_BATCH_END, str(span.end).encode()),
            ]
            cl = [(key, data, headers, p) for key, data in span.changed]
            deliveries.append(
                await send_batches(self.changelog_producer, self.cfg.changelog_topic, cl, count=True)
            )
        offsets = {span.part.tp: span.end for span in spans}
        if self.cfg.exactly_once:
            assert self.producer is not None
            if offsets:
                await self.producer.send_offsets_to_transaction(offsets, self.cfg.group_id)
            await self.producer.commit_transaction()
            self.in_transaction = False
        for span, delivery in zip(spans, deliveries, strict=True):
            acked = await asyncio.gather(*delivery)
            part = span.part
            if acked:
                part.changelog_next = max(base + n for base, n in acked)
            if _CRASH_BEFORE_STORE and span.changed:  # fault tests: the changelog is ahead of RocksDB
                os._exit(137)
            part.store.commit(span.batch, span.end, part.changelog_next)
            self.metrics.records_evicted.inc(part.evict())
        if offsets and not self.cfg.exactly_once:
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:  # e.g. mid-rebalance: the stores hold the positions anyway
                log.warning("offset commit failed (%s); the stores hold the positions", exc)
        self.metrics.checkpoint_seconds.observe(time.monotonic() - started)
        caches = [part.cache for part in self.parts.values()]
        self.metrics.cache_bytes.set(sum(c.bytes for c in caches))
        self.metrics.cache_records.set(sum(len(c.records) for c in caches))
        for span in spans:
            hw = self.consumer.highwater(span.part.tp)
            if hw is not None:
                self.metrics.lag.labels(partition=str(span.part.tp.partition)).set(max(0, hw - span.end))
