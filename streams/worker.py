"""The hot path: a batch loop from the events topic to the scores topic.

Per poll (up to ``max_batch`` messages over all assigned partitions): decode every
message with msgspec, load the records the poll touches (one multi-get per
partition), run ``Engine.process`` (the same call as replay), one LightGBM predict
per scored event type for the whole poll (each type has its own model), and send
the scores and dead letters as producer batches. No per-event await, no per-event
RocksDB write, no per-event changelog message.

Every ``commit_interval`` (5 s; 0.1 s in exactly-once mode) the worker checkpoints:
it notes the records changed since the last checkpoint and encodes them a little per
loop iteration (a tenth of the time the iteration took, and idle time), so that no
poll waits for all of them (work in bursts is what makes latency tails at steady
load). A noted record that a poll is about to change first gets copied
(``RecordCodec.snapshot``); the others are encoded as they are, since they still hold
the boundary's state.
Then, as a background task, it waits until the scores sent so far are acknowledged,
writes the records once to the compacted changelog, then one RocksDB ``WriteBatch``
per partition with those records *and* the input offset they cover, then commits
the consumer offsets. In exactly-once mode the span between checkpoints is one Kafka
transaction (scores, dead letters, changelog and offsets), persisted before the next
poll.

After a crash the worker resumes at the last checkpoint (or, from the changelog,
at the start of the last checkpoint it logged) and applies the events since then
again: scores of those events are sent again (at-least-once), while records never
hold an event twice (event-id dedupe).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from rocksdict import WriteBatch

from entities.engine import BatchResult, Engine, feature_matrix
from entities.events import Event, EventCodec, EventError
from entities.record import RecordCodec, RecordError, SupernovaRecord
from entities.spec import Spec
from models.scorer import Scorer
from streams import messages as msg
from streams.kafka_io import DEFAULT_PARTITIONS, MAX_PRODUCER_BATCH, Message, send_batches
from streams.layout import LayoutCheck, LayoutMismatch
from streams.partitioning import MISROUTED_HINT, Routing
from streams.recovery import Restored, restore
from streams.security import shown_fixed
from streams.store import PartitionStore
from streams.telemetry import WorkerMetrics
from streams.topics import METADATA_MAX_AGE_MS, TopicError, check_topics, partitions_changed_line

log = logging.getLogger(__name__)

# A checkpoint's records are encoded a little per loop iteration: for a tenth of the
# time the iteration's poll took, at least ENCODE_MIN_S. While some are left, an idle
# poll waits at most ENCODE_IDLE_POLL_MS, so idle time goes to encoding.
ENCODE_SHARE = 0.1
ENCODE_MIN_S = 0.0005
ENCODE_IDLE_POLL_MS = 5
PARTITIONS_CHECK_S = 1.0  # how often the loop compares the events topic's partition count


@dataclass
class WorkerConfig:
    """Everything the operator chooses; topic names follow Kafka Streams habits."""

    bootstrap: str = "127.0.0.1:9092"
    app_id: str = "supernova"
    data_dir: Path = Path("data")
    events_topic: str = "events"
    scores_topic: str = "scores"
    dlq_topic: str = "events.dlq"
    partitions: int = DEFAULT_PARTITIONS  # of the topics it creates (the events topic's count wins)
    create_topics: bool = True  # create missing topics at start (else: stop, naming them)
    max_batch: int = 5000
    poll_timeout_ms: int = 100
    # Between checkpoints. At-least-once: longer means fewer rewrites of the same hot
    # records (each checkpoint writes every changed record whole to the changelog and
    # RocksDB) and more events applied again after a crash. Exactly-once: also the
    # visibility delay of scores (the CLI defaults to 0.1 s there).
    commit_interval_ms: int = 5000
    include_features: bool = True
    expose_pii: bool = False  # show the spec's pii fields in /entities answers
    max_event_bytes: int = 64 * 1024
    max_future_ms: int = 86_400_000  # events further ahead of the wall clock go to the DLQ
    exactly_once: bool = False
    # A crashed worker's open transaction holds back every read_committed reader of
    # its partitions (the new owner's scores included) until the broker aborts it at
    # this timeout: 10 s as Kafka Streams sets for exactly-once, not the client's 60 s.
    transaction_timeout_ms: int = 10_000
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

    @property
    def topic_rights(self) -> dict[str, str]:
        """The right each topic of the worker needs, by topic name (for refusals)."""
        return {
            self.events_topic: "Read on the events topic",
            self.scores_topic: "Write on the scores topic",
            self.dlq_topic: "Write on the DLQ topic",
            self.changelog_topic: "Read and Write on the changelog topic",
        }


@dataclass
class _Partition:
    """State of one assigned input partition."""

    tp: TopicPartition
    store: PartitionStore
    engine: Engine
    position: int = 0  # next input offset to apply
    checkpointed: int = 0  # input offset covered by the store
    changelog_next: int = 0
    dirty: set[str] = field(default_factory=set)
    reseeked: int | None = None
    # entity_id -> event type -> (score, event_id, feature row) of its last score of that type
    last: dict[str, dict[str, tuple[float, str, list[float]]]] = field(default_factory=dict)


@dataclass
class _Span:
    """What one checkpoint persists for one partition: offsets [start, end) and its records."""

    part: _Partition
    start: int
    end: int
    batch: WriteBatch  # the records for RocksDB, filled as they are encoded
    changed: list[tuple[str, bytes]] = field(default_factory=list)  # the same, for the changelog
    # The records to encode: a copy (RecordCodec.snapshot) taken before the loop
    # changed the record again, or None while the live record holds the boundary's state.
    pending: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Checkpoint:
    """A checkpoint's boundary: records still to encode, the sends to wait for."""

    spans: list[_Span]
    in_flight: list[Any]

    def copy_before_change(self, part: _Partition, entity_ids: set[str]) -> None:
        """Copy the records of ``entity_ids`` still to be encoded as at the boundary."""
        for span in self.spans:
            if span.part is part:
                pending, records, snapshot = span.pending, part.engine.records, part.engine.codec.snapshot
                for entity_id in entity_ids:
                    if entity_id in pending and pending[entity_id] is None:
                        pending[entity_id] = snapshot(records[entity_id])

    def encode(self, until: float | None = None) -> bool:
        """Encode records until ``perf_counter()`` passes ``until`` (all if None); True once none are left.

        At least one record per call, so that a checkpoint always moves on.
        """
        clock = time.perf_counter
        for span in self.spans:
            pending, records, codec = span.pending, span.part.engine.records, span.part.engine.codec
            while pending:
                entity_id, snapshot = pending.popitem()
                if snapshot is None:  # unchanged since the boundary
                    data = codec.encode(records[entity_id])
                else:
                    data = codec.encode_snapshot(snapshot)
                span.changed.append((entity_id, data))
                span.batch.put(entity_id.encode(), data)  # copied now: a little at a time, too
                if until is not None and clock() >= until:
                    return not any(span.pending for span in self.spans)
        return True


class BatchWorker:
    """Consumes events, maintains records, scores, produces; one instance per process."""

    def __init__(
        self,
        cfg: WorkerConfig,
        spec: Spec,
        scorers: Scorer | Mapping[str, Scorer],
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """``scorers``: one Scorer per scored event type (a single Scorer for a single-type spec)."""
        self.cfg = cfg
        self.spec = spec
        if isinstance(scorers, Scorer):
            scorers = {t: scorers for t in spec.scored_types}
        self.scorers: dict[str, Scorer] = dict(scorers or {})
        self.metrics = metrics or WorkerMetrics()
        self.codec = EventCodec(spec, max_event_bytes=cfg.max_event_bytes)
        self.spec_hash = spec.hash()
        self.feature_names = {t: spec.feature_names_of(t) for t in spec.scored_types}
        self._features = {t: msg.features_struct(names) for t, names in self.feature_names.items()}
        self._single_type = spec.scored_types[0] if len(spec.scored_types) == 1 else None
        self.parts: dict[int, _Partition] = {}
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.in_flight: list[Any] = []  # delivery futures since the last checkpoint
        self.in_transaction = False
        self._persisting: asyncio.Future[None] | None = None
        self._encoding: _Checkpoint | None = None  # taken, its records not all encoded yet
        self.changelog_producer: AIOKafkaProducer | None = None
        self.last_checkpoint = time.monotonic()
        self._stopping = False
        # Issue 18: the partitioner contract and records of another layout.
        self.routing = Routing(cfg.partitions)
        # Issue 23: outputs are partitioned by key (murmur2) with their topic's own count.
        self.scores_routing = self.dlq_routing = self.routing
        self._partitions_checked = 0.0
        self.layout = LayoutCheck(RecordCodec(spec))
        self.fatal: str | None = None  # why the worker refuses to go on (it stops)

    @property
    def transactional_id(self) -> str:
        """Stable per worker (its data dir): a restarted worker fences its crashed self."""
        digest = hashlib.sha1(str(self.cfg.data_dir.resolve()).encode()).hexdigest()[:10]
        return f"{self.cfg.app_id}-{digest}"

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Check the topics (creating those absent), connect, subscribe.

        A topic that cannot work as it is sets ``fatal`` (the worker stops, saying why).
        """
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            layout = await check_topics(self.cfg, create=self.cfg.create_topics)
        except TopicError as exc:
            self.fatal = str(exc)
            log.error("%s", exc)
            return
        self.routing = Routing(layout.events)
        self.scores_routing = self.routing if layout.scores == layout.events else Routing(layout.scores)
        self.dlq_routing = self.routing if layout.dlq == layout.events else Routing(layout.dlq)
        common = {"bootstrap_servers": self.cfg.bootstrap, **self.cfg.kafka}
        producer = {
            **common,
            "acks": "all",
            "enable_idempotence": True,
            "max_batch_size": MAX_PRODUCER_BATCH,
            "max_request_size": 4 * MAX_PRODUCER_BATCH,
            "request_timeout_ms": 60_000,
        }
        eos = (
            {
                "transactional_id": self.transactional_id,
                "transaction_timeout_ms": self.cfg.transaction_timeout_ms,
            }
            if self.cfg.exactly_once
            else {}
        )
        self.producer = AIOKafkaProducer(**producer, **eos, linger_ms=1)
        await self.producer.start()
        if self.cfg.exactly_once:  # one transaction: scores, changelog and offsets together
            self.changelog_producer = self.producer
        else:  # its own connection: a checkpoint's megabytes never queue ahead of scores
            self.changelog_producer = AIOKafkaProducer(**producer, linger_ms=5)
            await self.changelog_producer.start()
        self.consumer = AIOKafkaConsumer(
            **common,
            group_id=self.cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.cfg.max_batch,
            fetch_max_bytes=8 << 20,
            max_partition_fetch_bytes=2 << 20,
            isolation_level="read_committed",
            # Partitions added to the events topic are seen within this (then the worker stops).
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
        )
        await self.consumer.start()
        self.consumer.subscribe([self.cfg.events_topic], listener=_Rebalance(self))
        tune_gc()

    async def stop(self) -> None:
        """Checkpoint what was processed, close stores and clients."""
        self._stopping = True
        async with self.lock:
            if self.producer is not None and self.consumer is not None:
                try:
                    await self.checkpoint()
                except KafkaError as exc:
                    log.error("final checkpoint failed (%s): the next start replays from the last one", exc)
                await self.consumer.stop()
                await self.producer.stop()
                if self.changelog_producer not in (None, self.producer):
                    await self.changelog_producer.stop()
            for part in self.parts.values():
                part.store.close()
            self.parts.clear()

    # --- the loop -------------------------------------------------------------------

    async def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Consume until told to stop; checkpoint every commit interval."""
        if self.fatal:  # refused at start
            return
        assert self.consumer is not None
        interval = self.cfg.commit_interval_ms / 1000
        while not (self._stopping or should_stop() or self.fatal or self._partitions_changed()):
            batches = await self.consumer.getmany(
                timeout_ms=self.cfg.poll_timeout_ms if self._encoding is None else ENCODE_IDLE_POLL_MS,
                max_records=self.cfg.max_batch,
            )
            started = time.perf_counter()
            # getmany returns without suspending when records are buffered: yield once per
            # poll so the producer's sender and the fetcher run (else scores queue up).
            await asyncio.sleep(0)
            async with self.lock:
                if batches:
                    await self.process(batches)
                    await asyncio.sleep(0)  # the sender ships these scores before checkpoint work
                    # The young generation, collected here instead of wherever the allocator
                    # hits the threshold: after the scores are on their way, and small.
                    gc.collect(0)
                if self._encoding is not None:
                    now = time.perf_counter()
                    self._encode_some(until=now + max(ENCODE_MIN_S, ENCODE_SHARE * (now - started)))
                elif time.monotonic() - self.last_checkpoint >= interval and (
                    self._persisting is None or self._persisting.done()
                ):
                    await self.checkpoint(wait=False)

    def _partitions_changed(self) -> bool:
        """Whether the events topic's partition count differs from the one at start (sets ``fatal``)."""
        now = time.monotonic()
        if now - self._partitions_checked < PARTITIONS_CHECK_S:
            return False
        self._partitions_checked = now
        assert self.consumer is not None
        parts = self.consumer.partitions_for_topic(self.cfg.events_topic)  # cached metadata
        if parts and len(parts) != self.routing.partitions:
            self._refuse_partitions(len(parts))
            return True
        return False

    def _refuse_partitions(self, now: int) -> None:
        if self.fatal is None:
            self.fatal = partitions_changed_line(self.cfg, self.routing.partitions, now)
            log.error("%s", self.fatal)

    def _apply(self, part: _Partition, events: list[Event], origin: dict[int, Any]) -> BatchResult:
        """One partition's decoded events into its records (those not applied before)."""
        touched = {e.entity_id for e in events}
        self._load(part, touched)
        if self._encoding is not None:  # the checkpoint in progress keeps what it needs
            self._encoding.copy_before_change(part, touched)
        return part.engine.process(self._not_yet_applied(part, events, origin))

    def _in_sequence(self, part: _Partition, records: list[Any]) -> list[Any]:
        """The records that continue exactly where this partition left off.

        A fetch issued around a (re)assignment can deliver records from another
        position than the one the partition seeked to; applying them would skip
        events. Such a batch is dropped and the consumer seeked back. A gap that
        persists after that seek is real (transaction markers) and is accepted.
        """
        assert self.consumer is not None
        position = part.position
        if records[-1].offset < position:
            return []
        if records[0].offset < position:
            return [r for r in records if r.offset >= position]
        if records[0].offset > position and part.reseeked != position:
            log.warning("%s: got offset %d, expected %d: seeking back", part.tp, records[0].offset, position)
            self.consumer.seek(part.tp, position)
            part.reseeked = position
            return []
        return records

    async def process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """One poll: decode, update records, score once, send (not yet wait for) the results."""
        m = self.metrics
        rows: list[list[float]] = []
        scored: list[tuple[_Partition, Event, Any, bool]] = []
        dead: list[Message] = []
        for tp, records in batches.items():
            part = self.parts.get(tp.partition)
            if part is None or not records:
                continue
            records = self._in_sequence(part, records)
            if not records:
                continue
            m.events_in.inc(len(records))
            misrouted = self.routing.misrouted(tp.partition, records)
            if misrouted:
                m.misrouted.inc(misrouted)
            m.batch_size.observe(len(records))
            events, origin = self._decode(part, records, dead)
            result = self._apply(part, events, origin)
            for ev, err in result.rejected:
                dead.append(self._dead_letter(part, origin[id(ev)], str(err)))
            m.duplicates.inc(result.duplicates)
            m.late.inc(sum(result.late))
            rows.extend(result.rows)
            scored.extend(
                (part, ev, origin[id(ev)], late) for ev, late in zip(result.scored, result.late, strict=True)
            )
            part.dirty |= result.changed
            part.position = records[-1].offset + 1
        if not scored and not dead:
            return
        await self._begin()
        scores = self._scores(scored, rows)
        assert self.producer is not None
        self.in_flight += await send_batches(self.producer, self.cfg.scores_topic, scores)
        self.in_flight += await send_batches(self.producer, self.cfg.dlq_topic, dead)
        if scored:
            now = time.time()
            m.latency.observe_many(now - np.array([rec.timestamp for _, _, rec, _ in scored]) / 1000.0)
        m.scores_out.inc(len(scores))

    def _decode(
        self, part: _Partition, records: list[Any], dead: list[Message]
    ) -> tuple[list[Event], dict[int, Any]]:
        events: list[Event] = []
        origin: dict[int, Any] = {}
        decode = self.codec.decode
        horizon = int(time.time() * 1000) + self.cfg.max_future_ms
        for rec in records:
            if rec.key is None:
                reason = "null key"
            else:
                try:
                    event = decode(rec.value if rec.value is not None else b"")
                except EventError as err:
                    reason = str(err)
                else:
                    if event.entity_id.encode() != rec.key:
                        reason = f"field 'entity_id': {event.entity_id!r} differs from the message key"
                    elif event.ts > horizon:
                        reason = f"field 'ts': {event.ts} is more than {self.cfg.max_future_ms} ms ahead"
                    else:
                        events.append(event)
                        origin[id(event)] = rec
                        continue
            dead.append(self._dead_letter(part, rec, reason))
        return events, origin

    def _not_yet_applied(self, part: _Partition, events: list[Event], origin: dict[int, Any]) -> list[Event]:
        """Drop events a record already holds (replayed after a crash); stamp the rest's offsets.

        Offsets are exact where event-id dedupe is not: a replayed span can reach
        back further than retention keeps ids.
        """
        records = part.engine.records
        fresh = []
        skipped = 0
        for ev in events:
            offset = origin[id(ev)].offset
            rec = records.get(ev.entity_id)
            if rec is None:
                rec = part.engine.record(ev.entity_id)
            if offset <= rec.offset:
                skipped += 1
                continue
            rec.offset = offset
            fresh.append(ev)
        if skipped:
            self.metrics.replayed.inc(skipped)
        return fresh

    def _load(self, part: _Partition, entity_ids: set[str]) -> None:
        """Bring the records of these entities into the engine's cache (one multi-get)."""
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
                log.error("quarantined record of entity %r (it starts afresh): %s", entity_id, err)
                self.metrics.quarantined.inc()
                part.store.quarantine(entity_id, data)

    def _scores(
        self, scored: list[tuple[_Partition, Event, Any, bool]], rows: list[list[float]]
    ) -> list[Message]:
        """Score messages in the order of ``scored``: one predict per event type, by its model."""
        if not scored:
            return []
        if self._single_type is not None:
            by_type: dict[str, list[int]] = {self._single_type: list(range(len(scored)))}
        else:
            by_type = {}
            for k, (_, ev, _, _) in enumerate(scored):
                try:
                    by_type[ev.type].append(k)
                except KeyError:
                    by_type[ev.type] = [k]
        out: list[Message] = [None] * len(scored)  # type: ignore[list-item]  # all set below
        for event_type, at in by_type.items():
            if len(at) == len(scored):  # one type in this poll: no copies
                self._score_type(event_type, at, scored, rows, out)
            else:
                self._score_type(event_type, at, [scored[k] for k in at], [rows[k] for k in at], out)
        return out

    def _score_type(
        self,
        event_type: str,
        at: list[int],
        scored: list[tuple[_Partition, Event, Any, bool]],
        rows: list[list[float]],
        out: list[Message],
    ) -> None:
        """The messages of one event type's scored events, placed at positions ``at`` of ``out``."""
        result = self.scorers[event_type].score(feature_matrix(rows, len(self.feature_names[event_type])))
        now_ms = int(time.time() * 1000)
        features = self._features[event_type] if self.cfg.include_features else None
        extras = result.has_extra
        encode = msg.score_encoder.encode
        score_message, source = msg.ScoreMessage, msg.Source
        model, version, spec_hash = result.model, result.version, self.spec_hash
        partition = self.scores_routing.partition
        # Positional arguments, no per-event attribute chains: this loop runs per event.
        for i, (k, (part, ev, rec, late), row, score) in enumerate(
            zip(at, scored, rows, result.scores.tolist(), strict=True)
        ):
            tp = part.tp
            message = score_message(
                ev.event_id,
                ev.entity_id,
                event_type,
                ev.ts,
                now_ms,
                model,
                version,
                spec_hash,
                score,
                source(tp.topic, tp.partition, rec.offset),
                late,
                None if features is None else features(*row),  # type: ignore[arg-type]  # same JSON
                **(result.extra(i) if extras else {}),
            )
            last = (score, ev.event_id, row)
            try:
                part.last[ev.entity_id][event_type] = last
            except KeyError:
                part.last[ev.entity_id] = {event_type: last}
            out[k] = (rec.key, encode(message), [], partition(rec.key))

    def _dead_letter(self, part: _Partition, rec: Any, reason: str) -> Message:
        self.metrics.dlq.labels(reason=reason.split(":")[0][:60]).inc()
        headers = [
            (msg.DLQ_REASON, reason.encode()),
            (msg.DLQ_SOURCE, f"{part.tp.topic}/{part.tp.partition}/{rec.offset}".encode()),
        ]
        key = rec.key
        # By key like scores; a message without a key stays with its source partition's number.
        p = (
            self.dlq_routing.partition(key)
            if key is not None
            else part.tp.partition % self.dlq_routing.partitions
        )
        return (key, rec.value if rec.value is not None else b"", headers, p)

    # --- checkpoints ----------------------------------------------------------------

    async def _begin(self) -> None:
        if self.cfg.exactly_once and not self.in_transaction:
            assert self.producer is not None
            await self.producer.begin_transaction()
            self.in_transaction = True

    async def checkpoint(self, wait: bool = True) -> None:
        """Make everything processed so far durable: scores, then changelog, then store, then offsets.

        The boundary is taken here: the changed records are noted, and each is copied
        before the loop changes it again. With ``wait=False`` they are encoded a little
        per loop iteration and the I/O runs as a task while the loop goes on; in
        exactly-once mode, and with ``wait``, all of it happens now (the next
        transaction may only start once this one is committed). Checkpoints never
        overlap: a new one first finishes the previous.
        """
        if self._persisting is not None:
            await self._persisting
            self._persisting = None
        if self._encoding is not None:
            taken, self._encoding = self._encoding, None
            taken.encode()
            await self._persist(taken)
        self.last_checkpoint = time.monotonic()
        gc.collect(1)  # what survived the per-poll collections since the last checkpoint
        boundary = self._take()
        if boundary is None:
            return
        if wait or self.cfg.exactly_once:
            boundary.encode()
            await self._persist(boundary)
        else:
            self._encoding = boundary

    def _take(self) -> _Checkpoint | None:
        """Note the records changed since the last checkpoint; take the pending sends."""
        spans = []
        for part in self.parts.values():
            if part.position <= part.checkpointed:
                continue
            span = _Span(part, part.checkpointed, part.position, part.store.batch())
            records = part.engine.records
            span.pending = dict.fromkeys(eid for eid in part.dirty if eid in records)
            part.dirty.clear()
            spans.append(span)
            part.checkpointed = part.position
        in_flight, self.in_flight = self.in_flight, []
        if not spans and not in_flight and not self.in_transaction:
            return None
        return _Checkpoint(spans, in_flight)

    def _encode_some(self, until: float) -> None:
        """Encode records of the checkpoint in progress until ``until``; persist it once complete."""
        assert self._encoding is not None
        if self._encoding.encode(until=until):
            taken, self._encoding = self._encoding, None
            self._persisting = asyncio.ensure_future(self._persist(taken))

    async def _persist(self, taken: _Checkpoint) -> None:
        assert self.changelog_producer is not None and self.consumer is not None
        started = time.monotonic()
        spans = taken.spans
        await asyncio.gather(*taken.in_flight)  # scores first: a changelog entry means "done"
        await self._begin()
        deliveries = []
        for span in spans:
            p = span.part.tp.partition
            headers = [
                (msg.CL_BATCH_START, str(span.start).encode()),
                (msg.CL_BATCH_END, str(span.end).encode()),
            ]
            cl = [(eid.encode(), data, headers, p) for eid, data in span.changed]
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
            part.store.commit(span.batch, span.end, part.changelog_next)
            self._trim_cache(part)
        if offsets and not self.cfg.exactly_once:
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:  # e.g. mid-rebalance: the stores hold the positions anyway
                log.warning("offset commit failed (%s); the stores hold the positions", exc)
        self.metrics.checkpoint_seconds.observe(time.monotonic() - started)
        for span in spans:
            hw = self.consumer.highwater(span.part.tp)
            if hw is not None:
                self.metrics.lag.labels(partition=str(span.part.tp.partition)).set(max(0, hw - span.end))

    def _trim_cache(self, part: _Partition) -> None:
        records = part.engine.records
        excess = len(records) - self.cfg.max_cached_records
        if excess > 0:  # drop the oldest-loaded records that are durable (not changed since)
            for eid in [e for e in records if e not in part.dirty][:excess]:
                del records[eid]

    # --- partitions -------------------------------------------------------------------

    async def assign(self, tps: Iterable[TopicPartition]) -> None:
        """Open stores for new partitions, restore from the changelog, seek.

        A partition beyond the count at start means partitions were added to the events
        topic: nothing is opened and the worker stops (``fatal``).
        """
        assert self.consumer is not None
        tps = list(tps)
        beyond = [tp.partition for tp in tps if tp.topic == self.cfg.events_topic]
        if beyond and max(beyond) >= self.routing.partitions:
            parts = self.consumer.partitions_for_topic(self.cfg.events_topic) or ()
            self._refuse_partitions(max(len(parts), max(beyond) + 1))
            return
        for tp in tps:
            if tp.topic != self.cfg.events_topic or tp.partition in self.parts:
                continue
            store = PartitionStore(self.cfg.data_dir / f"{tp.topic}-{tp.partition}")
            try:
                restored = await self._restore(tp, store)
            except LayoutMismatch as exc:
                store.close()
                self.fatal = str(exc)
                log.error("%s", exc)
                return
            self.metrics.restored.inc(restored.records)
            resume = restored.resume if restored.resume is not None else store.input_offset()
            if resume is None:  # a new store: start where the group left off, else at the beginning
                resume = (await self.consumer.committed(tp)) or 0
            self.consumer.seek(tp, resume)
            part = _Partition(tp, store, Engine(self.spec), resume, resume, restored.changelog_end)
            self.parts[tp.partition] = part
            log.info("assigned %s-%d, resuming at %d", tp.topic, tp.partition, resume)

    async def _restore(self, tp: TopicPartition, store: PartitionStore) -> Restored:
        """Restore the partition from the changelog; LayoutMismatch for records of another layout."""
        where = f"partition {tp.partition} of {self.cfg.changelog_topic}"
        restored = await restore(
            self.cfg.bootstrap,
            self.cfg.changelog_topic,
            tp.partition,
            store,
            self.cfg.kafka,
            check=lambda records: self.layout.check(records, where),
        )
        self.layout.check(store.some_records(8), f"the store {store.path}")
        return restored

    async def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Checkpoint and close the partitions taken away."""
        parts = [self.parts[tp.partition] for tp in tps if tp.partition in self.parts]
        if parts and self.producer is not None:
            try:  # all partitions: in exactly-once mode the open transaction spans them all
                await self.checkpoint()
            except KafkaError as exc:
                log.error("checkpoint on revoke failed (%s): the next owner replays from the last one", exc)
        for part in parts:
            del self.parts[part.tp.partition]
            part.store.close()

    # --- queries (HTTP) ------------------------------------------------------------------

    def entity(self, entity_id: str) -> dict[str, Any] | None:
        """What the worker knows of an entity: in the partition its key hashes to, else any held here.

        An entity found elsewhere arrived there: its producer partitions differently.
        """
        p = self.routing.partition(entity_id.encode())
        found = self._held(entity_id, p)
        if found is None:
            return None
        part, record = found
        last = part.last.get(entity_id, {})
        where: dict[str, Any] = {"partition": part.tp.partition}
        if part.tp.partition != p:
            where["hashed_partition"] = p
            where["misrouted"] = (
                f"its events arrived on partition {part.tp.partition}, not {p}: {MISROUTED_HINT}"
            )
        return {
            "entity_id": entity_id,
            **where,
            **shown_fixed(record.fixed, set() if self.cfg.expose_pii else self.spec.fixed.pii),
            "repeated_sizes": record.sizes(),
            "lifetime_count": {k: v.get("", [0])[0] for k, v in record.lifetime.items()},
            "duplicates": record.duplicates,
            # Per scored event type: the features and score of the entity's last event of that type.
            "features": {t: dict(zip(self.feature_names[t], v[2], strict=True)) for t, v in last.items()},
            "last_score": {t: {"score": v[0], "event_id": v[1]} for t, v in last.items()},
        }

    def _held(self, entity_id: str, hashed: int) -> tuple[_Partition, SupernovaRecord] | None:
        """The partition (the hashed one first) and record of an entity held here."""
        order = sorted(self.parts, key=lambda q: q != hashed)
        for q in order:
            part = self.parts[q]
            record: SupernovaRecord | None = part.engine.records.get(entity_id)
            if record is None:
                data = part.store.get_many([entity_id])[0]
                if data is None:
                    continue
                record = part.engine.codec.decode(data)
            return part, record
        return None

    def not_found(self, entity_id: str) -> str:
        """Why ``entity`` found nothing: which partition would hold the entity, and whether it is here."""
        p = self.routing.partition(entity_id.encode())
        held = (
            "held by this worker, which has no record of it" if p in self.parts else "held by another worker"
        )
        return f"entity {entity_id!r} not found on this worker: its key hashes to partition {p}, {held}"


def tune_gc() -> None:
    """Freeze what is alive now and collect the young generation less often.

    Long-lived objects (spec, model, codecs) need no cyclic GC, and records are plain
    acyclic data: with the default thresholds the collector rescans them all the time.
    The batch loop collects the young generation itself once per poll, after the
    scores are on their way: left to the threshold, a collection comes every few
    seconds in steady state (old objects freed offset the new ones in the count) and
    scans all that is new at once, a pause in the middle of a poll.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: BatchWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.worker.lock:  # wait for the poll in flight
            await self.worker.revoke(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.worker.assign(assigned)
