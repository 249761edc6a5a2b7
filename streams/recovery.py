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

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from entities.record import SEGMENT_PREFIX
from streams import messages as msg
from streams.changelog_reader import ChangelogReader
from streams.store import PartitionStore

log = logging.getLogger(__name__)


@dataclass
class Restored:
    """Outcome of a restore: messages copied (heads, segments, deletes), where to resume (None: none).

    ``orphans``: the segment keys swept because no head lists them, still on the changelog.
    """

    records: int
    resume: int | None
    changelog_end: int
    orphans: list[bytes] = field(default_factory=list)


async def restore(
    bootstrap: str,
    topic: str,
    partition: int,
    store: PartitionStore,
    kafka: dict[str, Any],
    check: Callable[[Iterable[bytes | None]], None] | None = None,
    listed: Callable[[bytes], list[bytes] | None] | None = None,
) -> Restored:
    """Catch ``store`` up with changelog partition ``partition``.

    ``check`` sees each batch of record bytes (segments left out) before they are stored, and may refuse
    them by raising (streams.layout). ``listed`` (``RecordCodec.listed_segments``): once
    messages were restored, the segments no head lists are deleted (``PartitionStore.sweep_segments``)
    and returned as ``Restored.orphans``, for the next checkpoint to delete from the changelog.
    """
    async with ChangelogReader(bootstrap, kafka) as reader:
        end = await reader.end_offset(topic, partition)
        start = store.changelog_offset()
        if end <= start:
            return Restored(0, None, start)
        log.info("restoring partition %d from %s, offsets %d to %d", partition, topic, start, end)
        resume = None
        restored = 0
        async with contextlib.aclosing(reader.read(topic, partition, start, end)) as chunks:
            async for chunk in chunks:
                if chunk.pairs:
                    if check is not None:  # segments say nothing of their layout: their heads do
                        check(value for key, value in chunk.pairs if not key.startswith(SEGMENT_PREFIX))
                    resume = int(dict(chunk.last_headers)[msg.CL_BATCH_START])
                    restored += len(chunk.pairs)
                # With the offset it reaches, in one write: a restore cut short goes on from there.
                store.commit(store.raw_batch(chunk.pairs), None, chunk.next_offset)
        store.commit((), None, end)
        swept: list[bytes] = []
        if restored:
            log.info("restored %d changelog messages of partition %d from the changelog", restored, partition)
            swept = store.sweep_segments(listed) if listed is not None else []
            if swept:
                log.warning(
                    "partition %d: deleted %d segments no record lists (a checkpoint cut short by a crash)",
                    partition,
                    len(swept),
                )
        return Restored(restored, resume, end, swept)
