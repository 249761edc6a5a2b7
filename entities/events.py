"""Events on the wire and their validation: the only place raw input becomes typed.

Wire format (JSON, one object per event, Kafka key = entity_id)::

    {"event_id": "...", "entity_id": "...", "type": "transaction",
     "ts": "2020-06-21T12:14:02Z" | 1592741642000, "attrs": {...}, "label": 0}

``label`` is optional and never visible to features. ``attrs`` are validated against
the spec's field types for that event type; an invalid event raises
:class:`EventError` naming the field and the reason.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Union

import msgspec

from entities.spec import Fixed, Spec

MAX_EVENT_BYTES = 64 * 1024
# Year 1900 .. 9999 in epoch ms: catches seconds-vs-ms and garbage, allows history.
MIN_TS_MS = -2_208_988_800_000
MAX_TS_MS = 253_402_300_799_999
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Ts = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, le=MAX_TS_MS)] | dt.datetime


class EventError(ValueError):
    """An event that cannot be accepted; ``field`` is a dotted path, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"field '{field}': {reason}")
        self.field = field
        self.reason = reason


class LateEventError(EventError):
    """An event too old to be placed correctly in its entity's windows."""


class Event(msgspec.Struct, gc=False):
    """A validated event: ts in epoch ms UTC, attrs a typed struct of the event type."""

    # gc=False: the cyclic collector never scans events. Safe because an event holds
    # only scalars and an attrs struct of scalars: it cannot be part of a cycle.

    event_id: str
    entity_id: str
    type: str
    ts: int
    attrs: Any
    label: float | None = None


_MSGSPEC_PATH = re.compile(r"^(?P<reason>.*?)(?: - at `\$\.?(?P<path>[^`]*)`)?$", re.S)


def _event_error(exc: msgspec.MsgspecError) -> EventError:
    m = _MSGSPEC_PATH.match(str(exc))
    assert m is not None
    path = m.group("path") or ""
    reason = m.group("reason")
    missing = re.match(r"Object missing required field `(\w+)`", reason)
    if missing:  # name the missing field itself, e.g. attrs.amt
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return EventError(path or "event", reason)


def ts_to_ms(value: int | dt.datetime) -> int:
    """Epoch milliseconds of a wire timestamp; naive datetimes are refused (ambiguous zone)."""
    if isinstance(value, int):
        return value
    if value.tzinfo is None:
        raise EventError("ts", f"timestamp {value.isoformat()!r} has no UTC offset (append 'Z')")
    ms = (value - _EPOCH) // _MS
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise EventError("ts", f"timestamp {value.isoformat()!r} is out of range")
    return ms


def attrs_struct(name: str, fields: dict[str, Any], optional: bool) -> type[msgspec.Struct]:
    """A msgspec Struct for an event type's attrs; fixed attrs are all optional (UNSET)."""
    spec_fields: list[tuple[Any, ...]]
    if optional:
        spec_fields = [(k, t | msgspec.UnsetType, msgspec.UNSET) for k, t in fields.items()]
    else:
        spec_fields = [(k, t) for k, t in fields.items()]
    return msgspec.defstruct(name, spec_fields, omit_defaults=True)


class EventCodec:
    """Decodes and encodes the wire events of one spec (built once, reused per batch)."""

    def __init__(self, spec: Spec, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.attrs: dict[str, type[msgspec.Struct]] = {}
        self._fields = {t: dict(part.fields) for t, part in spec.event_types.items()}
        self._row_types: dict[str, Any] = {}
        wires = []
        for event_type, part in spec.event_types.items():
            attrs = attrs_struct(f"{event_type}_attrs", dict(part.fields), isinstance(part, Fixed))
            self.attrs[event_type] = attrs
            wires.append(
                msgspec.defstruct(
                    f"{event_type}_event",
                    [
                        ("event_id", Id),
                        ("entity_id", Id),
                        ("ts", Ts),
                        ("attrs", attrs),
                        ("label", float | None, None),
                    ],
                    tag_field="type",
                    tag=event_type,
                )
            )
        self._wire = {w.__struct_config__.tag: w for w in wires}
        self._decoder = msgspec.json.Decoder(Union[tuple(wires)])  # type: ignore[arg-type]  # noqa: UP007
        self._encoder = msgspec.json.Encoder()

    def decode(self, data: bytes) -> Event:
        """Validate one JSON event; raise EventError naming the field and the reason."""
        if len(data) > self.max_event_bytes:
            raise EventError("event", f"payload of {len(data)} bytes exceeds {self.max_event_bytes}")
        try:
            wire = self._decoder.decode(data)
        except msgspec.MsgspecError as exc:
            raise _event_error(exc) from None
        except UnicodeDecodeError:  # raised by msgspec for bad bytes inside a string
            raise EventError("event", "a string is not valid UTF-8") from None
        except RecursionError:  # deeply nested input: data, not a reason to crash
            raise EventError("event", "JSON nested too deeply") from None
        return Event(
            wire.event_id,
            wire.entity_id,
            wire.__struct_config__.tag,
            ts_to_ms(wire.ts),
            wire.attrs,
            wire.label,
        )

    def build(
        self,
        event_type: str,
        event_id: str,
        entity_id: str,
        ts: int,
        attrs: dict[str, Any],
        label: float | None = None,
    ) -> Event:
        """Validate an event from Python values (strings are coerced, e.g. from CSV)."""
        attrs_type = self.attrs.get(event_type)
        if attrs_type is None:
            raise EventError("type", f"unknown event type {event_type!r}")
        try:
            typed = msgspec.convert(attrs, attrs_type, strict=False)
        except msgspec.ValidationError as exc:
            err = _event_error(exc)
            raise EventError(f"attrs.{err.field}", err.reason) from None
        if not event_id:
            raise EventError("event_id", "must be a non-empty string")
        if not entity_id:
            raise EventError("entity_id", "must be a non-empty string")
        return Event(event_id, entity_id, event_type, ts, typed, label)

    def attrs_batch(self, event_type: str, rows: Iterable[Sequence[Any]]) -> list[Any] | None:
        """The attrs of many events at once, each row its values in field order.

        Values are validated and coerced exactly as :meth:`build` does (one msgspec
        call for all rows). None if any row is invalid: then :meth:`build` each row,
        which names the field and the reason.
        """
        attrs_type = self.attrs[event_type]
        row_type = self._row_types.get(event_type)
        if row_type is None:
            fields = self._fields[event_type]
            row_type = self._row_types[event_type] = list[tuple[tuple(fields.values())]]  # type: ignore[misc]
        try:
            values = msgspec.convert(rows if isinstance(rows, list) else list(rows), row_type, strict=False)
        except msgspec.ValidationError:
            return None
        return [attrs_type(*v) for v in values]

    def encode(self, event: Event) -> bytes:
        """The wire JSON of an event (ts as epoch ms)."""
        wire = self._wire[event.type](event.event_id, event.entity_id, event.ts, event.attrs, event.label)
        return self._encoder.encode(wire)
