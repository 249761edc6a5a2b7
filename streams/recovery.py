"""Restore a partition's records from its changelog when the local database is missing or behind.

Every checkpoint writes what changed in its records (heads and segments, under the
keys they have in RocksDB; null values for deleted segments) to the compacted
changelog with two headers: the input offsets the checkpoint spans. Restoring copies
the key/values into the store, a null deleting the key. After reading the changelog to
its end, the partition resumes at the *start* of the last checkpoint it logged:
if that checkpoint was only partly logged, its events are applied again, and the
records that already hold them ignore them by event id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import messages as msg
from streams.store import PartitionStore

log = logging.getLogger(__name__)


@dataclass
class Restored:
    """Outcome of a restore: messages copied (heads, segments, deletes), where to resume (None: none)."""

    records: int
    resume: int | None
    changelog_end: int


async def restore(
    bootstrap: str,
    topic: str,
    partition: int,
    store: PartitionStore,
    kafka: dict[str, Any],
    check: Callable[[Iterable[bytes]], None] | None = None,
) -> Restored:
    """Catch ``store`` up with changelog partition ``partition``.

    ``check`` sees each batch of record bytes before they are stored, and may refuse
    them by raising (streams.layout).
    """
    tp = TopicPartition(topic, partition)
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
        **kafka,
    )
    await reader.start()
    try:
        reader.assign([tp])
        end = (await reader.end_offsets([tp]))[tp]
        start = store.changelog_offset()
        if end <= start:
            return Restored(0, None, start)
        log.info("restoring partition %d from %s, offsets %d to %d", partition, topic, start, end)
        reader.seek(tp, start)
        resume = None
        restored = 0
        while await reader.position(tp) < end:
            got = await reader.getmany(tp, timeout_ms=1000, max_records=5000)
            records = got.get(tp, [])
            if records:
                if check is not None:
                    check(r.value for r in records)
                pairs = ((r.key, r.value) for r in records)
                store.commit(pairs, None, records[-1].offset + 1)
                restored += len(records)
                resume = int(dict(records[-1].headers)[msg.CL_BATCH_START])
        store.commit((), None, end)
        if restored:
            log.info("restored %d changelog messages of partition %d from the changelog", restored, partition)
        return Restored(restored, resume, end)
    finally:
        await reader.stop()
