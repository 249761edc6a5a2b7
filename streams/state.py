"""What the worker holds per assigned partition: positions, records in memory, last scores.

The records of a partition live in its RocksDB (``streams/store.py``); those the
recent polls touched are also held in memory, decoded, in a ``PartitionCache``. The
cache is where records are loaded, where changes since the last checkpoint are
noted, and where durable records are dropped, least recently used first, to keep
the worker within ``--cache-mb`` (shared by its partitions). Last scores are kept
for held records only, so nothing per entity outlives its record in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from entities.engine import Engine
from entities.record import RecordError, SupernovaRecord
from streams.cache import DEFAULT_CACHE_MB, MB, RecordCache
from streams.store import PartitionStore

log = logging.getLogger(__name__)


class PartitionCache(RecordCache):
    """The decoded records of one partition held in memory, over its store, within a byte budget.

    ``records`` is the very mapping the partition's ``Engine`` reads and writes (the
    engine creates the records of new entities in it). ``changed`` holds the entities
    whose records changed since the last checkpoint: only those are persisted, and
    they are never dropped; the others leave least recently used first
    (``streams/cache.py``).
    """

    def __init__(self, store: PartitionStore, engine: Engine, budget: int) -> None:
        """The cache of ``engine``'s records, loaded from ``store``, within ``budget`` bytes."""
        super().__init__(
            engine.spec,
            engine.codec,
            store.get_many,
            budget,
            on_corrupt=self._quarantine,
            get_segments=store.get_raw,
        )
        self.store = store
        engine.records = self.records
        self.changed: set[str] = set()
        self._quarantined = 0

    def _quarantine(self, entity_id: str, data: bytes, err: RecordError) -> None:
        log.error("quarantined record of entity %r (it starts afresh): %s", entity_id, err)
        self._quarantined += 1
        self.store.quarantine(entity_id, data)

    def load_counting(self, entity_ids: Iterable[str]) -> int:
        """``load``, and the count of stored records quarantined because they did not decode."""
        before = self._quarantined
        self.load(entity_ids)
        return self._quarantined - before

    def mark_changed(self, entity_ids: set[str]) -> None:
        """Note records changed by a poll: the next checkpoint persists them."""
        self.changed |= entity_ids
        self.note_changed(entity_ids)

    def take_changed(self) -> list[str]:
        """The entities changed since the last call whose records are held; starts noting afresh."""
        records = self.records
        taken = [eid for eid in self.changed if eid in records]
        self.changed.clear()
        return taken

    def evict_durable(self) -> list[str]:
        """Drop least recently used records not changed since the last checkpoint, to the budget.

        Call it only once the changes taken at the last boundary are in the store.
        """
        changed = self.changed
        return self.evict(keep=changed.__contains__)

    def peek(self, entity_id: str) -> SupernovaRecord | None:
        """The entity's record, held or stored, without bringing it into memory (None if neither)."""
        record: SupernovaRecord | None = self.records.get(entity_id)
        if record is None:
            _, data, segments = self.fetch([entity_id])[0]
            if data is not None:
                record = self.codec.decode(data, segments)
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
    cache_bytes: int = DEFAULT_CACHE_MB * MB  # this partition's share of ``--cache-mb``
    # Segment keys a restore swept from the store (``Restored.orphans``): the next
    # checkpoint deletes them from the changelog, so that no later restore copies them.
    orphans: list[bytes] = field(default_factory=list)
    cache: PartitionCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = PartitionCache(self.store, self.engine, self.cache_bytes)

    def evict(self) -> int:
        """Bound memory after a checkpoint: drop durable records beyond the budget, and their last scores."""
        last = self.last
        dropped = self.cache.evict_durable()
        for entity_id in dropped:
            last.pop(entity_id, None)
        return len(dropped)
