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
record written under an incompatible layout is refused instead of misread.
"""

from __future__ import annotations

from typing import Any

import msgspec

from entities.events import attrs_struct
from entities.spec import Spec

SCHEMA_VERSION = 1
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


class RecordCodec:
    """msgpack encoding of records for one spec layout."""

    def __init__(self, spec: Spec) -> None:
        self.layout = spec.layout_hash()
        self.repeated = list(spec.repeated)
        self._fixed_type = attrs_struct("fixed", dict(spec.fixed.fields), optional=True)
        items_type = msgspec.defstruct(
            "items",
            [
                (name, list[tuple[(int, str, *rep.fields.values())]])  # type: ignore[misc]
                for name, rep in spec.repeated.items()
            ],
            array_like=True,
        )
        self._items_type = items_type
        self._state_type = msgspec.defstruct(
            "record",
            [
                ("v", int),
                ("layout", str),
                ("entity_id", str),
                ("fixed", self._fixed_type),
                ("items", items_type),
                ("lifetime", dict[str, dict[str, list[float]]]),
                ("last_ts", dict[str, int]),
                ("duplicates", int),
                ("offset", int),
                ("fixed_ids", list[str]),
            ],
            array_like=True,
        )
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(self._state_type)

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
        return self._state_type(
            SCHEMA_VERSION,
            self.layout,
            record.entity_id,
            self._fixed_type(**record.fixed),
            self._items_type(*(record.items[n][:] for n in self.repeated)),
            {name: {k: v[:] for k, v in stats.items()} for name, stats in record.lifetime.items()},
            dict(record.last_ts),
            record.duplicates,
            record.offset,
            record.fixed_ids[:],
        )

    def encode_snapshot(self, snapshot: Any) -> bytes:
        """Serialise what ``snapshot`` took."""
        return self._encoder.encode(snapshot)

    def _check_header(self, data: bytes) -> None:
        try:
            head = msgspec.msgpack.decode(data)
        except msgspec.MsgspecError:
            return
        if isinstance(head, list) and len(head) >= 2:
            if head[0] != SCHEMA_VERSION:
                raise RecordError(f"record schema version {head[0]}, expected {SCHEMA_VERSION}")
            if head[1] != self.layout:
                raise RecordError(f"record written for layout {head[1]}, this spec has {self.layout}")

    def decode(self, data: bytes) -> SupernovaRecord:
        """Deserialise a record; raise RecordError on corrupt or foreign bytes."""
        try:
            state: Any = self._decoder.decode(data)
        except msgspec.MsgspecError as exc:
            self._check_header(data)  # a foreign version/layout says so, not "does not decode"
            raise RecordError(f"record does not decode: {exc}") from None
        if state.v != SCHEMA_VERSION:
            raise RecordError(f"record schema version {state.v}, expected {SCHEMA_VERSION}")
        if state.layout != self.layout:
            raise RecordError(f"record written for layout {state.layout}, this spec has {self.layout}")
        record = SupernovaRecord(state.entity_id, self.repeated)
        record.fixed = msgspec.structs.asdict(state.fixed)
        record.fixed = {k: v for k, v in record.fixed.items() if v is not msgspec.UNSET}
        for name in self.repeated:
            items = getattr(state.items, name)
            record.items[name] = items
            record.ids[name] = {item[1] for item in items}
        record.lifetime = state.lifetime
        record.last_ts = state.last_ts
        record.duplicates = state.duplicates
        record.offset = state.offset
        record.fixed_ids = state.fixed_ids
        return record
