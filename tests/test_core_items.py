"""Items as columns against a plain list of item tuples: same items, same dedupe answers."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from entities.aggregators import Counter, Extreme, Keyed, Tally
from entities.items import EventIds, Items, field_kinds, hex_key

FIELDS = {"merchant": str, "amt": float, "n": int | None}
KINDS = field_kinds(FIELDS)

hex_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
# Mostly hex ids (the compact form), sometimes others (the switch to strings), and
# upper-case hex, which must not be taken for its lowercase twin.
ids = st.one_of(hex_ids, hex_ids, st.text(min_size=1, max_size=6), hex_ids.map(str.upper))
items = st.tuples(
    st.integers(-(2**40), 2**40),
    ids,
    st.sampled_from(["a", "b", "fraud_Kirlin"]),
    st.floats(allow_nan=True),
    st.none() | st.integers(-5, 5),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), items),
        st.tuples(st.just("insert"), st.integers(0, 40), items),
        st.tuples(st.just("drop"), st.integers(0, 5)),
        st.tuples(st.just("has"), ids),
    ),
    max_size=60,
)


def _bits(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """An item with floats as their bits (NaN equal to itself, -0.0 apart from 0.0)."""
    return tuple(struct.pack("<d", v) if isinstance(v, float) else v for v in item)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_items_behave_as_a_list_of_tuples(seq: list[tuple[Any, ...]]) -> None:
    got = Items(KINDS)
    want: list[tuple[Any, ...]] = []
    dropped = 0
    for op in seq:
        if op[0] == "append":
            got.append(op[1])
            want.append(op[1])
        elif op[0] == "insert":
            at = min(op[1], len(want))
            got.insert(at, op[2])
            want.insert(at, op[2])
        elif op[0] == "drop":
            got.drop(op[1])
            dropped += min(op[1], len(want))
            del want[: op[1]]
        else:
            assert (op[1] in got.ids) == any(it[1] == op[1] for it in want), op[1]
        assert [_bits(it) for it in got] == [_bits(it) for it in want]
    assert got.dropped == dropped
    assert len(got.ids) == len(want)
    assert [_bits(it) for it in got.part(1, 3)] == [_bits(it) for it in want[1:3]]
    assert [(it[0], *it[2:]) for it in map(_bits, got.values(0, len(want)))] == [
        (it[0], *it[2:]) for it in map(_bits, want)
    ]


def test_hex_ids_take_16_bytes_and_a_match_must_be_aligned() -> None:
    a, b = "0123456789abcdef" * 2, "fedcba9876543210" * 2
    ids = EventIds()
    ids.append(a)
    ids.append(b)
    assert ids.raw is not None and len(ids.raw) == 32
    # the last 8 bytes of a and the first 8 of b, as an id: found in the bytes, not an id
    straddle = (bytes.fromhex(a)[8:] + bytes.fromhex(b)[:8]).hex()
    assert bytes.fromhex(straddle) in ids.raw and straddle not in ids
    assert a in ids and b in ids and a.upper() not in ids
    assert hex_key(a.upper()) is None and hex_key(a[:-1]) is None and hex_key(a) == bytes.fromhex(a)


def _state(agg: Any) -> Any:
    """An aggregator's state, floats as bits (NaN equal to itself), in its order."""
    if isinstance(agg, Extreme):
        return [(_bits((v,)), seq) for v, seq in agg.dq]
    if isinstance(agg, Counter):
        return [(_bits((k,)), n) for k, n in agg.counts.items()]
    if isinstance(agg, Tally):
        return agg.n
    assert isinstance(agg, Keyed)
    return [(k, _state(part)) for k, part in agg.parts.items()]


@settings(max_examples=200, deadline=None)
@given(st.lists(items, max_size=40), st.integers(0, 5), st.data())
def test_fill_from_columns_gives_the_state_of_adding_item_by_item(
    rows: list[tuple[Any, ...]], drop: int, data: st.DataObject
) -> None:
    """Loading a record rebuilds windows with ``fill``; the hot path keeps them with ``add``."""
    columns = Items(KINDS)
    for row in rows:
        columns.append(row)
    columns.drop(drop)  # item numbers (seq) start at ``dropped``
    n = len(columns)
    lo = data.draw(st.integers(0, n))
    hi = data.draw(st.integers(lo, n))
    makers: list[Callable[[], Any]] = [
        lambda: Extreme(3, True),  # amt, NaN included
        lambda: Extreme(3, False),
        lambda: Counter(2),  # merchant
        lambda: Counter(3),
        Tally,
        lambda: Keyed(2, Tally),  # counted per key in C
        lambda: Keyed(2, lambda: Extreme(3, True)),  # not filled: added item by item
    ]
    for make in makers:
        filled, added = make(), make()
        for seq, item in enumerate(columns[lo:hi], columns.dropped + lo):
            added.add(item, seq)
        if isinstance(filled, Keyed) and filled.make is not Tally:
            assert not filled.fill(columns, lo, hi) and _state(filled) == []  # left to add, untouched
            continue
        assert filled.fill(columns, lo, hi)
        assert _state(filled) == _state(added)
