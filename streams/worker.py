"""The hot path: a batch loop from the events topic to the scores topic.

Per poll (up to ``max_batch`` messages over all assigned partitions) the loop runs
named parts, each in its own module:

- ``streams/sequencing.py``: the messages that continue each partition's sequence,
  decoded into events (invalid ones become dead letters);
- ``streams/apply.py``: the partition's records loaded (one multi-get) and the events
  not applied before run through ``Engine.process``, the same call as replay;
- ``streams/emit.py``: one predict per scored event type for the whole poll, then the
  score messages and dead letters sent as producer batches;
- ``streams/checkpoint.py``: every ``commit_interval``, the changed records made
  durable (changelog, then RocksDB with the offsets they cover, then the consumer
  offsets), encoded a little per loop iteration and persisted beside the loop;
- ``streams/state.py``: per partition, its positions, its records in memory over
  its store (``RecordCache``) and the last scores.

No per-event await, no per-event RocksDB write, no per-event changelog message.
This module holds the loop, the clients and partition assignment; ``streams/lookup.py``
answers the HTTP queries about one entity.

After a crash the worker resumes at the last checkpoint (or, from the changelog,
at the start of the last checkpoint it logged) and applies the events since then
again: scores of those events are sent again (at-least-once), while records never
hold an event twice (input offsets, then event-id dedupe).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from entities.engine import Engine
from entities.events import EventCodec, LateEventError
from entities.record import RecordCodec
from entities.spec import Spec
from models.scorer import Scorer
from streams.apply import apply
from streams.cache import DEFAULT_CACHE_MB, MB
from streams.checkpoint import Checkpointer
from streams.emit import Emitter, Scored
from streams.kafka_io import DEFAULT_PARTITIONS, MAX_PRODUCER_BATCH, Message
from streams.layout import LayoutCheck, LayoutMismatch
from streams.partitioning import Routing
from streams.recovery import Restored, restore
from streams.sequencing import decode, in_sequence
from streams.state import Partition
from streams.store import PartitionStore
from streams.telemetry import WorkerMetrics
from streams.topics import METADATA_MAX_AGE_MS, TopicError, check_topics, partitions_changed_line

log = logging.getLogger(__name__)

# A checkpoint's records are encoded a little per loop iteration: for a tenth of the
# time the iteration's poll took, at least ENCODE_MIN_S. While some are left, an idle
# poll waits at most ENCODE_IDLE_POLL_MS, so idle time goes to encoding. Past
# CACHE_SLACK, all that is left is encoded at once (``BatchWorker._encode_until``).
ENCODE_SHARE = 0.1
ENCODE_MIN_S = 0.0005
ENCODE_IDLE_POLL_MS = 5
CACHE_SLACK = 1.25  # records in memory may exceed --cache-mb by this factor before an early checkpoint
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
    replication_factor: int = 1  # of the topics it creates (a single broker here; 3 on a real cluster)
    max_batch: int = 5000
    poll_timeout_ms: int = 100
    # Between checkpoints. At-least-once: longer means fewer rewrites of the same hot
    # records (each checkpoint writes every changed record's head and newest segments
    # to the changelog and RocksDB) and more events applied again after a crash. Exactly-once: also the
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
    cache_mb: float = DEFAULT_CACHE_MB  # records held in memory, all partitions together (estimated)
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
        self.parts: dict[int, Partition] = {}
        self.lock = asyncio.Lock()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.changelog_producer: AIOKafkaProducer | None = None
        self._stopping = False
        # Issue 18: the partitioner contract and records of another layout.
        self.routing = Routing(cfg.partitions)
        self._partitions_checked = 0.0
        self.record_codec = RecordCodec(spec)  # the stored format: layout checks, segment sweeps
        self.layout = LayoutCheck(self.record_codec)
        self.fatal: str | None = None  # why the worker refuses to go on (it stops)
        # Issue 23: outputs are partitioned by key (murmur2) with their topic's own count.
        self.emitter = Emitter(
            spec,
            self.scorers,
            self.routing,
            self.metrics,
            cfg.scores_topic,
            cfg.dlq_topic,
            include_features=cfg.include_features,
            expose_pii=cfg.expose_pii,
        )
        self.checkpoints = Checkpointer(cfg, self.parts, self.metrics)

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
        emitter = self.emitter
        emitter.scores_routing = self.routing if layout.scores == layout.events else Routing(layout.scores)
        emitter.dlq_routing = self.routing if layout.dlq == layout.events else Routing(layout.dlq)
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
        self.checkpoints.connect(self.producer, self.changelog_producer, self.consumer)
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
        checkpoints = self.checkpoints
        while not (self._stopping or should_stop() or self.fatal or self._partitions_changed()):
            batches = await self.consumer.getmany(
                timeout_ms=self.cfg.poll_timeout_ms if checkpoints.encoding is None else ENCODE_IDLE_POLL_MS,
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
                if checkpoints.encoding is not None:
                    checkpoints.encode_some(until=self._encode_until(started))
                elif checkpoints.due(interval) or (self._cache_full() and checkpoints.due(0)):
                    await self.checkpoint(wait=False)

    def _encode_until(self, started: float) -> float:
        """Until when this iteration encodes the checkpoint in progress (``perf_counter`` time).

        A tenth of the time the poll took; over the cache budget, to the end. Records
        changed since the last checkpoint cannot leave the cache, and polls over many
        entities change them faster than a tenth of the loop's time encodes them: on a
        million entities the cache grew without bound (memory before latency here).
        """
        if self._cache_full():
            return math.inf
        now = time.perf_counter()
        return now + max(ENCODE_MIN_S, ENCODE_SHARE * (now - started))

    def _cache_full(self) -> bool:
        """Records in memory past ``--cache-mb`` by a quarter: checkpoint early, so that they may leave.

        Only durable records leave the cache; between checkpoints every record a poll
        changed stays, so a burst over many entities would otherwise outgrow the budget.
        """
        return sum(p.cache.bytes for p in self.parts.values()) > CACHE_SLACK * self.cfg.cache_mb * MB

    async def process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """One poll: decode, update records, score once, send (not yet wait for) the results."""
        assert self.consumer is not None
        m = self.metrics
        rows: list[list[float]] = []
        scored: list[Scored] = []
        dead: list[Message] = []
        dead_letter = self.emitter.dead_letter
        encoding = self.checkpoints.encoding
        for tp, messages in batches.items():
            part = self.parts.get(tp.partition)
            if part is None or not messages:
                continue
            messages = in_sequence(self.consumer, part, messages)
            if not messages:
                continue
            m.events_in.inc(len(messages))
            misrouted = self.routing.misrouted(tp.partition, messages)
            if misrouted:
                m.misrouted.inc(misrouted)
            m.batch_size.observe(len(messages))
            events, origin = decode(self.codec, self.cfg.max_future_ms, part, messages, dead_letter, dead)
            result = apply(part, events, origin, encoding, m)
            for ev, err in result.rejected:
                label = "late" if isinstance(err, LateEventError) else None  # its own metric label
                dead.append(dead_letter(part, origin[id(ev)], str(err), label))
            m.duplicates.inc(result.duplicates)
            m.late.inc(sum(result.late))
            rows.extend(result.rows)
            scored.extend(
                (part, ev, origin[id(ev)], late) for ev, late in zip(result.scored, result.late, strict=True)
            )
            part.position = messages[-1].offset + 1
        if not scored and not dead:
            return
        await self.checkpoints.begin()
        assert self.producer is not None
        await self.emitter.send(self.producer, scored, rows, dead, self.checkpoints.in_flight)

    async def checkpoint(self, wait: bool = True) -> None:
        """Make everything processed so far durable (``Checkpointer.checkpoint``).

        With ``wait=False`` the records are encoded and persisted beside the loop.
        """
        await self.checkpoints.checkpoint(wait)

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
            part = Partition(tp, store, Engine(self.spec), resume, resume, restored.changelog_end)
            part.orphans = restored.orphans
            self.parts[tp.partition] = part
            log.info("assigned %s-%d, resuming at %d", tp.topic, tp.partition, resume)
        self._share_cache()

    def _share_cache(self) -> None:
        """Split ``--cache-mb`` evenly over the partitions held."""
        for part in self.parts.values():
            part.cache.budget = int(self.cfg.cache_mb * MB) // max(1, len(self.parts))

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
            listed=self.record_codec.listed_segments,
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
        self._share_cache()


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
