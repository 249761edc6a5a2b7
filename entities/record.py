"""The supernova record: everything known about one entity, in one value.

- ``fixed``: fixed attributes (profile fields), last write wins per field.
- ``items``: per repeated attribute, items sorted by ts (ties in arrival order); an
  item is ``(ts, event_id, *fields)`` in the spec's field order.
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
"""

from __future__ import annotations

from typing import Any

import msgspec

from entities.columns import ColumnsCodec, ColumnsError
from entities.events import attrs_struct
from entities.spec import Spec

SCHEMA_VERSION = 2
RECENT_FIXED_IDS = 16  # fixed-attribute event ids remembered for dedupe


class RecordError(ValueError):
    """Stored bytes that do not decode to a record of this spec."""


class SupernovaRecord:
    """One entity's fixed attributes, repeated attributes and lifetime aggregates."""

    __slots__ = (
        "duplicates",
        "entity_id",
        "fixed",
        "fixed_ids",
        "ids",
        "items",
        "last_ts",
        "lifetime",
        "offset",
        "windows",
    )

    def __init__(self, entity_id: str, repeated: list[str]) -> None:
        self.entity_id = entity_id
        self.fixed: dict[str, Any] = {}
        self.items: dict[str, list[tuple[Any, ...]]] = {name: [] for name in repeated}
        self.lifetime: dict[str, dict[str, list[float]]] = {name: {} for name in repeated}
        self.last_ts: dict[str, int] = {}
        self.duplicates = 0
        self.offset = -1
        self.fixed_ids: list[str] = []
        # Derived, never serialised: event ids of retained items, and window state
        # (built by the FeaturePlan on first use).
        self.ids: dict[str, set[str]] = {name: set() for name in repeated}
        self.windows: Any = None

    def sizes(self) -> dict[str, int]:
        """Number of retained items per repeated attribute."""
        return {name: len(items) for name, items in self.items.items()}


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


class RecordCodec:
    """msgpack encoding of records for one spec layout."""

    def __init__(self, spec: Spec) -> None:
        self.layout = spec.layout_hash()
        self.repeated = list(spec.repeated)
        self._fixed_type = attrs_struct("fixed", dict(spec.fixed.fields), optional=True)
        self._columns = [ColumnsCodec(name, dict(rep.fields)) for name, rep in spec.repeated.items()]
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
        self._decoders = {
            1: msgspec.msgpack.Decoder(_state_type("record_v1", self._fixed_type, items_v1)),
            2: msgspec.msgpack.Decoder(self._state_type),
        }

    def new(self, entity_id: str) -> SupernovaRecord:
        """An empty record for an entity."""
        return SupernovaRecord(entity_id, self.repeated)

    def encode(self, record: SupernovaRecord) -> bytes:
        """Serialise a record (derived state is left out)."""
        return self.encode_snapshot(self.snapshot(record))

    def snapshot(self, record: SupernovaRecord) -> Any:
        """The record's serialisable state as of now, for ``encode_snapshot`` later.

        Copies what the engine mutates in place (lists, the lifetime counters) but not
        the items, which are immutable tuples: far cheaper than encoding.
        """
        return (
            record.entity_id,
            self._fixed_type(**record.fixed),
            [record.items[n][:] for n in self.repeated],
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

    def _header(self, data: bytes) -> tuple[int, str] | None:
        """(version, layout) when the bytes start like a record of any version."""
        try:
            head = msgspec.msgpack.decode(data)
        except msgspec.MsgspecError:
            return None
        if isinstance(head, list) and len(head) >= 2 and isinstance(head[0], int):
            return head[0], str(head[1])
        return None

    def decode(self, data: bytes) -> SupernovaRecord:
        """Deserialise a record; raise RecordError on corrupt or foreign bytes."""
        # A record is a 10-element msgpack array whose first element is its version.
        version = data[1] if len(data) > 1 and data[0] == 0x9A else None
        decoder = self._decoders.get(version)  # type: ignore[arg-type]
        try:
            if decoder is None:
                raise msgspec.DecodeError("not a record")
            state: Any = decoder.decode(data)
        except msgspec.MsgspecError as exc:
            head = self._header(data)  # a foreign version/layout says so, not "does not decode"
            if head is not None and head[0] not in self._decoders:
                raise RecordError(f"record schema version {head[0]}, expected {SCHEMA_VERSION}") from None
            if head is not None and head[1] != self.layout:
                raise RecordError(
                    f"record written for layout {head[1]}, this spec has {self.layout}"
                ) from None
            raise RecordError(f"record does not decode: {exc}") from None
        if state.layout != self.layout:
            raise RecordError(f"record written for layout {state.layout}, this spec has {self.layout}")
        record = SupernovaRecord(state.entity_id, self.repeated)
        record.fixed = msgspec.structs.asdict(state.fixed)
        record.fixed = {k: v for k, v in record.fixed.items() if v is not msgspec.UNSET}
        for i, name in enumerate(self.repeated):
            if version == 1:
                items = getattr(state.items, name)
            else:
                try:
                    items = self._columns[i].decode(getattr(state.items, name))
                except ColumnsError as exc:
                    raise RecordError(f"record does not decode: {exc}") from None
            record.items[name] = items
            record.ids[name] = {item[1] for item in items}
        record.lifetime = state.lifetime
        record.last_ts = state.last_ts
        record.duplicates = state.duplicates
        record.offset = state.offset
        record.fixed_ids = state.fixed_ids
        return record
