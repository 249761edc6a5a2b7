"""Wire events (``EventCodec``) and stored records (``RecordCodec``) of the pure core.

Events: with the fraud spec, a valid event decodes the same with an ISO "Z" ts and
an epoch-ms ts; every kind of invalid input raises ``EventError`` whose ``field``
names the offending field and whose message names it and the reason; encode ->
decode is the identity.

Records: a record round-trips with its fixed attributes, items, lifetime
aggregates, last ts, duplicates and profile ids, and the decoded record goes on
producing the features the original does; corrupt bytes and records of another
layout are refused with ``RecordError``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest

from entities.engine import Engine
from entities.events import MAX_EVENT_BYTES, Event, EventCodec, EventError
from entities.record import RecordCodec, RecordError
from entities.spec import Spec, load_spec_module

FRAUD_SPEC = Path(__file__).resolve().parents[1] / "examples" / "fraud" / "spec.py"
TS_ISO = "2020-06-21T12:14:02Z"
TS_MS = 1_592_741_642_000  # the same instant in epoch ms


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec_module(FRAUD_SPEC).spec  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def codec(spec: Spec) -> EventCodec:
    return EventCodec(spec)


def txn(**over: Any) -> dict[str, Any]:
    event = {
        "event_id": "t-1",
        "entity_id": "4242424242424242",
        "type": "transaction",
        "ts": TS_ISO,
        "attrs": {
            "merchant": "fraud_Kirlin and Sons",
            "category": "personal_care",
            "amt": 2.86,
            "merch_lat": 33.986391,
            "merch_long": -81.200714,
        },
        "label": 0,
    }
    event.update(over)
    return event


def profile(**attrs_over: Any) -> dict[str, Any]:
    attrs = {
        "first": "Jeff",
        "last": "Elliott",
        "gender": "M",
        "city": "Columbia",
        "state": "SC",
        "lat": 33.9659,
        "long": -80.9355,
        "city_pop": 333497,
        "dob": "1968-03-19",
    }
    attrs.update(attrs_over)
    return {
        "event_id": "p-1",
        "entity_id": "4242424242424242",
        "type": "profile",
        "ts": TS_MS,
        "attrs": attrs,
    }


def wire(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def with_attrs(event: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    return {**event, "attrs": {**event["attrs"], **attrs}}


def without(event: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != key}


# --- EventCodec: valid events ---------------------------------------------------------


def test_iso_z_and_epoch_ms_give_the_same_event(codec: EventCodec) -> None:
    iso = codec.decode(wire(txn(ts=TS_ISO)))
    ms = codec.decode(wire(txn(ts=TS_MS)))
    offset = codec.decode(wire(txn(ts="2020-06-21T14:14:02+02:00")))
    assert iso.ts == ms.ts == offset.ts == TS_MS
    assert iso == ms == offset
    assert iso.type == "transaction" and iso.entity_id == "4242424242424242"
    assert iso.attrs.amt == 2.86 and iso.attrs.merchant == "fraud_Kirlin and Sons"
    assert iso.label == 0.0


def test_profile_fields_not_sent_stay_unset(codec: EventCodec) -> None:
    event = codec.decode(wire(profile()))
    assert event.attrs.dob == dt.date(1968, 3, 19)
    assert event.attrs.city_pop == 333497
    assert event.attrs.job is msgspec.UNSET  # not sent: last write wins per field
    assert event.label is None


@pytest.mark.parametrize("make", [lambda: txn(), lambda: txn(ts=TS_MS, label=None), lambda: profile()])
def test_encode_decode_round_trip(codec: EventCodec, make: Any) -> None:
    event = codec.decode(wire(make()))
    again = codec.decode(codec.encode(event))
    assert again == event
    assert codec.encode(again) == codec.encode(event)
    assert json.loads(codec.encode(event))["ts"] == TS_MS  # ts goes out as epoch ms


def test_build_equals_decode(codec: EventCodec) -> None:
    attrs = txn()["attrs"]
    built = codec.build("transaction", "t-1", "4242424242424242", TS_MS, attrs, label=0.0)
    assert built == codec.decode(wire(txn()))
    assert codec.decode(codec.encode(built)) == built


# --- EventCodec: invalid events -------------------------------------------------------

INVALID = {
    # name: (payload, field, words the reason must contain)
    "invalid JSON": (b'{"event_id": "t-1", "entity_id": ', "event", ["truncated"]),
    "JSON not an object": (b"[1, 2, 3]", "event", ["object"]),
    "missing event_id": (wire(without(txn(), "event_id")), "event_id", ["missing", "event_id"]),
    "missing type": (wire(without(txn(), "type")), "type", ["missing", "type"]),
    "attrs.amt as a string": (wire(with_attrs(txn(), amt="2.86")), "attrs.amt", ["float", "str"]),
    "unknown type": (wire(txn(type="refund")), "type", ["refund"]),
    "ts without offset": (wire(txn(ts="2020-06-21T12:14:02")), "ts", ["no UTC offset"]),
    "ts as float": (wire(txn(ts=1_592_741_642_000.5)), "ts", ["float"]),
    "ts in seconds*1e6 (out of range)": (wire(txn(ts=10**16)), "ts", ["<="]),
    "oversized payload": (
        wire(with_attrs(txn(), merchant="x" * MAX_EVENT_BYTES)),
        "event",
        ["bytes", "exceeds", str(MAX_EVENT_BYTES)],
    ),
    "empty entity_id": (wire(txn(entity_id="")), "entity_id", ["length >= 1"]),
    "empty event_id": (wire(txn(event_id="")), "event_id", ["length >= 1"]),
    "lat out of range in a profile": (wire(profile(lat=91.0)), "attrs.lat", ["<= 90"]),
    "merch_long out of range": (wire(with_attrs(txn(), merch_long=-180.5)), "attrs.merch_long", [">= -180"]),
    "city_pop negative": (wire(profile(city_pop=-1)), "attrs.city_pop", [">= 0"]),
}


@pytest.mark.parametrize("name", list(INVALID))
def test_invalid_event_names_field_and_reason(codec: EventCodec, name: str) -> None:
    payload, field, words = INVALID[name]
    with pytest.raises(EventError) as info:
        codec.decode(payload)
    err = info.value
    assert err.field == field, (name, err.field, str(err))
    message = str(err)
    assert f"'{field}'" in message, message
    for word in words:
        assert word.lower() in message.lower(), (name, word, message)
        assert word.lower() in err.reason.lower(), (name, word, err.reason)


def test_missing_attribute_names_the_attribute(codec: EventCodec) -> None:
    payload = wire({**txn(), "attrs": {k: v for k, v in txn()["attrs"].items() if k != "amt"}})
    with pytest.raises(EventError) as info:
        codec.decode(payload)
    assert "missing" in info.value.reason and "amt" in info.value.reason  # holds today
    assert info.value.field == "attrs.amt", info.value.field


def test_non_utf8_outside_strings_is_an_event_error(codec: EventCodec) -> None:
    with pytest.raises(EventError) as info:
        codec.decode(b"\xff" + wire(txn()))
    assert info.value.field == "event" and "malformed" in str(info.value)


NON_UTF8 = {
    "invalid byte in a string": wire(txn()).replace(b'"t-1"', b'"t-\xff1"'),
    "latin-1 encoded merchant": json.dumps(
        with_attrs(txn(), merchant="Caf\u00e9 Kirlin"), ensure_ascii=False
    ).encode("latin-1"),
}


@pytest.mark.parametrize("name", list(NON_UTF8))
def test_non_utf8_in_a_string_is_an_event_error(codec: EventCodec, name: str) -> None:
    with pytest.raises(EventError) as info:
        codec.decode(NON_UTF8[name])
    assert info.value.field in ("event", "event_id", "attrs.merchant")
    assert "utf-8" in str(info.value).lower()


def test_build_names_field_and_reason(codec: EventCodec) -> None:
    attrs = txn()["attrs"]
    with pytest.raises(EventError) as info:
        codec.build("transaction", "t-1", "card", TS_MS, {**attrs, "amt": "not a number"})
    assert info.value.field == "attrs.amt" and "float" in info.value.reason
    with pytest.raises(EventError) as info:
        codec.build("refund", "t-1", "card", TS_MS, attrs)
    assert info.value.field == "type" and "refund" in str(info.value)
    with pytest.raises(EventError) as info:
        codec.build("transaction", "t-1", "", TS_MS, attrs)
    assert info.value.field == "entity_id"
    with pytest.raises(EventError) as info:
        codec.build("transaction", "", "card", TS_MS, attrs)
    assert info.value.field == "event_id"


# --- RecordCodec ----------------------------------------------------------------------


def _txn_event(codec: EventCodec, i: int, ts: int, amt: float, category: str = "grocery_pos") -> Event:
    attrs = {
        "merchant": f"m{i % 3}",
        "category": category,
        "amt": amt,
        "merch_lat": 34.0,
        "merch_long": -81.0,
    }
    return codec.build("transaction", f"t-{i}", "card", ts, attrs)


def _history(spec: Spec) -> tuple[Engine, EventCodec]:
    """An engine whose record for "card" has a profile, items, a duplicate and a late event."""
    codec = EventCodec(spec)
    engine = Engine(spec)
    hour = 3_600_000
    events = [
        codec.decode(wire({**profile(), "entity_id": "card"})),
        _txn_event(codec, 1, TS_MS, 12.5),
        _txn_event(codec, 2, TS_MS + hour, 1_000_000.01, "shopping_net"),
        _txn_event(codec, 3, TS_MS + hour, 7.25),  # same ts
        _txn_event(codec, 2, TS_MS + hour, 1_000_000.01, "shopping_net"),  # duplicate
        _txn_event(codec, 4, TS_MS + 30 * hour, 99.99),
        _txn_event(codec, 5, TS_MS + 20 * hour, 3.0, "shopping_net"),  # late, within a day
        codec.decode(wire({**profile(city="Irmo", lat=34.08), "entity_id": "card", "event_id": "p-2"})),
        codec.decode(wire({**profile(), "entity_id": "card", "event_id": "p-1"})),  # duplicate
    ]
    result = engine.process(events)
    assert not result.rejected and result.duplicates == 2 and len(result.rows) == 5
    return engine, codec


def test_record_round_trip_keeps_everything(spec: Spec) -> None:
    engine, _ = _history(spec)
    rec = engine.records["card"]
    records = RecordCodec(spec)
    data = records.encode(rec)
    back = records.decode(data)
    assert back.entity_id == "card"
    assert back.fixed == rec.fixed
    assert back.fixed["city"] == "Irmo" and back.fixed["first"] == "Jeff"  # last write per field
    assert back.fixed["dob"] == dt.date(1968, 3, 19)
    assert back.items == rec.items
    assert [it[1] for it in back.items["transactions"]] == ["t-1", "t-2", "t-3", "t-5", "t-4"]
    assert back.lifetime == rec.lifetime
    assert back.last_ts == rec.last_ts
    assert back.duplicates == rec.duplicates == 2
    assert back.fixed_ids == rec.fixed_ids == ["p-1", "p-2"]
    assert back.ids == rec.ids
    assert records.encode(back) == data


def test_snapshot_encodes_the_record_as_it_was_when_taken(spec: Spec) -> None:
    engine, codec = _history(spec)
    records = RecordCodec(spec)
    rec = engine.records["card"]
    before = records.encode(rec)
    snapshot = records.snapshot(rec)
    hour = 3_600_000
    more = [  # appends, a profile change, a duplicate: every kind of in-place change
        _txn_event(codec, 6, TS_MS + 31 * hour, 5.0),
        codec.decode(wire({**profile(city="Aiken"), "entity_id": "card", "event_id": "p-3"})),
        _txn_event(codec, 6, TS_MS + 31 * hour, 5.0),
        _txn_event(codec, 7, TS_MS + 60 * 24 * hour, 9.0),  # a month later: retention drops items
    ]
    assert not engine.process(more).rejected
    assert records.encode(rec) != before
    assert records.encode_snapshot(snapshot) == before


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= max(1e-9 * max(abs(a), abs(b)), 1e-12)


def test_decoded_record_produces_the_same_features(spec: Spec) -> None:
    original, codec = _history(spec)
    restarted = Engine(spec)
    restarted.records["card"] = RecordCodec(spec).decode(original.codec.encode(original.records["card"]))
    hour = 3_600_000
    nexts = [
        _txn_event(codec, 6, TS_MS + 30 * hour, 42.0),  # same ts as the newest
        _txn_event(codec, 7, TS_MS + 29 * hour, 1_000_000.02, "shopping_net"),  # late
        _txn_event(codec, 3, TS_MS + hour, 7.25),  # duplicate of a retained item
        _txn_event(codec, 8, TS_MS + 5 * hour, 1.0),  # beyond the allowed lateness
        _txn_event(codec, 9, TS_MS + 31 * hour, 0.01),
    ]
    expected = ["scored", "late", "duplicate", "rejected", "scored"]
    for event, outcome in zip(nexts, expected, strict=True):
        a = original.process([event])
        b = restarted.process([event])
        got = (
            "rejected" if a.rejected else "duplicate" if a.duplicates else "late" if any(a.late) else "scored"
        )
        assert got == outcome, (event.event_id, got)
        assert [e.event_id for e in a.scored] == [e.event_id for e in b.scored]
        assert [e.event_id for e, _ in a.rejected] == [e.event_id for e, _ in b.rejected]
        assert a.duplicates == b.duplicates and a.late == b.late
        for ra, rb in zip(a.rows, b.rows, strict=True):
            bad = [n for n, x, y in zip(spec.feature_names, ra, rb, strict=True) if not _close(x, y)]
            assert not bad, (event.event_id, bad)
    rec_a, rec_b = original.records["card"], restarted.records["card"]
    assert rec_a.items == rec_b.items and rec_a.duplicates == rec_b.duplicates == 3


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: b"",
        lambda d: d[: len(d) // 2],
        lambda d: d[:-1],
        lambda d: d + b"\x00",
        lambda d: b"not msgpack at all",
        lambda d: msgspec.msgpack.encode({"v": 1, "layout": "x"}),
        lambda d: bytes(b ^ 0xFF for b in d),
    ],
    ids=["empty", "half", "truncated", "trailing", "garbage", "wrong shape", "inverted"],
)
def test_corrupt_bytes_raise_record_error(spec: Spec, mangle: Any) -> None:
    engine, _ = _history(spec)
    records = RecordCodec(spec)
    data = records.encode(engine.records["card"])
    with pytest.raises(RecordError):
        records.decode(mangle(data))


def test_other_schema_version_is_refused(spec: Spec) -> None:
    engine, _ = _history(spec)
    records = RecordCodec(spec)
    raw = msgspec.msgpack.decode(records.encode(engine.records["card"]))
    raw[0] += 1
    with pytest.raises(RecordError, match="schema version"):
        records.decode(msgspec.msgpack.encode(raw))


def _other_fixed_layout(spec: Spec) -> Spec:
    fixed = dataclasses.replace(spec.fixed, fields={**spec.fixed.fields, "email": str})
    return dataclasses.replace(spec, fixed=fixed)


def _other_retention(spec: Spec) -> Spec:
    rep = spec.repeated["transactions"]
    return dataclasses.replace(
        spec, repeated={"transactions": dataclasses.replace(rep, retention=2 * rep.retention)}
    )


def _other_repeated_field(spec: Spec) -> Spec:
    rep = spec.repeated["transactions"]
    rep = dataclasses.replace(rep, fields={**rep.fields, "channel": str})
    return dataclasses.replace(spec, repeated={"transactions": rep})


@pytest.mark.parametrize("other", [_other_fixed_layout, _other_retention, _other_repeated_field])
def test_empty_record_of_another_layout_names_the_layout(spec: Spec, other: Any) -> None:
    data = RecordCodec(other(spec)).encode(RecordCodec(other(spec)).new("card"))
    with pytest.raises(RecordError, match="layout"):
        RecordCodec(spec).decode(data)


@pytest.mark.parametrize("other", [_other_fixed_layout, _other_retention])
def test_record_of_another_layout_names_the_layout(spec: Spec, other: Any) -> None:
    engine, _ = _history(spec)
    data = engine.codec.encode(engine.records["card"])
    with pytest.raises(RecordError, match="layout"):
        RecordCodec(other(spec)).decode(data)
    # and the other way round
    other_engine, _ = _history(other(spec))
    with pytest.raises(RecordError, match="layout"):
        RecordCodec(spec).decode(other_engine.codec.encode(other_engine.records["card"]))


def test_record_with_items_of_another_repeated_layout_names_the_layout(spec: Spec) -> None:
    engine, _ = _history(spec)
    data = engine.codec.encode(engine.records["card"])
    with pytest.raises(RecordError, match="layout"):
        RecordCodec(_other_repeated_field(spec)).decode(data)


def test_fraud_record_layout_hash_is_that_of_stores_written_before_issue_17(spec: Spec) -> None:
    # The spec API changed (retention instead of max_age) but not the record layout:
    # records already in a store must stay readable.
    assert spec.layout_hash() == "f75d7c08708fb19e"
