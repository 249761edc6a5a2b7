"""Stored columns (``entities/columns.py``): exact round trips, compact forms, refusals.

Items decode to the very tuples that were encoded (bit for bit for floats, the same
ids, the same text), whatever the values: Hypothesis draws them. Compact forms are
checked by size, and a version-1 record (tuples of items) still decodes.
"""

from __future__ import annotations

import datetime as dt
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entities.columns import ColumnsCodec, ColumnsError, Ids, decode_ids, encode_ids
from entities.engine import Engine
from entities.events import EventCodec
from entities.record import RecordCodec, RecordError
from entities.spec import Spec, load_spec_module

FRAUD_SPEC = Path(__file__).resolve().parents[1] / "examples" / "fraud" / "spec.py"
FIELDS = {"merchant": str, "amt": float, "n": int, "ok": bool, "day": dt.date, "note": str | None}


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    """Equal items, floats compared by their bits (NaN == NaN, -0.0 != 0.0)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if type(u) is not type(v):
                return False
            if isinstance(u, float) and _bits(u) != _bits(v):
                return False
            if not isinstance(u, float) and u != v:
                return False
    return True


hex_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
any_ids = st.one_of(hex_ids, st.text(min_size=1, max_size=40), hex_ids.map(str.upper))
items = st.lists(
    st.tuples(
        st.integers(-(2**62), 2**62),
        any_ids,
        st.sampled_from(["a", "b", "ü", "fraud_Kirlin and Sons", ""]) | st.text(max_size=8),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**63), 2**64 - 1),
        st.booleans(),
        st.dates(),
        st.none() | st.text(max_size=5),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(items)
def test_columns_round_trip_exactly(drawn: list[tuple[Any, ...]]) -> None:
    codec = ColumnsCodec("things", FIELDS)
    data = msgspec.msgpack.encode(codec.encode(drawn))
    back = codec.decode(msgspec.msgpack.decode(data, type=codec.struct))
    assert _same(list(back), drawn)


def test_hex_ids_take_16_bytes_and_anything_else_stays_text() -> None:
    ids = tuple(f"{i:032x}" for i in range(100))
    assert encode_ids(ids).text is None and len(encode_ids(ids).hex) == 1_600
    assert decode_ids(encode_ids(ids), 100) == list(ids)
    for odd in ("ABCDEF" + "0" * 26, "0" * 31, "0" * 33, "00 " + "0" * 29, "g" * 32):
        assert encode_ids((*ids[:3], odd)).text == [*ids[:3], odd], odd


def test_text_codes_widen_past_256_values_and_strings_are_shared() -> None:
    codec = ColumnsCodec("things", {"merchant": str})
    drawn = [(i, f"{i:032x}", f"merchant {i % 300}") for i in range(600)]
    columns = codec.encode(drawn)
    assert len(columns.f0.values) == 300 and len(columns.f0.codes) == 1_200  # 2 bytes each
    back = codec.decode(msgspec.msgpack.decode(msgspec.msgpack.encode(columns), type=codec.struct))
    assert back == drawn
    assert back[0][2] is back[300][2]  # one object per distinct value


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: msgspec.structs.replace(c, n=c.n + 1),
        lambda c: msgspec.structs.replace(c, ts=c.ts[:-1]),
        lambda c: msgspec.structs.replace(c, ids=Ids(hex=c.ids.hex[:-1])),
        lambda c: msgspec.structs.replace(c, f1=c.f1[:-8]),
        lambda c: msgspec.structs.replace(c, f0=msgspec.structs.replace(c.f0, values=[])),
        lambda c: msgspec.structs.replace(c, f0=msgspec.structs.replace(c.f0, codes=b"\x00")),
    ],
    ids=["count", "ts", "ids", "floats", "text values", "text codes"],
)
def test_columns_that_do_not_fit_together_are_refused(mangle: Any) -> None:
    codec = ColumnsCodec("things", {"merchant": str, "amt": float})
    columns = codec.encode([(i, f"{i:032x}", f"m{i % 2}", i / 3) for i in range(5)])
    with pytest.raises(ColumnsError):
        codec.decode(mangle(columns))


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec_module(FRAUD_SPEC).spec  # type: ignore[no-any-return]


def _record(spec: Spec) -> Engine:
    codec = EventCodec(spec)
    engine = Engine(spec)
    attrs = {"merchant": "m", "category": "c", "amt": 1.5, "merch_lat": 34.0, "merch_long": -81.0}
    engine.process(
        [codec.build("transaction", f"{i:032x}", "card", 1_592_741_642_000 + i, attrs) for i in range(9)]
    )
    return engine


def test_a_version_1_record_still_decodes(spec: Spec) -> None:
    """Records stored before columns (tuples of items) are read as they were."""
    engine = _record(spec)
    rec = engine.records["card"]
    v1 = [1, spec.layout_hash(), "card", {}, [[list(it) for it in rec.items["transactions"]]]]
    v1 += [rec.lifetime, rec.last_ts, rec.duplicates, rec.offset, rec.fixed_ids]
    codec = RecordCodec(spec)
    back = codec.decode(msgspec.msgpack.encode(v1))
    assert back.items == rec.items and back.lifetime == rec.lifetime and back.ids == rec.ids
    assert codec.encode(back) == codec.encode(rec)  # and is written as version 2
    assert codec.encode(rec)[1] == 2


def test_a_version_1_record_of_another_layout_is_refused(spec: Spec) -> None:
    v1 = [1, "another", "card", {}, [[]], {}, {}, 0, -1, []]
    with pytest.raises(RecordError, match="layout"):
        RecordCodec(spec).decode(msgspec.msgpack.encode(v1))


def test_columns_are_smaller_than_tuples(spec: Spec) -> None:
    engine = _record(spec)
    items = engine.records["card"].items["transactions"]
    columns = RecordCodec(spec)._columns[0].encode(items)
    # 16 bytes per id instead of 34 (one-letter text gains nothing here)
    assert len(msgspec.msgpack.encode(columns)) < 0.75 * len(msgspec.msgpack.encode(list(items)))
