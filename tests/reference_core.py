"""From-scratch oracle for the pure core's feature semantics (tests only).

Written from the written semantics, not from ``entities/features.py`` or
``entities/aggregators.py``: it imports nothing from the project's feature code
and reads the spec only as a declaration (feature classes and their fields).
Every feature is recomputed from the full, plain list of retained items for
every event: no running state, no add/remove, exact arithmetic
(``fractions.Fraction``) for sums, means and variances.

Semantics, per entity and per repeated attribute (the scored one):

* Items are kept in a list sorted by ts; equal ts keep arrival order (a late
  event goes after the existing items with the same ts: ``bisect_right``).
* Duplicate: an event whose event_id is that of a currently retained item is
  ignored (only the record's duplicates counter moves). Checked first.
* Late: with ``newest`` the largest ts ever accepted for the entity's repeated
  attribute, an event with ``ts < newest - allowed_lateness`` is rejected and
  changes nothing.
* Features of an accepted event ``e`` at time ``t``, placed at position ``p``:
  windows ``(t - w, t]`` over ``items[: p + 1]``; ``same_as_current(f)`` keeps only
  items whose ``f`` equals ``e``'s. count, sum, mean, population std, zscore
  ``(x_e - mean) / std`` (0.0 when std < 1e-9), min, max, distinct.
  TimeSincePrevious: ``(t - items[p - 1].ts) / 1000`` (NaN when ``p == 0``).
  Lifetime: over every accepted item ever (retention does not touch it).
  Current: e's field. Derived: the declared function of (event, fixed).
* Retention, after the features: drop items with ``ts <= newest - max_age``,
  then drop from the front until at most ``max_count`` remain.
* Fixed (profile) events: per field last write wins; a profile event whose id is
  among the last 16 applied profile event ids is a duplicate. Profile events are
  never late and do not move ``newest``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from entities.spec import Current, Derived, Lifetime, Spec, TimeSincePrevious, Window

NAN = math.nan
RECENT_PROFILE_IDS = 16
MIN_STD = 1e-9


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

    items: list[RefItem] = field(default_factory=list)
    newest: int | None = None
    lifetime: list[dict[str, Any]] = field(default_factory=list)  # every accepted item's fields
    fixed: dict[str, Any] = field(default_factory=dict)
    profile_ids: list[str] = field(default_factory=list)  # every applied profile id, in order
    duplicates: int = 0


@dataclass
class WindowStats:
    n: int
    mean: float  # exact mean, rounded once
    std: float  # exact population std, rounded
    x: float  # the current event's value


@dataclass
class Outcome:
    kind: str  # "row" | "duplicate" | "late" | "fixed"
    row: list[float] | None = None
    # Per feature: the exact statistics of its window for std/zscore, else None.
    stats: list[WindowStats | None] | None = None
    was_late: bool = False  # accepted with ts older than the entity's newest


def _exact_sum(xs: list[float]) -> Fraction:
    return sum((Fraction(x) for x in xs), Fraction(0))


def _stats(xs: list[float]) -> tuple[Fraction, Fraction]:
    """Exact mean and population variance."""
    n = len(xs)
    m = _exact_sum(xs) / n
    var = sum(((Fraction(x) - m) ** 2 for x in xs), Fraction(0)) / n
    return m, var


def _sqrt(q: Fraction) -> float:
    return math.sqrt(float(q))


class Reference:
    """The oracle for one spec with one repeated attribute that is also the scored one."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rep_name = spec.scored_repeated
        self.rep = spec.repeated[self.rep_name]
        self.field_names = list(self.rep.fields)
        self.entities: dict[str, RefEntity] = {}

    def entity(self, entity_id: str) -> RefEntity:
        return self.entities.setdefault(entity_id, RefEntity())

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
        assert etype == self.rep.event_type
        if any(it.event_id == event_id for it in st.items):
            st.duplicates += 1
            return Outcome("duplicate")
        if st.newest is not None and ts < st.newest - self.spec.allowed_lateness:
            return Outcome("late")
        was_late = st.newest is not None and ts < st.newest
        item = RefItem(ts, event_id, dict(attrs))
        pos = bisect_right([it.ts for it in st.items], ts)
        st.items.insert(pos, item)
        st.newest = ts if st.newest is None else max(st.newest, ts)
        st.lifetime.append(dict(attrs))
        row = [self._feature(f, st, pos, event) for f in self.spec.features]
        stats = [self._window_stats(f, st, pos) for f in self.spec.features]
        self._retain(st)
        return Outcome("row", row=row, stats=stats, was_late=was_late)

    def _retain(self, st: RefEntity) -> None:
        assert st.newest is not None
        st.items = [it for it in st.items if not it.ts <= st.newest - self.rep.max_age]
        while len(st.items) > self.rep.max_count:
            st.items.pop(0)

    # --- features ------------------------------------------------------------------

    def _feature(self, f: Any, st: RefEntity, pos: int, event: Any) -> float:
        cur = st.items[pos]
        if isinstance(f, Current):
            return float(cur.fields[f.field])
        if isinstance(f, Derived):
            return float(f.fn(event, dict(st.fixed)))
        if isinstance(f, TimeSincePrevious):
            return NAN if pos == 0 else (cur.ts - st.items[pos - 1].ts) / 1000.0
        if isinstance(f, Lifetime):
            return self._aggregate(f.agg.kind, f.agg.field, st.lifetime, cur)
        assert isinstance(f, Window)
        return self._aggregate(f.agg.kind, f.agg.field, self._window(f, st, pos), cur)

    @staticmethod
    def _window(f: Window, st: RefEntity, pos: int) -> list[dict[str, Any]]:
        """Fields of the items in (t - length, t] up to the current one, filtered."""
        cur = st.items[pos]
        window = [it.fields for it in st.items[: pos + 1] if it.ts > cur.ts - f.length]
        if f.where is not None:
            key = cur.fields[f.where.field]
            window = [w for w in window if w[f.where.field] == key]
        return window

    def _window_stats(self, f: Any, st: RefEntity, pos: int) -> WindowStats | None:
        if not (isinstance(f, Window) and f.agg.kind in ("std", "zscore")):
            return None
        assert f.agg.field is not None
        xs = [float(w[f.agg.field]) for w in self._window(f, st, pos)]
        m, var = _stats(xs)
        return WindowStats(len(xs), float(m), _sqrt(var), float(st.items[pos].fields[f.agg.field]))

    @staticmethod
    def _aggregate(kind: str, fld: str | None, rows: list[dict[str, Any]], cur: RefItem) -> float:
        if kind == "count":
            return float(len(rows))
        assert fld is not None
        values = [r[fld] for r in rows]
        if kind == "distinct":
            return float(len(set(values)))
        if not values:
            return NAN
        xs = [float(v) for v in values]
        if kind == "sum":
            return float(_exact_sum(xs))
        if kind == "min":
            return min(xs)
        if kind == "max":
            return max(xs)
        m, var = _stats(xs)
        if kind == "mean":
            return float(m)
        sd = _sqrt(var)
        if kind == "std":
            return sd
        assert kind == "zscore"
        if sd < MIN_STD:
            return 0.0
        return float(Fraction(float(cur.fields[fld])) - m) / sd
