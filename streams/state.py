"""What the worker holds per assigned partition: positions, records in memory, last scores.

The records of a partition live in its RocksDB (``streams/store.py``); those the
recent polls touched are also held in memory, decoded, in a ``RecordCache``. The
cache is where records are loaded, where changes since the last checkpoint are
noted, and where durable records are dropped to bound memory: a bound in bytes
instead of a count goes in ``RecordCache`` alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from entities.engine import Engine
from entities.record import RecordError, SupernovaRecord
from streams.store import PartitionStore

log = logging.getLogger(__name__)


class RecordCache:
    """The decoded records of one partition held in memory, over its store.

    ``records`` is the very mapping the partition's ``Engine`` reads and writes (the
    engine creates the records of new entities in it). ``changed`` holds the entities
    whose records changed since the last checkpoint: only those are persisted, and
    they are never dropped.
    """

    def __init__(self, store: PartitionStore, engine: Engine) -> None:
        """The cache of ``engine``'s records, loaded from ``store``."""
        self.store = store
        self.codec = engine.codec
        self.records = engine.records
        self.changed: set[str] = set()

    def load(self, entity_ids: Iterable[str]) -> int:
        """Bring the stored records of these entities into memory (one multi-get); the count quarantined.

        A stored record that does not decode is moved aside (``PartitionStore.quarantine``)
        and its entity starts afresh.
        """
        records = self.records
        missing = [e for e in entity_ids if e not in records]
        if not missing:
            return 0
        quarantined = 0
        for entity_id, data in zip(missing, self.store.get_many(missing), strict=True):
            if data is None:
                continue
            try:
                records[entity_id] = self.codec.decode(data)
            except RecordError as err:
                log.error("quarantined record of entity %r (it starts afresh): %s", entity_id, err)
                quarantined += 1
                self.store.quarantine(entity_id, data)
        return quarantined

    def mark_changed(self, entity_ids: set[str]) -> None:
        """Note records changed by a poll: the next checkpoint persists them."""
        self.changed |= entity_ids

    def take_changed(self) -> list[str]:
        """The entities changed since the last call whose records are held; starts noting afresh."""
        records = self.records
        taken = [eid for eid in self.changed if eid in records]
        self.changed.clear()
        return taken

    def evict(self, keep: int) -> None:
        """Drop the oldest-loaded records not changed since the last checkpoint, down to ``keep`` held.

        Call it only once the changes taken at the last boundary are in the store.
        """
        records = self.records
        excess = len(records) - keep
        if excess > 0:
            changed = self.changed
            for eid in [e for e in records if e not in changed][:excess]:
                del records[eid]

    def peek(self, entity_id: str) -> SupernovaRecord | None:
        """The entity's record, held or stored, without bringing it into memory (None if neither)."""
        record: SupernovaRecord | None = self.records.get(entity_id)
        if record is None:
            data = self.store.get_many([entity_id])[0]
            if data is not None:
                record = self.codec.decode(data)
        return record


@dataclass
class Partition:
    """State of one assigned input partition."""

    tp: TopicPartition
    store: PartitionStore
    engine: Engine
    position: int = 0  # next input offset to apply
    checkpointed: int = 0  # input offset covered by the store
    changelog_next: int = 0
    reseeked: int | None = None  # the position the consumer was last seeked back to
    # entity_id -> event type -> (score, event_id, feature row) of its last score of that type
    last: dict[str, dict[str, tuple[float, str, list[float]]]] = field(default_factory=dict)
    cache: RecordCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = RecordCache(self.store, self.engine)
