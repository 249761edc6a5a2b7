"""Features read from a record's items at the scored event, and the record view.

The compiled row code calls these for what is not a running aggregate of the scored
event's own attribute: windows over another attribute, windows of aggregations with
no running family, filtered time-since, lifetime aggregates of other attributes or
under a filter, and derived functions that take the record. Each factory returns a
function ``read(record, item, items)``: ``item`` is the scored item, ``items`` its
attribute's items up to and including it.

Costs, with ``n`` retained items of the attribute read: a window of another attribute
is found by two bisections on ts (O(log n)); an unfiltered count is their difference,
anything else scans the window's items once (O(k) for k items in the window).
Time-since scans back from the scored event's time to the newest qualifying item.
Lifetime reads are O(1).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from entities.aggregations import ZSCORE_MIN_STD, Agg
from entities.aggregators import _ILL_CONDITIONED, Item, compensated, exact_centred, exact_std
from entities.filters import Compare, Filter, SameAsCurrent
from entities.items import Items
from entities.plan import AttributePlan, LifetimeKey, item_test
from entities.record import SupernovaRecord

NAN = math.nan
Read = Callable[[SupernovaRecord, Item, Items], float]
Qualifies = Callable[[Item, Item], bool]  # (item, scored item) -> whether it qualifies


def qualifier(where: tuple[Filter, ...], rp: AttributePlan, own: AttributePlan) -> Qualifies | None:
    """Whether an item of ``rp`` passes ``where`` for a scored item of ``own`` (None: no filter)."""
    if not where:
        return None
    consts = rp.consts(where)
    test = item_test(consts) if consts else None
    pairs = [(rp.index[w.field], own.index[w.field]) for w in where if isinstance(w, SameAsCurrent)]

    def qualifies(it: Item, cur: Item) -> bool:
        if test is not None and not test(it):
            return False
        return all(it[i] == cur[j] for i, j in pairs)

    return qualifies


def _source(
    rp: AttributePlan, own: AttributePlan
) -> Callable[[SupernovaRecord, Item, Items], tuple[Items, int]]:
    """(items, hi) of ``rp`` visible to a scored item of ``own``: items[:hi] qualify by arrival."""
    if rp is own:
        return lambda record, item, items: (items, len(items.ts))
    name = rp.name

    def other(record: SupernovaRecord, item: Item, items: Items) -> tuple[Items, int]:
        src = record.items[name]
        return src, bisect_right(src.ts, item[0])

    return other


def window(agg: Agg, length: int, rp: AttributePlan, own: AttributePlan, where: tuple[Filter, ...]) -> Read:
    """``agg`` over the items of ``rp`` in ``(t - length, t]`` that pass ``where``."""
    source = _source(rp, own)
    qualifies = qualifier(where, rp, own)
    idx = -1 if agg.field is None else rp.index[agg.field]
    cur = own.index[agg.field] if agg.own_only and agg.field is not None else None
    of = agg.of

    def read(record: SupernovaRecord, item: Item, items: Items) -> float:
        src, hi = source(record, item, items)
        lo = bisect_right(src.ts, item[0] - length, 0, hi)
        if qualifies is None and idx < 0:
            return float(hi - lo)
        if qualifies is None:
            return of(list(src.column(idx)[lo:hi]), None if cur is None else item[cur])
        sel = [it for it in src.values(lo, hi) if qualifies(it, item)]
        return of(sel if idx < 0 else [it[idx] for it in sel], None if cur is None else item[cur])

    return read


def time_since(rp: AttributePlan, own: AttributePlan, where: tuple[Filter, ...]) -> Read:
    """Seconds from the newest earlier item of ``rp`` with ts <= t passing ``where`` (NaN if none)."""
    source = _source(rp, own)
    qualifies = qualifier(where, rp, own)
    back = 2 if rp is own else 1  # the own attribute's last visible item is the scored one

    def read(record: SupernovaRecord, item: Item, items: Items) -> float:
        src, hi = source(record, item, items)
        t = item[0]
        if qualifies is None:
            return (t - src.ts[hi - back]) / 1000.0 if hi - back >= 0 else NAN
        for j in range(hi - back, -1, -1):
            (it,) = src.values(j, j + 1)
            if qualifies(it, item):
                return (t - it[0]) / 1000.0
        return NAN

    return read


def lifetime(op: str, fld: str | None, rp: AttributePlan, own: AttributePlan, key: LifetimeKey) -> Read:
    """The lifetime aggregate ``op`` of ``fld`` of ``rp`` under ``key``'s filter."""
    name = rp.name
    cur = [own.index[f] for f in _key_fields(rp, key)]

    def read(record: SupernovaRecord, item: Item, items: Items) -> float:
        stats = record.lifetime[name]
        prefix = key.state_key(tuple(item[i] for i in cur))
        n = stats.get(prefix)
        if op == "count":
            return n[0] if n else 0.0
        st = stats.get(prefix + fld) if fld is not None else None
        if st is None:
            return 0.0 if op == "sum" else NAN
        if op == "sum":
            return st[0] + st[1]
        if op == "mean":
            return (st[0] + st[1]) / n[0]  # type: ignore[index]
        return st[2] if op == "min" else st[3]

    return read


def _key_fields(rp: AttributePlan, key: LifetimeKey) -> list[str]:
    names = {i: f for f, i in rp.index.items()}
    return [names[i] for i in key.keys]


def lifetime_updater(rp: AttributePlan) -> Callable[[dict[str, list[float]], Item], None]:
    """Update the filtered lifetime aggregates of ``rp`` with an appended item."""
    plans = [
        (key, item_test(key.consts) if key.consts else None, [(f, rp.index[f]) for f in fields])
        for key, fields in rp.filtered_lifetime.items()
    ]

    def update(stats: dict[str, list[float]], item: Item) -> None:
        for key, test, fields in plans:
            if test is not None and not test(item):
                continue
            prefix = key.state_key(tuple(item[i] for i in key.keys))
            n = stats.get(prefix)
            if n is None:
                stats[prefix] = [1.0]
            else:
                n[0] += 1.0
            for fld, i in fields:
                x = float(item[i])
                st = stats.get(prefix + fld)
                if st is None:
                    stats[prefix + fld] = [x, 0.0, x, x]
                    continue
                st[0], st[1] = compensated(st[0], st[1], x)
                if x < st[2]:
                    st[2] = x
                if x > st[3]:
                    st[3] = x

    return update


def running(op: str, idx: int, rp: AttributePlan, where: tuple[Filter, ...]) -> Callable[..., float]:
    """Value of a running aggregator of a filtered window of the own attribute.

    Returns ``read(agg, item, items, lo)``: ``agg`` the window's aggregator (``Filtered``
    and/or ``Keyed``), ``items[lo:]`` the window (for the exact std of an
    ill-conditioned window).
    """
    keys = rp.keys(where)
    filtered = any(isinstance(w, Compare) for w in where)
    qualifies = qualifier(where, rp, rp)

    def part_of(agg: Any, item: Item) -> Any:
        if filtered:
            agg = agg.inner
        if keys:
            agg = agg.get(item[keys[0]] if len(keys) == 1 else tuple(item[i] for i in keys))
        return agg

    def values(item: Item, items: Items, lo: int) -> list[float]:
        return [it[idx] for it in items.values(lo, len(items.ts)) if qualifies is None or qualifies(it, item)]

    def read(agg: Any, item: Item, items: Items, lo: int) -> float:
        part = part_of(agg, item)
        if op == "count":
            return float(part.n) if part is not None else 0.0
        if op == "distinct":
            return float(len(part.counts)) if part is not None else 0.0
        if op in ("min", "max"):
            return part.value() if part is not None else NAN  # type: ignore[no-any-return]
        if op == "sum":
            return part.total() if part is not None else 0.0  # type: ignore[no-any-return]
        if op == "mean":
            return part.mean() if part is not None else NAN  # type: ignore[no-any-return]
        n = part.n if part is not None else 0
        if n == 0:
            return NAN if op == "std" else 0.0
        s = part.s + part.cs
        q = part.q + part.cq
        centred = q - s * s / n
        vals = None
        if n == 1:
            sd = 0.0
        elif centred > _ILL_CONDITIONED * q:
            sd = math.sqrt(centred / n)
        else:
            vals = values(item, items, lo)
            sd = exact_std(vals)
        if op == "std":
            return sd
        if not sd >= ZSCORE_MIN_STD:
            return 0.0
        x = item[idx]
        return (x - s / n if vals is None else exact_centred(x, vals)) / sd

    return read


# --- the record as derived functions see it ------------------------------------------


class Column:
    """One field of an attribute's visible items, by position (read-only)."""

    __slots__ = ("column", "n")

    def __init__(self, items: Items, idx: int, n: int) -> None:
        self.column = items.column(idx)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError("item index out of range")
        return self.column[i]

    def __iter__(self) -> Iterator[Any]:
        return (self.column[i] for i in range(self.n))


class AttributeView:
    """The visible items of one repeated attribute, oldest first: ``len``, ``.ts[i]``, ``view[field][i]``."""

    __slots__ = ("index", "items", "n")

    def __init__(self, items: Items, n: int, index: Mapping[str, int]) -> None:
        self.items = items
        self.n = n
        self.index = index

    def __len__(self) -> int:
        return self.n

    @property
    def ts(self) -> Column:
        """Event times in epoch ms."""
        return Column(self.items, 0, self.n)

    def __getitem__(self, field_name: str) -> Column:
        try:
            return Column(self.items, self.index[field_name], self.n)
        except KeyError:
            raise KeyError(f"no field {field_name!r} (have {list(self.index)})") from None


class RecordView:
    """A read-only view of a record at a scored event.

    ``fixed``: the fixed attributes; ``view[name]``: the retained items of a repeated
    attribute that arrived up to the scored event (its own attribute: up to and
    including it; others: arrived before, with ts <= t).
    """

    __slots__ = ("_attrs", "_item", "_items", "_own", "_record", "fixed")

    def __init__(
        self,
        record: SupernovaRecord,
        attrs: Mapping[str, AttributePlan],
        own: str,
        item: Item,
        items: Items,
    ) -> None:
        self.fixed: Mapping[str, Any] = MappingProxyType(record.fixed)
        self._record = record
        self._attrs = attrs
        self._own = own
        self._item = item
        self._items = items

    def __getitem__(self, name: str) -> AttributeView:
        rp = self._attrs.get(name)
        if rp is None:
            raise KeyError(f"no repeated attribute {name!r} (have {list(self._attrs)})")
        if name == self._own:
            return AttributeView(self._items, len(self._items.ts), rp.index)
        src = self._record.items[name]
        return AttributeView(src, bisect_right(src.ts, self._item[0]), rp.index)

    def keys(self) -> list[str]:
        """Names of the repeated attributes."""
        return list(self._attrs)


def derived_with_record(
    fn: Callable[..., float], attrs: Mapping[str, AttributePlan], own: str
) -> Callable[[Any, SupernovaRecord, Item, Items], float]:
    """``read(event, record, item, items)`` calling ``fn(event, fixed, record_view)``."""

    def read(event: Any, record: SupernovaRecord, item: Item, items: Items) -> float:
        return float(fn(event, record.fixed, RecordView(record, attrs, own, item, items)))

    return read
