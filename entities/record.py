"""The supernova record: everything known about one entity, in one value.

- ``fixed``: fixed attributes (profile fields), last write wins per field.
- ``items``: per repeated attribute, items sorted by ts (ties in arrival order); an
  item is ``(ts, event_id, *fields)`` in the spec's field order, kept as columns
  (:class:`entities.items.Items`).
- ``lifetime``: per repeated attribute, aggregates over every item ever appended
  (they survive retention); ``last_ts``: the newest ts ever appended.
- ``duplicates``: how many events were ignored because their event_id was known.
- ``offset``: the input offset of the last event applied, when fed from a log (-1
  otherwise); a worker replaying after a crash skips what the record already holds,
  however old (event-id dedupe alone only reaches back as far as retention).

Records serialise to msgpack with a schema version and the spec's layout hash, so a
record written under an incompatible layout is refused instead of misread. Version 2
stores each repeated attribute as columns (``entities/columns.py``): typed arrays
for ts and numbers, dictionary-coded text, 16-byte event ids when they are hex
digests; version 1 (tuples of items) is still read.

At rest a record is split (version 3, ``encode_parts``): a **head** under the entity's
key (everything but the items, plus per repeated attribute the list of its segments)
and **segments**, the items of one attribute whose ts fall in one time bucket, each
under its own key (``segment_key``). A write puts the head, the segments that may
have received items since the record was last written, and deletes (None) for the
segments it no longer lists; a rewritten segment gets a new key (the head's write
count is part of it), so a head always names segments that exist, whatever prefix
of a write survived a crash. Loading concatenates the listed segments and applies
the retention rule again, which drops what retention trimmed since each was written.
"""

from __future__ import annotations

import struct
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from entities.columns import ColumnsCodec, ColumnsError
from entities.events import attrs_struct
from entities.items import Items
from entities.spec import Spec

SCHEMA_VERSION = 2  # whole records (``encode``)
HEAD_VERSION = 3  # heads of records stored in segments (``encode_parts``)
RECENT_FIXED_IDS = 16  # fixed-attribute event ids remembered for dedupe
HOUR_MS = 3_600_000
BUCKETS_PER_RETENTION = 32
# Segment keys: NUL-led like the store's metadata, so a scan of heads (from b"\x01")
# never meets them; the entity id's length makes the prefix of one entity unambiguous.
SEGMENT_PREFIX = b"\x00seg\x00"
_SEGMENT_ID = struct.Struct(">BqQ")  # attribute index, bucket, write: big-endian


def segment_prefix(entity_id: str) -> bytes:
    """The key prefix shared by every segment of one entity."""
    eid = entity_id.encode()
    return SEGMENT_PREFIX + len(eid).to_bytes(2, "big") + eid


def segment_owner(key: bytes) -> bytes:
    """The entity id (as bytes) of a segment key: its record's head key."""
    at = len(SEGMENT_PREFIX)
    return key[at + 2 : at + 2 + int.from_bytes(key[at : at + 2], "big")]


def stored_version(data: bytes) -> int | None:
    """The schema version stored bytes announce, else None.

    A whole record (version 1 or 2) is a 10-element msgpack array whose first element is
    its version; a head (version 3), an 11-element one.
    """
    if len(data) < 2:
        return None
    version, marker = data[1], data[0]
    if (version == HEAD_VERSION and marker == 0x9B) or (version in (1, 2) and marker == 0x9A):
        return version
    return None


def segment_key(entity_id: str, attr: int, bucket: int, written: int) -> bytes:
    """The key of one segment: entity, attribute index, time bucket, the write that made it."""
    return segment_prefix(entity_id) + _SEGMENT_ID.pack(attr, bucket, written)


def bucket_ms_for(retention_ms: int) -> int:
    """Segment width for an attribute: a 32nd of its retention in whole hours, at least an hour."""
    return max(HOUR_MS, round(retention_ms / BUCKETS_PER_RETENTION / HOUR_MS) * HOUR_MS)


class RecordError(ValueError):
    """Stored bytes that do not decode to a record of this spec."""


class SupernovaRecord:
    """One entity's fixed attributes, repeated attributes and lifetime aggregates."""

    __slots__ = (
        "duplicates",
        "entity_id",
        "fixed",
        "fixed_ids",
        "items",
        "last_ts",
        "lifetime",
        "offset",
        "stored",
        "windows",
    )

    def __init__(self, entity_id: str, repeated: Mapping[str, tuple[str, ...]]) -> None:
        """``repeated``: per repeated attribute, its column kinds (``field_kinds``)."""
        self.entity_id = entity_id
        self.fixed: dict[str, Any] = {}
        self.items: dict[str, Items] = {name: Items(kinds) for name, kinds in repeated.items()}
        self.lifetime: dict[str, dict[str, list[float]]] = {name: {} for name in repeated}
        self.last_ts: dict[str, int] = {}
        self.duplicates = 0
        self.offset = -1
        self.fixed_ids: list[str] = []
        # Derived, never serialised: window state (built by the FeaturePlan on first use).
        self.windows: Any = None
        # Derived: what the last segmented write stored (``RecordCodec.encode_parts``).
        self.stored: Stored | None = None

    def sizes(self) -> dict[str, int]:
        """Number of retained items per repeated attribute."""
        return {name: len(items) for name, items in self.items.items()}

    @property
    def ids(self) -> dict[str, set[str]]:
        """Event ids of the retained items, per repeated attribute (a copy)."""
        return {name: {items.ids[i] for i in range(len(items))} for name, items in self.items.items()}


class Written(NamedTuple):
    """One repeated attribute as a record's last segmented write stored it.

    Items are only appended, inserted late (``Items.inserted`` counts those) or dropped
    from the front (``Items.dropped``): with no insertion since, the items appended
    since are those numbered from ``dropped + n`` on.
    """

    n: int
    dropped: int
    inserted: int
    last_ts: int  # the newest ts then (0 with no items)
    segments: list[tuple[int, int]]  # (bucket, write) of each segment listed


class Stored(NamedTuple):
    """What a record's last segmented write stored, to tell which segments changed since."""

    writes: int
    attrs: list[Written]


def _state_type(name: str, fixed_type: Any, items_type: Any) -> Any:
    return msgspec.defstruct(
        name,
        [
            ("v", int),
            ("layout", str),
            ("entity_id", str),
            ("fixed", fixed_type),
            ("items", items_type),
            ("lifetime", dict[str, dict[str, list[float]]]),
            ("last_ts", dict[str, int]),
            ("duplicates", int),
            ("offset", int),
            ("fixed_ids", list[str]),
        ],
        array_like=True,
    )


def _first_at(items: Items, ts: int, lo: int = 0) -> int:
    """Index of the first item with a ts of at least ``ts``."""
    return bisect_left(items.ts, ts, lo)


def _fixed_of(fixed: Any) -> dict[str, Any]:
    """The fixed attributes of a decoded record, text interned (as ``_apply_fixed`` does)."""
    return {
        k: sys.intern(v) if type(v) is str else v
        for k, v in msgspec.structs.asdict(fixed).items()
        if v is not msgspec.UNSET
    }


def _head_type(fixed_type: Any) -> Any:
    return msgspec.defstruct(
        "record_head",
        [
            ("v", int),
            ("layout", str),
            ("entity_id", str),
            ("fixed", fixed_type),
            ("segments", list[list[tuple[int, int]]]),
            ("lifetime", dict[str, dict[str, list[float]]]),
            ("last_ts", dict[str, int]),
            ("duplicates", int),
            ("offset", int),
            ("fixed_ids", list[str]),
            ("writes", int),
        ],
        array_like=True,
    )


class RecordCodec:
    """msgpack encoding of records for one spec layout.

    ``bucket_ms`` overrides the segment width per attribute (tests); by default it is
    ``bucket_ms_for`` its retention. Readers never need it: a head lists its segments.
    """

    def __init__(self, spec: Spec, bucket_ms: dict[str, int] | None = None) -> None:
        self.layout = spec.layout_hash()
        self.repeated = list(spec.repeated)

        self._lateness = spec.lateness_ms
        self._retention = [(rep.retention_ms, rep.max_count) for rep in spec.repeated.values()]
        self._bucket = [
            (bucket_ms or {}).get(name) or bucket_ms_for(rep.retention_ms)
            for name, rep in spec.repeated.items()
        ]
        self._fixed_type = attrs_struct("fixed", dict(spec.fixed.fields), optional=True)
        self._columns = [ColumnsCodec(name, dict(rep.fields)) for name, rep in spec.repeated.items()]
        self._kinds = {c.name: c.kinds for c in self._columns}  # how Items keeps each attribute
        columns_type = msgspec.defstruct(
            "columns", [(c.name, c.struct) for c in self._columns], array_like=True
        )
        self._columns_type = columns_type
        self._state_type = _state_type("record", self._fixed_type, columns_type)
        items_v1 = msgspec.defstruct(
            "items",
            [
                (name, list[tuple[(int, str, *rep.fields.values())]])  # type: ignore[misc]
                for name, rep in spec.repeated.items()
            ],
            array_like=True,
        )
        self._encoder = msgspec.msgpack.Encoder()
        self._head_type = _head_type(self._fixed_type)
        self._decoders = {
            1: msgspec.msgpack.Decoder(_state_type("record_v1", self._fixed_type, items_v1)),
            2: msgspec.msgpack.Decoder(self._state_type),
            HEAD_VERSION: msgspec.msgpack.Decoder(self._head_type),
        }
        self._segment_decoders = [msgspec.msgpack.Decoder(c.struct) for c in self._columns]

    def new(self, entity_id: str) -> SupernovaRecord:
        """An empty record for an entity."""
        return SupernovaRecord(entity_id, self._kinds)

    def encode(self, record: SupernovaRecord) -> bytes:
        """Serialise a record (derived state is left out)."""
        return self.encode_snapshot(self._now(record))  # encoded at once: nothing to copy

    def _now(self, record: SupernovaRecord) -> Any:
        """What ``snapshot`` takes, without the copies: for encoding before the record changes."""
        return (
            record.entity_id,
            self._fixed_type(**record.fixed),
            [record.items[n] for n in self.repeated],
            record.lifetime,
            record.last_ts,
            record.duplicates,
            record.offset,
            record.fixed_ids,
        )

    def snapshot(self, record: SupernovaRecord) -> Any:
        """The record's serialisable state as of now, for ``encode_snapshot`` later.

        Copies what the engine mutates in place: the item columns (a copy of arrays),
        the lifetime counters; far cheaper than encoding.
        """
        return (
            record.entity_id,
            self._fixed_type(**record.fixed),
            [record.items[n].copy() for n in self.repeated],
            {name: {k: v[:] for k, v in stats.items()} for name, stats in record.lifetime.items()},
            dict(record.last_ts),
            record.duplicates,
            record.offset,
            record.fixed_ids[:],
        )

    def encode_snapshot(self, snapshot: Any) -> bytes:
        """Serialise what ``snapshot`` took."""
        entity_id, fixed, items, lifetime, last_ts, duplicates, offset, fixed_ids = snapshot
        columns = self._columns_type(*(c.encode(its) for c, its in zip(self._columns, items, strict=True)))
        state = self._state_type(
            SCHEMA_VERSION,
            self.layout,
            entity_id,
            fixed,
            columns,
            lifetime,
            last_ts,
            duplicates,
            offset,
            fixed_ids,
        )
        return self._encoder.encode(state)

    def encode_parts(self, record: SupernovaRecord, snapshot: Any = None) -> list[tuple[bytes, bytes | None]]:
        """The key/values that bring the stored record up to ``snapshot`` (default: now).

        In write order: the new segments, the head, then deletes (None) for segments
        the head no longer lists. Only segments that may have received items since the
        last write are written: items arrive at the end, or late but no older than the
        newest ts then minus the allowed lateness, so every bucket before that of
        (newest ts at the last write - lateness) is as it was stored. Notes what it
        wrote on the record (``record.stored``).
        """
        if snapshot is None:
            snapshot = self._now(record)
        entity_id, fixed, all_items, lifetime, last_ts, duplicates, offset, fixed_ids = snapshot
        prev = record.stored
        writes = (prev.writes if prev is not None else 0) + 1
        puts: list[tuple[bytes, bytes | None]] = []
        deletes: list[tuple[bytes, bytes | None]] = []
        listed: list[list[tuple[int, int]]] = []
        noted = []
        encode = self._encoder.encode
        prefix = segment_prefix(entity_id)
        for i, items in enumerate(all_items):
            was = prev.attrs[i] if prev is not None else None
            old = was.segments if was is not None else []
            segs: list[tuple[int, int]] = []
            if items:
                width = self._bucket[i]
                first = items.ts[0] // width
                start = self._first_dirty(items, was, width)
                segs = [s for s in old if first <= s[0] and (start is None or s[0] < start)]
                j, n = (len(items), 0) if start is None else (_first_at(items, start * width), len(items))
                while j < n:
                    bucket = items.ts[j] // width
                    k = _first_at(items, (bucket + 1) * width, j)
                    value = encode(self._columns[i].encode(items, j, k))
                    puts.append((prefix + _SEGMENT_ID.pack(i, bucket, writes), value))
                    segs.append((bucket, writes))
                    j = k
            kept = set(segs)
            deletes += [(prefix + _SEGMENT_ID.pack(i, b, w), None) for b, w in old if (b, w) not in kept]
            listed.append(segs)
            noted.append(self._written(items, segs))
        head = self._head_type(
            HEAD_VERSION,
            self.layout,
            entity_id,
            fixed,
            listed,
            lifetime,
            last_ts,
            duplicates,
            offset,
            fixed_ids,
            writes,
        )
        puts.append((entity_id.encode(), encode(head)))
        record.stored = Stored(writes, noted)
        return puts + deletes

    @staticmethod
    def _written(items: Items, segments: list[tuple[int, int]]) -> Written:
        last = items.ts[-1] if len(items) else 0
        return Written(len(items), items.dropped, items.inserted, last, segments)

    def _first_dirty(self, items: Items, was: Written | None, width: int) -> int | None:
        """The first bucket that may hold items inserted since ``was`` was written (None: none)."""
        first: int = items.ts[0] // width
        if was is None or not was.n:
            return first
        if was.inserted == items.inserted:
            # Only appends and drops from the front since: the new items are numbered
            # from dropped + n then (drops alone change no segment: loading applies
            # retention again).
            new = max(0, was.dropped + was.n - items.dropped)
            return max(first, items.ts[new] // width) if new < len(items) else None
        # Late items land no older than the newest then minus the allowed lateness.
        return max(first, (was.last_ts - self._lateness) // width)

    def segment_keys(self, data: bytes) -> list[bytes]:
        """Keys of the segments a stored head lists, in order ([] for whole records and bad bytes)."""
        return self.listed_segments(data) or []

    def listed_segments(self, data: bytes) -> list[bytes] | None:
        """Keys of the segments a stored head lists; [] for a whole record; None for bytes not a record."""
        version = stored_version(data)
        if version != HEAD_VERSION:
            return None if version is None else []  # a whole record lists no segments
        try:
            head = self._decoders[HEAD_VERSION].decode(data)
        except msgspec.MsgspecError:
            return None
        return [segment_key(head.entity_id, i, b, w) for i, segs in enumerate(head.segments) for b, w in segs]

    def _assemble(self, head: Any, segments: Sequence[bytes | None]) -> SupernovaRecord:
        """A record from its head and the segments it lists (in ``segment_keys`` order)."""
        if len(segments) != sum(map(len, head.segments)):
            raise RecordError(
                f"record head lists {sum(map(len, head.segments))} segments, got {len(segments)}"
            )
        record = SupernovaRecord(head.entity_id, self._kinds)
        record.fixed = _fixed_of(head.fixed)
        at = 0
        noted = []
        for i, name in enumerate(self.repeated):
            segs = head.segments[i]
            items = record.items[name]
            for data in segments[at : at + len(segs)]:
                if data is None:
                    raise RecordError(f"record segment of {name!r} missing")
                try:
                    items.extend(self._columns[i].decode(self._segment_decoders[i].decode(data)))
                except (msgspec.MsgspecError, ColumnsError) as exc:
                    raise RecordError(f"record segment does not decode: {exc}") from None
            at += len(segs)
            if items:  # what retention trimmed since the older segments were written
                retention, max_count = self._retention[i]
                too_old = items.ts[-1] - retention
                k = max(0, len(items) - max_count)
                if items.ts[0] <= too_old:
                    k = max(k, bisect_right(items.ts, too_old))
                items.drop(k)
            noted.append(self._written(items, [tuple(s) for s in segs]))  # type: ignore[misc]
        record.lifetime = head.lifetime
        record.last_ts = head.last_ts
        record.duplicates = head.duplicates
        record.offset = head.offset
        record.fixed_ids = head.fixed_ids
        record.stored = Stored(head.writes, noted)
        return record

    def _header(self, data: bytes) -> tuple[int | None, str] | None:
        """(version, layout) when the bytes start like a record of any version."""
        try:
            head = msgspec.msgpack.decode(data)
        except msgspec.MsgspecError:
            return None
        if isinstance(head, list) and len(head) >= 2 and isinstance(head[0], int):
            # A version this codec reads, in an array of another size, is foreign too.
            fits = (len(head) == 11) == (head[0] == HEAD_VERSION)
            return head[0] if fits else None, str(head[1])
        return None

    def decode(self, data: bytes, segments: Sequence[bytes | None] = ()) -> SupernovaRecord:
        """Deserialise a record; raise RecordError on corrupt or foreign bytes.

        A head (version 3) needs the values of the keys ``segment_keys`` gave for it.
        """
        version = stored_version(data)
        decoder = self._decoders.get(version)  # type: ignore[arg-type]
        try:
            if decoder is None:
                raise msgspec.DecodeError("not a record")
            state: Any = decoder.decode(data)
        except msgspec.MsgspecError as exc:
            head = self._header(data)  # a foreign version/layout says so, not "does not decode"
            if head is not None and head[0] not in self._decoders:
                version = msgspec.msgpack.decode(data)[0]
                raise RecordError(
                    f"record schema version {version}, expected {SCHEMA_VERSION} or {HEAD_VERSION}"
                ) from None
            if head is not None and head[1] != self.layout:
                raise RecordError(
                    f"record written for layout {head[1]}, this spec has {self.layout}"
                ) from None
            raise RecordError(f"record does not decode: {exc}") from None
        if state.layout != self.layout:
            raise RecordError(f"record written for layout {state.layout}, this spec has {self.layout}")
        if version == HEAD_VERSION:
            return self._assemble(state, segments)
        record = SupernovaRecord(state.entity_id, self._kinds)
        record.fixed = _fixed_of(state.fixed)
        for i, name in enumerate(self.repeated):
            try:
                if version == 1:
                    items = self._columns[i].items_of(getattr(state.items, name))
                else:
                    items = self._columns[i].decode(getattr(state.items, name))
            except (ColumnsError, OverflowError) as exc:
                raise RecordError(f"record does not decode: {exc}") from None
            record.items[name] = items
        record.lifetime = state.lifetime
        record.last_ts = state.last_ts
        record.duplicates = state.duplicates
        record.offset = state.offset
        record.fixed_ids = state.fixed_ids
        return record
