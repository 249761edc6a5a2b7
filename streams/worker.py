"""The hot path: a batch loop from the events topic to the scores topic.

Per batch and partition: decode every message with msgspec, load the records the
batch touches (one multi-get), run ``Engine.process`` (the same call as replay), one
LightGBM predict, then send scores and dead letters, then the changelog (one message
per changed record), then one RocksDB ``WriteBatch`` with the records and the offsets
they cover, then commit the consumer offset. Kafka and RocksDB are touched once per
batch, never once per event.

Recovery: a partition whose database is missing or behind its changelog is restored
from the changelog and resumes at the start of the last batch it logged; event-id
dedupe inside the records makes that replay harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from entities.engine import Engine
from entities.events import Event, EventCodec, EventError
from entities.record import RecordError, SupernovaRecord
from entities.spec import Spec
from models.scorer import Scorer
from streams import messages as msg
from streams.metrics import WorkerMetrics
from streams.store import PartitionStore

log = logging.getLogger(__name__)
MAX_PRODUCER_BATCH = 1 << 20


@dataclass
class WorkerConfig:
    """Everything the operator chooses; topic names follow Kafka Streams habits."""

    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "supernova"
    data_dir: Path = Path("data")
    events_topic: str = "events"
    scores_topic: str = "scores"
    dlq_topic: str = "events.dlq"
    partitions: int = 4
    max_batch: int = 5000
    batch_timeout_ms: int = 5
    include_features: bool = True
    max_event_bytes: int = 64 * 1024
    max_future_ms: int = 86_400_000  # events further ahead of the wall clock go to the DLQ
    exactly_once: bool = False  # one Kafka transaction per batch: scores + changelog + offset
    max_cached_records: int = 100_000
    kafka: dict[str, Any] = field(default_factory=dict)  # security settings, passed through

    @property
    def changelog_topic(self) -> str:
        """The compacted topic that backs the records."""
        return f"{self.app_id}-records-changelog"

    @property
    def group_id(self) -> str:
        """Consumer group of the batch loop."""
        return f"{self.app_id}-worker"


@dataclass
class _Partition:
    """State of one assigned input partition."""

    store: PartitionStore
    engine: Engine
    changelog_next: int = 0
    position: int = 0  # next input offset to apply
    reseeked: int | None = None
    last: dict[str, tuple[float, str, list[float]]] = field(default_factory=dict)


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partition for a key (murmur2), so scores co-partition."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class BatchWorker:
    """Consumes events, maintains records, scores, produces; one instance per process."""

    def __init__(
        self, cfg: WorkerConfig, spec: Spec, scorer: Scorer, metrics: WorkerMetrics | None = None
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.scorer = scorer
        self.metrics = metrics or WorkerMetrics()
        self.codec = EventCodec(spec, max_event_bytes=cfg.max_event_bytes)
        self.spec_hash = spec.hash()
        self.feature_names = spec.feature_names
        self.parts: dict[int, _Partition] = {}
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.scored_total = 0
        self._stopping = False

    @property
    def transactional_id(self) -> str:
        """Stable per worker (its data dir): a restarted worker fences its crashed self."""
        digest = hashlib.sha1(str(self.cfg.data_dir.resolve()).encode()).hexdigest()[:10]
        return f"{self.cfg.app_id}-{digest}"

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Create topics if absent, connect, subscribe."""
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        await self.ensure_topics()
        common = {"bootstrap_servers": self.cfg.bootstrap, **self.cfg.kafka}
        eos = {"transactional_id": self.transactional_id} if self.cfg.exactly_once else {}
        self.producer = AIOKafkaProducer(
            **common,
            **eos,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            max_batch_size=MAX_PRODUCER_BATCH,
            max_request_size=4 * MAX_PRODUCER_BATCH,
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            **common,
            group_id=self.cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.cfg.max_batch,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=16 << 20,
            isolation_level="read_committed",
        )
        await self.consumer.start()
        self.consumer.subscribe([self.cfg.events_topic], listener=_Rebalance(self))

    async def stop(self) -> None:
        """Finish the batch in flight, close stores and clients."""
        self._stopping = True
        async with self.lock:
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()
            for part in self.parts.values():
                part.store.close()
            self.parts.clear()

    async def ensure_topics(self) -> None:
        """Create events/scores/dlq/changelog topics with the configured partitions."""
        n = self.cfg.partitions
        compacted = {"cleanup.policy": "compact", "max.message.bytes": str(8 << 20)}
        await ensure_topics(
            self.cfg.bootstrap,
            [
                NewTopic(self.cfg.events_topic, n, 1),
                NewTopic(self.cfg.scores_topic, n, 1),
                NewTopic(self.cfg.dlq_topic, n, 1),
                NewTopic(self.cfg.changelog_topic, n, 1, topic_configs=compacted),
            ],
            self.cfg.kafka,
        )

    # --- the loop -------------------------------------------------------------------

    async def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Consume batches until told to stop."""
        assert self.consumer is not None
        while not (self._stopping or should_stop()):
            batches = await self.consumer.getmany(
                timeout_ms=self.cfg.batch_timeout_ms * 20, max_records=self.cfg.max_batch
            )
            if not batches:
                continue
            async with self.lock:
                for tp, records in batches.items():
                    part = self.parts.get(tp.partition)
                    if part is not None and records:
                        records = self._in_sequence(tp, part, records)
                    if part is not None and records:
                        await self.process(tp, records)

    def _in_sequence(self, tp: TopicPartition, part: _Partition, records: list[Any]) -> list[Any]:
        """The records that continue exactly where the store left off.

        A fetch issued around a (re)assignment can deliver records from another
        position than the one the store seeked to; applying them would skip events.
        Such a batch is dropped and the consumer seeked back. A gap that persists
        after that seek is real (transaction markers, compaction) and is accepted.
        """
        assert self.consumer is not None
        position = part.position
        if records[-1].offset < position:
            return []
        if records[0].offset < position:
            return [r for r in records if r.offset >= position]
        if records[0].offset > position and part.reseeked != position:
            log.warning("%s: got offset %d, expected %d: seeking back", tp, records[0].offset, position)
            self.consumer.seek(tp, position)
            part.reseeked = position
            return []
        return records

    async def process(self, tp: TopicPartition, records: list[Any]) -> None:
        """One partition's batch: decode, update, score, send, persist, commit."""
        assert self.producer is not None and self.consumer is not None
        part = self.parts[tp.partition]
        m = self.metrics
        m.events_in.inc(len(records))
        m.batch_size.observe(len(records))
        events: list[Event] = []
        origin: dict[int, Any] = {}
        dead: list[tuple[Any, str]] = []
        decode = self.codec.decode
        horizon = int(time.time() * 1000) + self.cfg.max_future_ms
        for rec in records:
            if rec.key is None:
                dead.append((rec, "null key"))
                continue
            try:
                event = decode(rec.value if rec.value is not None else b"")
            except EventError as err:
                dead.append((rec, str(err)))
                continue
            if event.entity_id.encode() != rec.key:
                dead.append((rec, f"field 'entity_id': {event.entity_id!r} differs from the message key"))
                continue
            if event.ts > horizon:
                dead.append(
                    (rec, f"field 'ts': {event.ts} ms is more than {self.cfg.max_future_ms} ms ahead")
                )
                continue
            events.append(event)
            origin[id(event)] = rec
        self._load(part, {e.entity_id for e in events})
        result = part.engine.process(events)
        dead.extend((origin[id(ev)], str(err)) for ev, err in result.rejected)
        m.duplicates.inc(result.duplicates)
        scores = self._scores(tp, part, result, origin)

        next_offset = records[-1].offset + 1
        changed = [(eid, part.engine.codec.encode(part.engine.records[eid])) for eid in result.changed]
        headers = [
            (msg.CL_BATCH_START, str(records[0].offset).encode()),
            (msg.CL_BATCH_END, str(next_offset).encode()),
        ]
        changelog = [(eid.encode(), data, headers, tp.partition) for eid, data in changed]
        dead_letters = [self._dead_letter(tp, r, why) for r, why in dead]
        if self.cfg.exactly_once:
            async with self.producer.transaction():
                cl_meta = await self._publish(scores, dead_letters, changelog)
                await self.producer.send_offsets_to_transaction({tp: next_offset}, self.cfg.group_id)
        else:
            cl_meta = await self._publish(scores, dead_letters, changelog)
        if cl_meta:
            part.changelog_next = max(base + n for base, n in cl_meta)
        # Kafka has the scores and the changelog: now the local state, then the position.
        part.store.commit(changed, next_offset, part.changelog_next)
        part.position = next_offset
        if not self.cfg.exactly_once:
            await self._commit(tp, next_offset)

        if scores:
            now = time.time()
            for ev in result.scored:
                m.latency.observe(max(0.0, now - origin[id(ev)].timestamp / 1000))
        m.scores_out.inc(len(scores))
        self.scored_total += len(scores)
        for _, why in dead:
            m.dlq.labels(reason=why.split(":")[0][:60]).inc()
        m.late.inc(sum(result.late))
        self._trim_cache(part)
        hw = self.consumer.highwater(tp)
        if hw is not None:
            m.lag.labels(partition=str(tp.partition)).set(max(0, hw - next_offset))

    async def _publish(
        self, scores: list[Any], dead: list[Any], changelog: list[Any]
    ) -> list[tuple[int, int]]:
        """Send scores and dead letters, then (once acknowledged) the changelog records.

        The order matters: a changelog entry means "this batch is done", and recovery
        resumes after it; if it could be acknowledged before the scores, a crash in
        between would lose those scores.
        """
        futures = await self._send(self.cfg.scores_topic, scores)
        futures += await self._send(self.cfg.dlq_topic, dead)
        await asyncio.gather(*futures)
        cl_futures = await self._send(self.cfg.changelog_topic, changelog, count=True)
        return list(await asyncio.gather(*cl_futures))

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        """Commit the group offset; the store's offset is the truth if this fails."""
        assert self.consumer is not None
        try:
            await self.consumer.commit({tp: offset})
        except KafkaError as exc:  # e.g. a rebalance in progress: we seek from the store anyway
            log.warning("offset commit of %s failed (%s); the store holds the position", tp, exc)

    def _load(self, part: _Partition, entity_ids: set[str]) -> None:
        """Bring the batch's records into the engine's cache (one multi-get)."""
        records = part.engine.records
        missing = [e for e in entity_ids if e not in records]
        if not missing:
            return
        for entity_id, data in zip(missing, part.store.get_many(missing), strict=True):
            if data is None:
                continue
            try:
                records[entity_id] = part.engine.codec.decode(data)
            except RecordError as err:
                log.error("quarantined record of entity %r: %s", entity_id, err)
                self.metrics.quarantined.inc()
                part.store.quarantine(entity_id, data)

    def _scores(
        self, tp: TopicPartition, part: _Partition, result: Any, origin: dict[int, Any]
    ) -> list[tuple[bytes, bytes, list[Any], int]]:
        if not result.scored:
            return []
        matrix = np.array(result.rows, dtype=np.float64)
        scored = self.scorer.score(matrix)
        now_ms = int(time.time() * 1000)
        names = self.feature_names
        out = []
        encode = msg.score_encoder.encode
        n_scores = self.cfg.partitions
        for i, ev in enumerate(result.scored):
            rec = origin[id(ev)]
            row = result.rows[i]
            score = float(scored.scores[i])
            message = msg.ScoreMessage(
                event_id=ev.event_id,
                entity_id=ev.entity_id,
                event_ts=ev.ts,
                scored_at=now_ms,
                model=scored.model,
                model_version=scored.version,
                spec_hash=self.spec_hash,
                score=score,
                source=msg.Source(tp.topic, tp.partition, rec.offset),
                late=result.late[i],
                features=dict(zip(names, row, strict=True)) if self.cfg.include_features else None,
                **scored.extra(i),
            )
            part.last[ev.entity_id] = (score, ev.event_id, row)
            out.append((rec.key, encode(message), [], partition_for(rec.key, n_scores)))
        return out

    def _dead_letter(self, tp: TopicPartition, rec: Any, reason: str) -> tuple[Any, ...]:
        key = rec.key
        partition = partition_for(key, self.cfg.partitions) if key else tp.partition
        headers = [
            (msg.DLQ_REASON, reason.encode()),
            (msg.DLQ_SOURCE, f"{tp.topic}/{tp.partition}/{rec.offset}".encode()),
        ]
        return (key, rec.value if rec.value is not None else b"", headers, partition)

    async def _send(
        self, topic: str, messages: Iterable[tuple[Any, bytes, list[Any], int]], count: bool = False
    ) -> list[Any]:
        """Append messages to per-partition producer batches; futures of the sends."""
        assert self.producer is not None
        producer = self.producer
        futures: list[Any] = []
        open_batches: dict[int, Any] = {}
        counts: dict[int, int] = {}

        async def flush(p: int) -> None:
            fut = await producer.send_batch(open_batches.pop(p), topic, partition=p)
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
                    raise ValueError(f"message of {len(value)} bytes exceeds the producer batch")
            counts[p] += 1
        for p in list(open_batches):
            await flush(p)
        return futures

    def _trim_cache(self, part: _Partition) -> None:
        records = part.engine.records
        excess = len(records) - self.cfg.max_cached_records
        if excess > 0:  # records are durable now: drop the oldest-loaded
            for eid in list(records)[:excess]:
                del records[eid]

    # --- partitions -------------------------------------------------------------------

    async def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Open stores for new partitions, restore from the changelog, seek."""
        assert self.consumer is not None
        for tp in tps:
            if tp.topic != self.cfg.events_topic or tp.partition in self.parts:
                continue
            store = PartitionStore(self.cfg.data_dir / f"{tp.topic}-{tp.partition}")
            part = _Partition(store, Engine(self.spec), store.changelog_offset())
            resume = await self._restore(tp.partition, part)
            if resume is None:
                resume = store.input_offset()
            if resume is None:  # a new store: start where the group left off, else at the beginning
                resume = (await self.consumer.committed(tp)) or 0
            self.consumer.seek(tp, resume)
            part.position = resume
            self.parts[tp.partition] = part
            log.info("assigned %s-%d, resuming at %s", tp.topic, tp.partition, resume)

    async def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Close the stores of partitions taken away (the batch in flight finishes first)."""
        for tp in tps:
            part = self.parts.pop(tp.partition, None)
            if part is not None and tp.topic == self.cfg.events_topic:
                part.store.close()

    async def _restore(self, partition: int, part: _Partition) -> int | None:
        """Catch the store up with its changelog; the input offset to resume at, if restored."""
        tp = TopicPartition(self.cfg.changelog_topic, partition)
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.cfg.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=16 << 20,
            **self.cfg.kafka,
        )
        await reader.start()
        try:
            reader.assign([tp])
            end = (await reader.end_offsets([tp]))[tp]
            start = part.changelog_next
            if end <= start:
                return None
            reader.seek(tp, start)
            resume = None
            restored = 0
            while True:
                got = await reader.getmany(tp, timeout_ms=1000, max_records=5000)
                msgs = got.get(tp, [])
                if msgs:
                    part.store.commit(((m.key.decode(), m.value) for m in msgs), None, msgs[-1].offset + 1)
                    restored += len(msgs)
                    resume = int(dict(msgs[-1].headers)[msg.CL_BATCH_START])
                position = await reader.position(tp)
                if position >= end:
                    break
            part.changelog_next = end
            self.metrics.restored.inc(restored)
            log.info(
                "restored %d changelog records of partition %d, resuming at %s", restored, partition, resume
            )
            return resume
        finally:
            await reader.stop()

    # --- queries (HTTP) ------------------------------------------------------------------

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        """What the worker knows of an entity, if its partition is assigned here."""
        p = partition_for(entity_id.encode(), self.cfg.partitions)
        part = self.parts.get(p)
        if part is None:
            return None
        record: SupernovaRecord | None = part.engine.records.get(entity_id)
        if record is None:
            data = part.store.get_many([entity_id])[0]
            if data is None:
                return None
            record = part.engine.codec.decode(data)
        last = part.last.get(entity_id)
        return {
            "entity_id": entity_id,
            "partition": p,
            "fixed": {k: str(v) if not isinstance(v, int | float) else v for k, v in record.fixed.items()},
            "repeated_sizes": record.sizes(),
            "lifetime_count": {k: v.get("", [0])[0] for k, v in record.lifetime.items()},
            "duplicates": record.duplicates,
            "features": None if last is None else dict(zip(self.feature_names, last[2], strict=True)),
            "last_score": None if last is None else {"score": last[0], "event_id": last[1]},
        }


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


async def _with_count(fut: Any, n: int) -> tuple[int, int]:
    meta = await fut
    return meta.offset, n


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: BatchWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.worker.lock:  # wait for the batch in flight
            await self.worker.revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.worker.assign(assigned)
