"""Supernova records in RocksDB: one database per input partition, the Quix Streams way.

A batch's changed records and the positions they cover (next input offset, next
changelog offset) are written in one ``WriteBatch``, so the records on disk and
"where we are" never disagree. Raw mode: keys and values are bytes, never pickles.

The write-ahead log is off, as in Kafka Streams: the changelog topic is the durable
copy. After a crash the database reopens at its last flush, a consistent (if older)
state, and ``recovery.restore`` replays the changelog from the offset stored with it.
Without the WAL a checkpoint's write goes to the memtable only, not also to a log on disk.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path
from typing import Any, cast

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from entities.record import SEGMENT_PREFIX, segment_owner, segment_prefix

log = logging.getLogger(__name__)

# Metadata and segment keys (entities/record.py) start with a NUL byte: record heads
# are stored under their entity ids, non-empty text, never NUL-led.
_INPUT_OFFSET = b"\x00input_offset"
_CHANGELOG_OFFSET = b"\x00changelog_offset"
_QUARANTINE = b"\x00quarantine\x00"
WRITE_BUFFER_BYTES = 8 << 20


class PartitionStore:
    """The RocksDB of one input partition: records by entity id plus positions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        # Every checkpoint rewrites the heads and newest segments of hot records: 64 MB
        # memtables (the default) would hold many copies of each in memory. 8 MB ones
        # flush sooner, in RocksDB's own threads, and also bound what a crash leaves to
        # restore from the changelog.
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        self.db = Rdict(str(path), options)
        no_wal = WriteOptions()
        no_wal.disable_wal = True  # type: ignore[assignment,method-assign]  # a property; the stub says method
        self.db.set_write_options(no_wal)

    def get_many(self, entity_ids: list[str]) -> list[bytes | None]:
        """Stored record bytes of each entity (None where absent)."""
        return cast(list[bytes | None], self.db[[e.encode() for e in entity_ids]])

    def get_raw(self, keys: list[bytes]) -> list[bytes | None]:
        """Stored values of raw keys (None where absent): the segments of records."""
        return cast(list[bytes | None], self.db[cast(Any, keys)]) if keys else []

    def input_offset(self) -> int | None:
        """Next input offset to consume, as of the last committed batch."""
        return _int(self.db.get(_INPUT_OFFSET))

    def changelog_offset(self) -> int:
        """Next changelog offset not yet reflected here (0 for a new database)."""
        return _int(self.db.get(_CHANGELOG_OFFSET)) or 0

    def batch(self, records: Iterable[tuple[str | bytes, bytes | None]] = ()) -> WriteBatch:
        """A write batch of these records (entity id or raw key; None deletes); ``commit`` writes it."""
        wb = WriteBatch(raw_mode=True)
        for key, data in records:
            raw = key if isinstance(key, bytes) else key.encode()
            if data is None:
                wb.delete(raw)
            else:
                wb.put(raw, data)
        return wb

    @staticmethod
    def raw_batch(pairs: list[tuple[bytes, bytes | None]]) -> WriteBatch:
        """A write batch of raw key/values (None deletes): ``batch`` without its per-key checks (restores)."""
        wb = WriteBatch(raw_mode=True)
        put, delete = wb.put, wb.delete
        for key, data in pairs:
            if data is None:
                delete(key)
            else:
                put(key, data)
        return wb

    def commit(
        self,
        records: Iterable[tuple[str | bytes, bytes | None]] | WriteBatch,
        input_offset: int | None,
        changelog_offset: int | None,
    ) -> None:
        """Write records (or a batch of them) and positions atomically."""
        wb = records if isinstance(records, WriteBatch) else self.batch(records)
        if input_offset is not None:
            wb.put(_INPUT_OFFSET, str(input_offset).encode())
        if changelog_offset is not None:
            wb.put(_CHANGELOG_OFFSET, str(changelog_offset).encode())
        self.db.write(wb)

    def some_records(self, n: int) -> list[bytes]:
        """Up to ``n`` stored records (the first by key; metadata keys sort before them)."""
        return [bytes(v) for v in islice(self.db.values(from_key=b"\x01"), n)]

    def count_records(self) -> int:
        """How many records the store holds (a full key scan)."""
        return sum(1 for _ in self.db.keys(from_key=b"\x01"))

    def quarantine(self, entity_id: str, data: bytes) -> None:
        """Move an undecodable record (its head and every segment) aside so the entity can start afresh."""
        wb = WriteBatch(raw_mode=True)
        wb.put(_QUARANTINE + entity_id.encode(), data)
        wb.delete(entity_id.encode())
        prefix = segment_prefix(entity_id)
        for key, value in self.db.items(from_key=prefix):
            if not cast(bytes, key).startswith(prefix):
                break
            wb.put(_QUARANTINE + cast(bytes, key), value)
            wb.delete(key)
        self.db.write(wb)

    def sweep_segments(self, listed: Callable[[bytes], list[bytes] | None]) -> list[bytes]:
        """Delete the segments their entity's head does not list; return their keys.

        A crash can cut a checkpoint's changelog messages after a head and before the
        deletes of the segments it replaced: a restore then brings those back, and no
        later checkpoint deletes them (each deletes what the head before it listed).
        ``listed(head)`` gives the keys a head lists, or None for bytes that are not a
        record: the segments of such an entity are left for ``quarantine``. The caller
        deletes the keys from the changelog too (``Partition.orphans``).
        """
        wb = WriteBatch(raw_mode=True)
        swept: list[bytes] = []
        entity: bytes | None = None
        keep: set[bytes] | None = None
        for key in self.db.keys(from_key=SEGMENT_PREFIX):
            key = cast(bytes, key)
            if not key.startswith(SEGMENT_PREFIX):
                break
            eid = segment_owner(key)
            if eid != entity:
                entity = eid
                head = self.db.get(eid)
                keys = listed(head) if head is not None else []
                keep = None if keys is None else set(keys)
            if keep is not None and key not in keep:
                wb.delete(key)
                swept.append(key)
        if swept:
            self.db.write(wb)
        return swept

    def close(self) -> None:
        """Flush and close the database."""
        self.db.flush()
        self.db.close()

    def destroy(self) -> None:
        """Close and delete the database files."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _int(value: bytes | None) -> int | None:
    return None if value is None else int(value)
