"""Incremental features: apply one event to its record and return the feature row.

The :class:`FeaturePlan` compiles a spec once. For each repeated attribute it keeps,
per distinct window length, a start index into the record's items and the
aggregators that the window features need (shared between features that need the
same one). An in-order event is appended, added to every window and the items that
fell out are removed: no rescan of history. A late event (older than the entity's
newest, within ``allowed_lateness``) is inserted in ts order and its features are
computed over its own window slice; the windows are then rebuilt around the newest
item. Both paths use the same aggregators and evaluators.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from entities.aggregators import Counter, Extreme, Item, Keyed, Moments
from entities.events import Event, EventError, LateEventError
from entities.record import RECENT_FIXED_IDS, SupernovaRecord
from entities.spec import (
    ZSCORE_MIN_STD,
    Current,
    Derived,
    Lifetime,
    Repeated,
    Spec,
    TimeSincePrevious,
    Window,
)

NAN = math.nan


def _ts(item: Item) -> int:
    return item[0]  # type: ignore[no-any-return]


class _Group:
    """Live aggregators of one window length: items[lo:] of the record are inside."""

    __slots__ = ("length", "lo", "aggs")

    def __init__(self, length: int, lo: int, aggs: list[Any]) -> None:
        self.length = length
        self.lo = lo
        self.aggs = aggs


@dataclass(frozen=True)
class _AggKey:
    family: str  # moments | max | min | counter
    idx: int
    where: int | None  # index of the same-as-current field, if filtered


class _Eval:
    """What evaluators read: the current item, its window groups, record state."""

    __slots__ = ("item", "event", "groups", "items", "prev_ts", "lifetime", "fixed")

    item: Item
    event: Event
    groups: list[_Group]
    items: list[Item]
    prev_ts: int | None
    lifetime: dict[str, list[float]]
    fixed: dict[str, Any]


class _RepeatedPlan:
    """Everything the plan knows about one repeated attribute."""

    def __init__(self, name: str, rep: Repeated, allowed_lateness: int) -> None:
        self.name = name
        self.rep = rep
        self.index = {f: 2 + i for i, f in enumerate(rep.fields)}
        self.lengths: list[int] = []
        self.agg_keys: list[list[_AggKey]] = []
        self.lifetime_fields: list[str] = []
        self.allowed_lateness = allowed_lateness

    def agg_slot(self, length: int, key: _AggKey) -> tuple[int, int]:
        """Index of the group for ``length`` and of the aggregator for ``key`` in it."""
        if length not in self.lengths:
            self.lengths.append(length)
            self.agg_keys.append([])
        g = self.lengths.index(length)
        keys = self.agg_keys[g]
        if key not in keys:
            keys.append(key)
        return g, keys.index(key)

    def make_aggs(self, g: int) -> list[Any]:
        """Fresh aggregators of group ``g``."""
        return [_make_agg(k) for k in self.agg_keys[g]]


def _make_agg(key: _AggKey) -> Any:
    def one() -> Any:
        if key.family == "moments":
            return Moments(key.idx)
        if key.family in ("max", "min"):
            return Extreme(key.idx, largest=key.family == "max")
        return Counter(key.idx)

    return one() if key.where is None else Keyed(key.where, one)


class FeaturePlan:
    """A spec compiled for incremental evaluation; ``apply`` is the core's one entry point."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.feature_names = spec.feature_names
        lateness = spec.allowed_lateness
        self.repeated = {n: _RepeatedPlan(n, r, lateness) for n, r in spec.repeated.items()}
        self.by_type = {p.rep.event_type: p for p in self.repeated.values()}
        self.fixed_type = spec.fixed.event_type
        self.scored = self.repeated[spec.scored_repeated]
        self.evaluators: list[Callable[[_Eval], float]] = [self._compile(f) for f in spec.features]

    # --- compilation ---------------------------------------------------------------

    def _compile(self, f: Any) -> Callable[[_Eval], float]:
        scored = self.scored
        if isinstance(f, Current):
            idx = scored.index[f.field]
            return lambda e: float(e.item[idx])
        if isinstance(f, Derived):
            fn = f.fn
            return lambda e: float(fn(e.event, e.fixed))
        if isinstance(f, TimeSincePrevious):
            if self.repeated[f.repeated] is not scored:
                raise EventError("spec", f"{f.name}: time since previous needs the scored attribute")
            return lambda e: NAN if e.prev_ts is None else (e.item[0] - e.prev_ts) / 1000.0
        if isinstance(f, Lifetime):
            return self._compile_lifetime(f)
        assert isinstance(f, Window)
        return self._compile_window(f)

    def _compile_lifetime(self, f: Lifetime) -> Callable[[_Eval], float]:
        rp = self.repeated[f.repeated]
        if rp is not self.scored:
            raise EventError("spec", f"{f.name}: lifetime features need the scored attribute")
        kind, fld = f.agg.kind, f.agg.field
        if fld is not None and fld not in rp.lifetime_fields:
            rp.lifetime_fields.append(fld)
        if kind == "count":
            return lambda e: float(e.lifetime[""][0])
        pos = {"sum": None, "mean": None, "min": 2, "max": 3}[kind]
        if kind == "sum":
            return lambda e: e.lifetime[fld][0] + e.lifetime[fld][1]  # type: ignore[index]
        if kind == "mean":
            return lambda e: (e.lifetime[fld][0] + e.lifetime[fld][1]) / e.lifetime[""][0]  # type: ignore[index]
        return lambda e: e.lifetime[fld][pos]  # type: ignore[index]

    def _compile_window(self, f: Window) -> Callable[[_Eval], float]:
        rp = self.repeated[f.repeated]
        kind, fld = f.agg.kind, f.agg.field
        where = None if f.where is None else rp.index[f.where.field]
        idx = rp.index[fld] if fld is not None else -1
        if kind == "count" and where is None:
            gi = self._group_only(rp, f.length)
            return lambda e: float(len(e.items) - e.groups[gi].lo)
        family = {
            "count": "counter",
            "distinct": "counter",
            "min": "min",
            "max": "max",
        }.get(kind, "moments")
        if kind == "count":
            # Count of items equal to the current one in the filter field.
            g, a = rp.agg_slot(f.length, _AggKey("counter", where, None))  # type: ignore[arg-type]
            return lambda e: float(e.groups[g].aggs[a].counts.get(e.item[where], 0))  # type: ignore[index]
        g, a = rp.agg_slot(f.length, _AggKey(family, idx, where))

        def agg_of(e: _Eval) -> Any:
            agg = e.groups[g].aggs[a]
            return agg if where is None else agg.get(e.item[where])

        def window_values(e: _Eval) -> list[float]:
            lo = e.groups[g].lo
            vals = e.items[lo:]
            if where is not None:
                key = e.item[where]
                return [it[idx] for it in vals if it[where] == key]
            return [it[idx] for it in vals]

        if kind == "sum":
            return lambda e: agg_of(e).total()
        if kind == "mean":
            return lambda e: agg_of(e).mean()
        if kind == "std":
            return lambda e: agg_of(e).std(lambda: window_values(e))
        if kind == "zscore":

            def z(e: _Eval) -> float:
                m = agg_of(e)
                sd = m.std(lambda: window_values(e))
                return 0.0 if not sd >= ZSCORE_MIN_STD else (e.item[idx] - m.mean()) / sd

            return z
        if kind in ("min", "max"):
            return lambda e: agg_of(e).value()
        assert kind == "distinct"
        return lambda e: float(len(agg_of(e).counts))

    @staticmethod
    def _group_only(rp: _RepeatedPlan, length: int) -> int:
        if length not in rp.lengths:
            rp.lengths.append(length)
            rp.agg_keys.append([])
        return rp.lengths.index(length)

    # --- state -----------------------------------------------------------------------

    def _groups(self, record: SupernovaRecord, rp: _RepeatedPlan) -> list[_Group]:
        if record.windows is None:
            record.windows = {}
        groups = record.windows.get(rp.name)
        if groups is None:
            groups = record.windows[rp.name] = self._build_groups(rp, record.items[rp.name])
        return groups  # type: ignore[no-any-return]

    def _build_groups(self, rp: _RepeatedPlan, items: list[Item]) -> list[_Group]:
        """Window state from scratch, relative to the newest item (used on load)."""
        newest = items[-1][0] if items else 0
        return [self._slice_group(rp, g, items, newest, len(items)) for g in range(len(rp.lengths))]

    def _slice_group(self, rp: _RepeatedPlan, g: int, items: list[Item], t: int, hi: int) -> _Group:
        length = rp.lengths[g]
        lo = bisect_right(items, t - length, 0, hi, key=_ts)
        aggs = rp.make_aggs(g)
        for item in items[lo:hi]:
            for agg in aggs:
                agg.add(item)
        return _Group(length, lo, aggs)

    # --- the core --------------------------------------------------------------------

    def apply(self, record: SupernovaRecord, event: Event) -> list[float] | None:
        """Apply one event to its record; the feature row for scored events, else None.

        Duplicates (known event_id) change nothing but ``record.duplicates`` and give
        None. Raises LateEventError for an event beyond the allowed lateness, leaving
        the record untouched.
        """
        rp = self.by_type.get(event.type)
        if rp is None:
            if event.type != self.fixed_type:
                raise EventError("type", f"unknown event type {event.type!r}")
            self._apply_fixed(record, event)
            return None
        name = rp.name
        eid = event.event_id
        ids = record.ids[name]
        if eid in ids:
            record.duplicates += 1
            return None
        ts = event.ts
        last = record.last_ts.get(name)
        if last is not None and ts < last - rp.allowed_lateness:
            raise LateEventError(
                "ts",
                f"event is {(last - ts) / 1000:.0f} s older than the entity's newest "
                f"(allowed lateness {rp.allowed_lateness / 1000:.0f} s)",
            )
        item = (ts, eid, *msgspec.structs.astuple(event.attrs))
        items = record.items[name]
        groups = self._groups(record, rp)
        ids.add(eid)
        if last is None or ts >= last:
            items.append(item)
            record.last_ts[name] = ts
            prev = last
            for grp in groups:
                aggs = grp.aggs
                for agg in aggs:
                    agg.add(item)
                cutoff = ts - grp.length
                lo = grp.lo
                while items[lo][0] <= cutoff:
                    old = items[lo]
                    for agg in aggs:
                        agg.remove(old)
                    lo += 1
                grp.lo = lo
            view_groups, view_items = groups, items
        else:
            pos = bisect_right(items, ts, key=_ts)
            items.insert(pos, item)
            prev = items[pos - 1][0] if pos else None
            view_items = items[: pos + 1]
            view_groups = [self._slice_group(rp, g, view_items, ts, pos + 1) for g in range(len(groups))]
            groups[:] = self._build_groups(rp, items)
        self._update_lifetime(record, rp, item)
        row = None
        if rp is self.scored:
            e = _Eval()
            e.item, e.event, e.groups, e.items = item, event, view_groups, view_items
            e.prev_ts, e.lifetime, e.fixed = prev, record.lifetime[name], record.fixed
            row = [ev(e) for ev in self.evaluators]
        self._retain(record, rp, groups)
        return row

    def _apply_fixed(self, record: SupernovaRecord, event: Event) -> None:
        if event.event_id in record.fixed_ids:
            record.duplicates += 1
            return
        record.fixed_ids.append(event.event_id)
        del record.fixed_ids[:-RECENT_FIXED_IDS]
        for k, v in msgspec.structs.asdict(event.attrs).items():
            if v is not msgspec.UNSET:
                record.fixed[k] = v

    def _update_lifetime(self, record: SupernovaRecord, rp: _RepeatedPlan, item: Item) -> None:
        stats = record.lifetime[rp.name]
        n = stats.get("")
        if n is None:
            stats[""] = [1.0]
        else:
            n[0] += 1.0
        for fld in rp.lifetime_fields:
            x = float(item[rp.index[fld]])
            st = stats.get(fld)
            if st is None:
                stats[fld] = [x, 0.0, x, x]
                continue
            s = st[0]
            t = s + x
            st[1] += (s - t) + x if abs(s) >= abs(x) else (x - t) + s
            st[0] = t
            if x < st[2]:
                st[2] = x
            if x > st[3]:
                st[3] = x

    def _retain(self, record: SupernovaRecord, rp: _RepeatedPlan, groups: list[_Group]) -> None:
        items = record.items[rp.name]
        too_old = items[-1][0] - rp.rep.max_age
        k = max(0, len(items) - rp.rep.max_count)
        if items[0][0] <= too_old:
            k = max(k, bisect_right(items, too_old, key=_ts))
        if not k:
            return
        for grp in groups:
            while grp.lo < k:
                old = items[grp.lo]
                for agg in grp.aggs:
                    agg.remove(old)
                grp.lo += 1
            grp.lo -= k
        ids = record.ids[rp.name]
        for old in items[:k]:
            ids.discard(old[1])
        del items[:k]

