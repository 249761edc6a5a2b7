"""From-scratch oracle for the pure core's feature semantics (tests only).

Written from the written semantics (``docs/spec.md``), not from the engine: it
imports nothing from the project's feature code and reads the spec only as a
declaration (its expanded features: name, attribute, aggregation op and field,
window, filters). Every feature is recomputed from plain lists of items for every
event: no running state, no add/remove, exact arithmetic (``fractions.Fraction``)
for sums, means and variances.

Semantics, per entity and per repeated attribute:

* Items are kept in a list sorted by ts; equal ts keep arrival order (a late
  event goes after the existing items with the same ts: ``bisect_right``).
* Duplicate: an event whose event_id is that of a currently retained item of its
  attribute is ignored (only the record's duplicates counter moves). Checked first.
* Late: with ``newest`` the largest ts ever accepted for the attribute, an event
  with ``ts < newest - allowed_lateness`` is rejected and changes nothing.
* Features of an accepted scored event ``e`` (attribute A, time ``t``, placed at
  position ``p``). The items visible in attribute B are: for B = A, ``items[: p + 1]``
  (e included); for another B, its retained items with ts <= t (they all arrived
  before e). Filters keep the items whose field equals e's (``same_as_current``) or
  compares so to a constant.

  - window ``w``: the visible, qualifying items with ts > t - w;
  - lifetime: every item of B ever accepted (e included when B = A), qualifying;
  - count, sum (0 when empty), mean, population std, min, max (NaN when empty),
    distinct, zscore ``(x_e - mean) / std`` (0.0 when empty or std < 1e-9);
  - time since: ``(t - ts) / 1000`` of the newest qualifying visible item other than
    e, NaN when none;
  - Current: e's field as float; Derived: ``fn(event, fixed)`` or
    ``fn(event, fixed, view)`` with a view of the visible items.
* Retention of A after the features of each A event: drop items with
  ``ts <= newest - retention``, then drop from the front until at most ``max_count``
  remain.
* Fixed (profile) events: per field last write wins; a profile event whose id is
  among the last 16 applied profile event ids is a duplicate. Profile events are
  never late and do not move any ``newest``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from entities.spec import (
    AggregateFeature,
    Compare,
    CurrentFeature,
    DerivedFeature,
    SameAsCurrent,
    Spec,
    TimeSinceFeature,
)

NAN = math.nan
RECENT_PROFILE_IDS = 16
MIN_STD = 1e-9
COMPARE = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@dataclass
class RefItem:
    ts: int
    event_id: str
    fields: dict[str, Any]

    def as_tuple(self, names: list[str]) -> tuple[Any, ...]:
        return (self.ts, self.event_id, *(self.fields[n] for n in names))


@dataclass
class RefEntity:
    """One entity's state, as plain lists."""

    items: dict[str, list[RefItem]]
    newest: dict[str, int] = field(default_factory=dict)
    lifetime: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # every accepted item
    fixed: dict[str, Any] = field(default_factory=dict)
    profile_ids: list[str] = field(default_factory=list)  # every applied profile id, in order
    duplicates: int = 0


@dataclass
class Outcome:
    kind: str  # "row" | "duplicate" | "late" | "fixed" | "appended"
    row: list[float] | None = None
    was_late: bool = False  # accepted with ts older than its attribute's newest


class RefAttribute:
    """What a derived function sees of one attribute: len, .ts[i], view[field][i]."""

    def __init__(self, items: list[RefItem]) -> None:
        self.ts = [it.ts for it in items]
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> list[Any]:
        return [it.fields[name] for it in self._items]


class RefRecord:
    def __init__(self, fixed: dict[str, Any], visible: dict[str, list[RefItem]]) -> None:
        self.fixed = dict(fixed)
        self._visible = visible

    def __getitem__(self, name: str) -> RefAttribute:
        return RefAttribute(self._visible[name])


def _exact_sum(xs: list[float]) -> Fraction:
    return sum((Fraction(x) for x in xs), Fraction(0))


def _stats(xs: list[float]) -> tuple[Fraction, Fraction]:
    """Exact mean and population variance."""
    n = len(xs)
    m = _exact_sum(xs) / n
    var = sum(((Fraction(x) - m) ** 2 for x in xs), Fraction(0)) / n
    return m, var


class Reference:
    """The oracle for one spec."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.attr_of = {r.event_type: name for name, r in spec.repeated.items()}
        self.field_names = {name: list(r.fields) for name, r in spec.repeated.items()}
        self.entities: dict[str, RefEntity] = {}

    def entity(self, entity_id: str) -> RefEntity:
        if entity_id not in self.entities:
            self.entities[entity_id] = RefEntity(
                items={n: [] for n in self.spec.repeated}, lifetime={n: [] for n in self.spec.repeated}
            )
        return self.entities[entity_id]

    # --- one event -----------------------------------------------------------------

    def apply(
        self, entity_id: str, etype: str, event_id: str, ts: int, attrs: dict[str, Any], event: Any
    ) -> Outcome:
        """Apply one event; ``event`` is only handed to Derived functions."""
        st = self.entity(entity_id)
        if etype == self.spec.fixed.event_type:
            if event_id in st.profile_ids[-RECENT_PROFILE_IDS:]:
                st.duplicates += 1
                return Outcome("duplicate")
            st.profile_ids.append(event_id)
            st.fixed.update(attrs)
            return Outcome("fixed")
        attr = self.attr_of[etype]
        items = st.items[attr]
        if any(it.event_id == event_id for it in items):
            st.duplicates += 1
            return Outcome("duplicate")
        newest = st.newest.get(attr)
        if newest is not None and ts < newest - self.spec.lateness_ms:
            return Outcome("late")
        was_late = newest is not None and ts < newest
        item = RefItem(ts, event_id, dict(attrs))
        pos = bisect_right([it.ts for it in items], ts)
        items.insert(pos, item)
        st.newest[attr] = ts if newest is None else max(newest, ts)
        st.lifetime[attr].append(dict(attrs))
        row = None
        if etype in self.spec.scored_types:
            visible = {
                name: its[: pos + 1] if name == attr else [it for it in its if it.ts <= ts]
                for name, its in st.items.items()
            }
            row = [self._feature(f, st, attr, visible, item, event) for f in self.spec.features_of(etype)]
        self._retain(st, attr)
        return Outcome("row" if row is not None else "appended", row=row, was_late=was_late)

    def _retain(self, st: RefEntity, attr: str) -> None:
        rep = self.spec.repeated[attr]
        newest = st.newest[attr]
        kept = [it for it in st.items[attr] if not it.ts <= newest - rep.retention_ms]
        while len(kept) > rep.max_count:
            kept.pop(0)
        st.items[attr] = kept

    # --- features ------------------------------------------------------------------

    @staticmethod
    def _qualifies(where: tuple[Any, ...], fields: dict[str, Any], cur: RefItem) -> bool:
        for w in where:
            if isinstance(w, SameAsCurrent):
                if fields[w.field] != cur.fields[w.field]:
                    return False
            else:
                assert isinstance(w, Compare)
                if not COMPARE[w.op](fields[w.field], w.value):
                    return False
        return True

    def _feature(
        self, f: Any, st: RefEntity, attr: str, visible: dict[str, list[RefItem]], cur: RefItem, event: Any
    ) -> float:
        if isinstance(f, CurrentFeature):
            return float(cur.fields[f.field])
        if isinstance(f, DerivedFeature):
            if f.with_record:
                return float(f.fn(event, dict(st.fixed), RefRecord(st.fixed, visible)))
            return float(f.fn(event, dict(st.fixed)))
        if isinstance(f, TimeSinceFeature):
            seen = visible[f.repeated]
            if f.repeated == attr:
                seen = seen[:-1]  # the current item is the last visible one of its attribute
            hits = [it for it in seen if self._qualifies(f.where, it.fields, cur)]
            return NAN if not hits else (cur.ts - hits[-1].ts) / 1000.0
        assert isinstance(f, AggregateFeature)
        if f.length is None:
            rows = st.lifetime[f.repeated]
        else:
            rows = [it.fields for it in visible[f.repeated] if it.ts > cur.ts - f.length]
        rows = [r for r in rows if self._qualifies(f.where, r, cur)]
        return self._aggregate(f.agg.op, f.agg.field, rows, cur)

    @staticmethod
    def _aggregate(op: str, fld: str | None, rows: list[dict[str, Any]], cur: RefItem) -> float:
        if op == "count":
            return float(len(rows))
        assert fld is not None
        values = [r[fld] for r in rows]
        if op == "distinct":
            return float(len(set(values)))
        if op == "sum":
            return float(_exact_sum([float(v) for v in values]))
        if op == "zscore" and not values:
            return 0.0
        if not values:
            return NAN
        xs = [float(v) for v in values]
        if op == "min":
            return min(xs)
        if op == "max":
            return max(xs)
        m, var = _stats(xs)
        if op == "mean":
            return float(m)
        sd = math.sqrt(float(var))
        if op == "std":
            return sd
        assert op == "zscore"
        if sd < MIN_STD:
            return 0.0
        return float(Fraction(float(cur.fields[fld])) - m) / sd
