"""``supernova bootstrap``: history files -> records -> the worker's changelog, so workers start warm.

The history (one or more files, merged by ts as ``replay --warmup`` merges them) goes
through the same core as replay and the worker. Each resulting record is written (its
segments, then its head, as a checkpoint writes them: ``RecordCodec.encode_parts``) to
``<app>-records-changelog`` on the partition its key hashes to (murmur2, the
partition live events of that entity arrive on: streams.partitioning), with the
changelog headers a worker's restore reads. A worker started afterwards, with any
data dir and in any number of processes, restores the records and consumes the
events topic from the group's committed offsets, or from the beginning.

What a restored partition resumes at: restore resumes at the ``batch_start`` header of
the last changelog message it read. Bootstrap writes there, per partition, the
group's committed offset (only with ``--force``; otherwise there is none) or 0: the
live events topic from where the group is, else from its beginning. The records'
``offset`` field stays -1 (never fed from the events topic), so no live event is
skipped as "already applied". The history and the live topic must therefore not
overlap: a live event already in the history is applied twice unless its event id
is still within retention (then it is a duplicate and ignored).

It refuses, unless ``--force``, to write into a changelog that holds messages (a
worker or an earlier bootstrap wrote it) or for an app whose consumer group has
committed offsets (its workers already consumed live events): both mean that the
records would be mixed with others'. A changelog whose partition count differs
from the events topic's is refused even with ``--force``: it cannot work.

Memory: the records of every entity, as replay holds them; encoded records are
written a chunk at a time and each record is dropped once written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError

from entities.engine import Engine
from entities.events import Event, EventCodec
from entities.spec import Spec, load_spec
from streams import messages as msg
from streams.adapters import AdapterRef, require_adapter, resolve_adapter
from streams.history import History
from streams.kafka_io import (
    CHANGELOG_CONFIG,
    DEFAULT_PARTITIONS,
    MAX_PRODUCER_BATCH,
    ensure_topics,
    partition_for,
    send_batches,
)
from streams.replay import BATCH, _gc_tuned
from streams.sources import is_csv
from streams.worker import WorkerConfig

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0
CHUNK = 5_000  # records encoded and handed to the producer at a time
MAX_PENDING_SENDS = 64  # producer batches in flight before waiting for their acks
COORDINATOR_RETRIES = 60  # half-second waits for the group coordinator of a new broker


class BootstrapRefused(Exception):  # noqa: N818 - reads as what happened
    """Bootstrap would mix its records with others' (or cannot work): the one-line reason."""


@dataclass
class BootstrapConfig:
    """Where the records go: the workers' own configuration (its app id names changelog and group)."""

    worker: WorkerConfig
    partitions: int | None = None  # of the events topic if it must be created; else it must match
    force: bool = False


@dataclass
class BootstrapSummary:
    """What one bootstrap did."""

    events: int = 0
    rejected: int = 0
    entities: int = 0
    records: int = 0
    bytes: int = 0
    partitions: int = 0
    replay_seconds: float = 0.0
    seconds: float = 0.0

    def line(self) -> str:
        """The one-line summary printed at the end."""
        return (
            f"bootstrapped {self.entities:,} entities from {self.events:,} events "
            f"(rejected {self.rejected:,}): {self.records:,} records, {self.bytes / 1e6:,.1f} MB "
            f"on {self.partitions} changelog partitions; {self.seconds:.1f} s "
            f"({self.replay_seconds:.1f} s replaying)"
        )


@dataclass
class _Plan:
    partitions: int
    resume: dict[int, int]  # per partition: the input offset workers resume at


def bootstrap(
    spec_path: Path, inputs: Sequence[Path], cfg: BootstrapConfig, adapter: AdapterRef = None
) -> BootstrapSummary:
    """Check the target, replay the history, write the records; return the summary.

    ``adapter`` maps CSV rows to events (a class or ``FILE.py[:NAME]``), as for replay.
    """
    started = time.perf_counter()
    spec = load_spec(spec_path)
    adapter_type = resolve_adapter(adapter)
    for path in inputs:
        if is_csv(path):
            require_adapter(adapter_type, path)
    plan = asyncio.run(_prepare(cfg))  # refuse before a long replay, not after
    summary = BootstrapSummary(partitions=plan.partitions)
    engine = _replay(spec, adapter_type, inputs, summary)
    summary.replay_seconds = time.perf_counter() - started
    summary.entities = len(engine.records)
    asyncio.run(_write(cfg, plan, engine, summary))
    summary.seconds = time.perf_counter() - started
    return summary


def _replay(spec: Spec, adapter: type | None, inputs: Sequence[Path], summary: BootstrapSummary) -> Engine:
    """The records after the whole history (same core and merge as replay)."""
    history = History.of(inputs, EventCodec(spec), adapter)

    def run() -> Engine:
        engine = Engine(spec)
        summary.events = summary.rejected = 0
        pending: list[Event] = []
        last_log = time.perf_counter()
        for block in history.blocks():
            if block.rejected:
                summary.rejected += block.rejected
                pending += [e for e in block.items if type(e) is Event]
            else:
                pending += block.items  # type: ignore[arg-type]  # no Rejected in it
            if len(pending) < BATCH:
                continue
            summary.rejected += len(engine.process(pending).rejected)
            summary.events += len(pending)
            pending = []
            if time.perf_counter() - last_log >= PROGRESS_EVERY_S:
                last_log = time.perf_counter()
                log.info(
                    "replayed %s events, %s entities so far",
                    f"{summary.events:,}",
                    f"{len(engine.records):,}",
                )
        if pending:
            summary.rejected += len(engine.process(pending).rejected)
            summary.events += len(pending)
        return engine

    with _gc_tuned():
        return history.retry_unsorted(run)


async def _prepare(cfg: BootstrapConfig) -> _Plan:
    """Refuse what would mix records; create the events topic and changelog if absent."""
    w = cfg.worker
    admin = AIOKafkaAdminClient(bootstrap_servers=w.bootstrap, **w.kafka)
    await admin.start()
    try:
        topics = set(await admin.list_topics())
        counts = await _partition_counts(
            admin, [t for t in (w.events_topic, w.changelog_topic) if t in topics]
        )
        committed = {
            tp.partition: meta.offset
            for tp, meta in (await _group_offsets(admin, w.group_id)).items()
            if tp.topic == w.events_topic and meta.offset >= 0
        }
    finally:
        await admin.close()
    n = counts.get(w.events_topic) or cfg.partitions or DEFAULT_PARTITIONS
    if cfg.partitions is not None and n != cfg.partitions:
        raise BootstrapRefused(
            f"--partitions {cfg.partitions}, but the events topic {w.events_topic} has {n} partitions: "
            "records must be partitioned like the events"
        )
    changelog_n = counts.get(w.changelog_topic)
    if changelog_n is not None and changelog_n != n:
        raise BootstrapRefused(
            f"the changelog {w.changelog_topic} has {changelog_n} partitions and the events topic "
            f"{w.events_topic} {n}: workers could not restore every record; use a new --app-id"
        )
    if changelog_n is not None and not cfg.force:
        held = await _messages(cfg, w.changelog_topic)
        if held:
            raise BootstrapRefused(
                f"the changelog {w.changelog_topic} already holds {held:,} messages (record heads and "
                "segments, from a worker or an earlier bootstrap): use a new --app-id, or --force to "
                "write over them"
            )
    if committed and not cfg.force:
        raise BootstrapRefused(
            f"the consumer group {w.group_id} has committed offsets on {w.events_topic} "
            f"(partitions {sorted(committed)}): its workers already consumed live events; use a new "
            "--app-id, or --force (workers then resume at those offsets)"
        )
    await ensure_topics(
        w.bootstrap,
        [
            NewTopic(w.events_topic, n, 1),
            NewTopic(w.changelog_topic, n, 1, topic_configs=CHANGELOG_CONFIG),
        ],
        w.kafka,
    )
    return _Plan(n, {p: committed.get(p, 0) for p in range(n)})


async def _group_offsets(admin: AIOKafkaAdminClient, group_id: str) -> dict[TopicPartition, Any]:
    """The group's committed offsets; a new broker has no group coordinator for a few seconds."""
    for _ in range(COORDINATOR_RETRIES):
        try:
            return await admin.list_consumer_group_offsets(group_id)
        except GroupCoordinatorNotAvailableError:
            await asyncio.sleep(0.5)
    return await admin.list_consumer_group_offsets(group_id)


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    if not topics:
        return {}
    described = await admin.describe_topics(topics)
    return {t["topic"]: len(t["partitions"]) for t in described}


async def _messages(cfg: BootstrapConfig, topic: str) -> int:
    """Messages a topic holds (end minus beginning offsets, over its partitions)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.worker.bootstrap, enable_auto_commit=False, **cfg.worker.kafka
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not parts:
            await consumer._client.force_metadata_update()  # no public way to refresh metadata
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        end = await consumer.end_offsets(parts)
        begin = await consumer.beginning_offsets(parts)
        return sum(end[tp] - begin[tp] for tp in parts)
    finally:
        await consumer.stop()


async def _write(cfg: BootstrapConfig, plan: _Plan, engine: Engine, summary: BootstrapSummary) -> None:
    """Every record to its partition of the changelog; records are dropped once handed over."""
    producer = AIOKafkaProducer(
        bootstrap_servers=cfg.worker.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=MAX_PRODUCER_BATCH,
        max_request_size=4 * MAX_PRODUCER_BATCH,
        request_timeout_ms=60_000,
        **cfg.worker.kafka,
    )
    await producer.start()
    headers = {
        p: [(msg.CL_BATCH_START, str(offset).encode()), (msg.CL_BATCH_END, str(offset).encode())]
        for p, offset in plan.resume.items()
    }
    records, encode, n = engine.records, engine.codec.encode_parts, plan.partitions
    total = len(records)
    futures: list[Any] = []
    last_log = time.perf_counter()
    try:
        while records:
            chunk = []
            taken = min(CHUNK, len(records))
            for _ in range(taken):
                entity_id, record = records.popitem()
                p = partition_for(entity_id.encode(), n)
                for key, data in encode(record):  # a new record: its segments, then its head
                    chunk.append((key, data, headers[p], p))
                    summary.bytes += len(key) + len(data or b"")
            futures += await send_batches(producer, cfg.worker.changelog_topic, chunk)
            summary.records += taken
            if len(futures) > MAX_PENDING_SENDS:
                await asyncio.gather(*futures)
                futures.clear()
            if time.perf_counter() - last_log >= PROGRESS_EVERY_S:
                last_log = time.perf_counter()
                log.info("wrote %s of %s records", f"{summary.records:,}", f"{total:,}")
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
