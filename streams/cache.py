"""Records in memory, bounded in bytes: the worker's and replay's record cache.

The store (RocksDB) holds every record; the cache holds the records in use, up to a
byte budget (``--cache-mb``). Each call is per batch, never per event: ``load``
moves the batch's entities to the recent end and brings the missing ones in with one
multi-get of their heads and one of the segments those list; ``note_changed``
re-measures the records a batch changed; ``evict`` drops the least recently used
records, skipping those the caller cannot drop yet (the worker: changed since its
last checkpoint) or writing them first (replay).

Sizes are estimates of resident memory: a record costs ``RECORD_BYTES`` plus, per
retained item, ``ITEM_BYTES`` and ``FIELD_BYTES`` per field, and ``TEXT_ID_BYTES``
more while its event ids are kept as text (any id not of 32 hex digits). An item's
columns (``entities.items``: 8 bytes of ts, 16 of event id, 8 per float or text
field) and its prefix sums take ~100 bytes by tracemalloc; the process grows by
more (allocator slack around growing arrays and between the transient objects of
each poll). Calibrated with ``python -m bench.record_bytes`` (RSS growth per record
in a worker-like loop, Sparkov's 32-digit hex ids) on 2026-12-05: 5,832 B for cards
of 2 transactions and 12,575 B for cards of 38.6, fitted as 5,500 + 184 per fraud
transaction. ``make bench-scale`` reports the RSS this gives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from entities.record import RecordCodec, RecordError, SupernovaRecord
from entities.spec import Spec, base_type

log = logging.getLogger(__name__)

MB = 1 << 20
DEFAULT_CACHE_MB = 512  # a worker's records in memory, all its partitions together
DEFAULT_REPLAY_CACHE_MB = 1024  # a replay process's records in memory (0: no bound)
RECORD_BYTES = 5_500  # the record object, its dicts, fixed attributes, lifetime stats, windows
ITEM_BYTES = 144  # ts, event id, prefix sums, allocator slack
# Ids as text: a list slot, an entry counting it (~60 B, measured as above with ids "hex-k")
# and the id's own string, which the decoded event brought (~80 B for 32 characters).
TEXT_ID_BYTES = 140
FIELD_BYTES = {float: 8, int: 36, str: 8}  # a float array; an int list; interned text: a pointer
OTHER_BYTES = 64


def item_bytes(spec: Spec) -> dict[str, int]:
    """Estimated bytes of one retained item, per repeated attribute."""
    return {
        name: ITEM_BYTES + sum(FIELD_BYTES.get(base_type(t), OTHER_BYTES) for t in rep.fields.values())
        for name, rep in spec.repeated.items()
    }


class RecordCache:
    """One partition's records in memory, least recently used first, within ``budget`` bytes."""

    def __init__(
        self,
        spec: Spec,
        codec: RecordCodec,
        get_many: Callable[[list[str]], list[bytes | None]],
        budget: int,
        on_corrupt: Callable[[str, bytes, RecordError], None] | None = None,
        get_segments: Callable[[list[bytes]], list[bytes | None]] | None = None,
    ) -> None:
        self.codec = codec
        self.budget = budget
        self.records: dict[str, SupernovaRecord] = {}  # insertion order = recency
        self.sizes: dict[str, int] = {}
        self.bytes = 0
        self.loads = 0  # records read from the store
        self.evictions = 0
        self._get_many = get_many
        self._get_segments = get_segments
        self._on_corrupt = on_corrupt
        self._item_bytes = list(item_bytes(spec).items())

    def size_of(self, record: SupernovaRecord) -> int:
        """Estimated bytes of a record in memory."""
        items = record.items
        size = RECORD_BYTES
        for name, per_item in self._item_bytes:
            column = items[name]
            size += len(column) * (per_item if column.ids.raw is not None else per_item + TEXT_ID_BYTES)
        return size

    def load(self, entity_ids: Iterable[str]) -> None:
        """Make these entities the most recent; bring the missing ones from the store."""
        records = self.records
        missing = []
        for entity_id in entity_ids:
            rec = records.pop(entity_id, None)
            if rec is None:
                missing.append(entity_id)
            else:
                records[entity_id] = rec
        if not missing:
            return
        for entity_id, data, segments in self.fetch(missing):
            if data is None:
                continue
            try:
                rec = self.codec.decode(data, segments)
            except RecordError as err:
                if self._on_corrupt is None:
                    raise
                self._on_corrupt(entity_id, data, err)
                continue
            records[entity_id] = rec
            size = self.sizes[entity_id] = self.size_of(rec)
            self.bytes += size
            self.loads += 1

    def fetch(self, entity_ids: list[str]) -> list[tuple[str, bytes | None, list[bytes | None]]]:
        """Stored bytes of these entities: head (None if absent) and the segments it lists."""
        heads = self._get_many(entity_ids)
        keys = [self.codec.segment_keys(data) if data is not None else [] for data in heads]
        flat = [k for ks in keys for k in ks]
        values = self._get_segments(flat) if flat and self._get_segments is not None else []
        out = []
        at = 0
        for entity_id, data, ks in zip(entity_ids, heads, keys, strict=True):
            out.append((entity_id, data, values[at : at + len(ks)]))
            at += len(ks)
        return out

    def note_changed(self, entity_ids: Iterable[str]) -> None:
        """Re-measure records a batch changed (or created)."""
        records, sizes = self.records, self.sizes
        for entity_id in entity_ids:
            rec = records.get(entity_id)
            if rec is None:
                continue
            size = self.size_of(rec)
            self.bytes += size - sizes.get(entity_id, 0)
            sizes[entity_id] = size

    def evict(
        self,
        keep: Callable[[str], bool] = lambda entity_id: False,
        write: Callable[[list[tuple[str, SupernovaRecord]]], None] | None = None,
    ) -> list[str]:
        """Drop least recently used records until within budget; return their entity ids.

        ``keep(entity_id)``: records that must stay (not yet durable); ``write``, if
        given, receives every dropped record first (replay spills them to its store).
        """
        if self.bytes <= self.budget:
            return []
        records, sizes = self.records, self.sizes
        dropped: list[str] = []
        excess = self.bytes - self.budget
        for entity_id in records:
            if excess <= 0:
                break
            if keep(entity_id):
                continue
            excess -= sizes.get(entity_id, 0)
            dropped.append(entity_id)
        if write is not None:
            write([(eid, records[eid]) for eid in dropped])
        for entity_id in dropped:
            del records[entity_id]
            self.bytes -= sizes.pop(entity_id, 0)
        self.evictions += len(dropped)
        return dropped

    def drop(self, entity_id: str) -> None:
        """Forget one record (it is re-read from the store when next needed)."""
        if self.records.pop(entity_id, None) is not None:
            self.bytes -= self.sizes.pop(entity_id, 0)

    def stats(self) -> dict[str, Any]:
        """Counts for metrics and logs."""
        return {
            "records": len(self.records),
            "bytes": self.bytes,
            "loads": self.loads,
            "evictions": self.evictions,
        }
