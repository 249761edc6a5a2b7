"""Incremental features: apply one event to its record and return the feature row.

:class:`FeaturePlan` compiles a spec once (:mod:`entities.plan` says what state each
repeated attribute keeps, :mod:`entities.codegen` writes the in-order path) and runs
it. For each repeated attribute it keeps, per distinct window length of the features
over it, a start index into the record's items and the running aggregators those
features need. An in-order event is appended, added to every window and the items
that fell out are removed: no rescan of history. A late event (older than its
attribute's newest item, within ``allowed_lateness``) is inserted in ts order and
its features are computed over its own window slice; the windows are then rebuilt
around the newest item. Both paths use the same aggregators and the same feature
code. Retention is applied after the features, so an event always sees the window
it declares.

A derived function that never reads its event argument depends on the fixed
attributes only: its value is kept with the window state and computed again only
after a fixed-attribute event.
"""

from __future__ import annotations

import linecache
from array import array
from bisect import bisect_right
from collections.abc import Callable
from sys import intern
from typing import Any

import msgspec

from entities.codegen import Compiler
from entities.events import Event, LateEventError
from entities.items import Items
from entities.plan import AttributePlan
from entities.record import RECENT_FIXED_IDS, SupernovaRecord
from entities.spec import Spec

Item = tuple[Any, ...]


class _Group:
    """Live aggregators of one window length: items lo on of the record are inside."""

    __slots__ = ("aggs", "length", "lo")

    def __init__(self, length: int, lo: int, aggs: list[Any]) -> None:
        self.length = length
        self.lo = lo
        self.aggs = aggs


class _Windows:
    """Window state of one repeated attribute of a record (derived, never serialised).

    ``groups``: one per window length. ``prefixes``: per summed field, running
    compensated sums ``(s, c[, q, cq])`` of the values (and their squares) before
    each item - one more entry than there are items - so the sum over any window is
    a difference of two entries and items leaving a window cost nothing. Each field's
    entries lie flat in one ``array('d')`` (entry k at ``[w*k:w*k+w]``, w = 2 or 4),
    so the engine reads an entry from one cache line. ``fresh`` counts entries
    appended since the prefixes were last computed from the items. ``fixed_row``: the
    values of the derived features that read only the fixed attributes (None until
    computed, and again after the fixed attributes change).
    """

    __slots__ = ("fixed_row", "fresh", "groups", "prefixes")

    def __init__(self, groups: list[_Group], prefixes: list[array[float]]) -> None:
        self.groups = groups
        self.prefixes = prefixes
        self.fresh = 0
        self.fixed_row: tuple[float, ...] | None = None


class FeaturePlan:
    """A spec compiled for incremental evaluation; ``apply`` is the core's one entry point."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        lateness = spec.lateness_ms
        self.repeated = {n: AttributePlan(n, r, lateness) for n, r in spec.repeated.items()}
        compiler = Compiler(spec, self.repeated, self)
        self.source = compiler.source
        filename = f"<supernova plan {spec.name or spec.entity} {spec.hash()}>"
        linecache.cache[filename] = (len(self.source), None, self.source.splitlines(True), filename)
        namespace = dict(compiler.globals)
        exec(compile(self.source, filename, "exec"), namespace)
        attrs = list(self.repeated)
        self._rows: dict[str, Callable[..., list[float]]] = {
            name: namespace[f"row_of_{i}"] for i, name in enumerate(attrs) if name in compiler.rows
        }
        self._lifetime: dict[str, Callable[[dict[str, list[float]], Item], None]] = {
            name: namespace[f"lifetime_{i}"] for i, name in enumerate(attrs)
        }
        self._prefixes: dict[str, Callable[[Items], list[array[float]]]] = {
            name: namespace[f"prefixes_{i}"] for i, name in enumerate(attrs)
        }
        # The generated dispatcher replaces the method below on the instance: one call
        # less per event on the hot path.
        self.apply = namespace["apply"]  # type: ignore[method-assign]

    def apply(self, record: SupernovaRecord, event: Event) -> list[float] | None:
        """Apply one event to its record; the feature row for scored events, else None.

        Duplicates (known event_id) change nothing but ``record.duplicates`` and give
        None. Raises LateEventError for an event beyond the allowed lateness, leaving
        the record untouched.
        """
        return self.apply(record, event)  # the instance's compiled dispatcher

    # --- state -----------------------------------------------------------------------

    def _state(self, record: SupernovaRecord, rp: AttributePlan) -> _Windows:
        """The record's window state of ``rp``, built from its items on first use."""
        if record.windows is None:
            record.windows = {}
        state = record.windows.get(rp.name)
        if state is None:
            items = record.items[rp.name]
            state = _Windows(self._build_groups(rp, items), self._prefixes[rp.name](items))
            record.windows[rp.name] = state
        return state  # type: ignore[no-any-return]

    def _rebase(self, state: _Windows, rp: AttributePlan, items: Items) -> None:
        state.prefixes[:] = self._prefixes[rp.name](items)
        state.fresh = 0

    def _build_groups(self, rp: AttributePlan, items: Items) -> list[_Group]:
        """Window state from scratch, relative to the newest item (used on load)."""
        newest = items.ts[-1] if len(items) else 0
        return self._slice_groups(rp, items, newest, len(items))

    def _slice_groups(self, rp: AttributePlan, items: Items, t: int, hi: int) -> list[_Group]:
        """Window state of every window length over ``items[:hi]``, ending at ``t``.

        Aggregators whose ``fill`` takes the columns read them; the others get each item by ``add``.
        """
        los = [bisect_right(items.ts, t - length, 0, hi) for length in rp.lengths]
        groups = []
        rows: list[tuple[Any, ...]] | None = None
        start = 0
        for g, (length, lo) in enumerate(zip(rp.lengths, los, strict=True)):
            aggs = rp.make_aggs(g)
            by_add = []
            for agg in aggs:
                if not (hasattr(agg, "fill") and agg.fill(items, lo, hi)):
                    by_add.append(agg)
            if by_add:
                if rows is None:  # the item tuples once, for the widest window with aggregators
                    start = min((lo for lo, keys in zip(los, rp.agg_keys, strict=True) if keys), default=hi)
                    rows = items.values(start, hi)
                for seq, item in enumerate(rows[lo - start :], items.dropped + lo):
                    for agg in by_add:
                        agg.add(item, seq)
            groups.append(_Group(length, lo, aggs))
        return groups

    # --- the rare paths ---------------------------------------------------------------

    def _apply_late(self, record: SupernovaRecord, rp: AttributePlan, event: Event) -> list[float] | None:
        """A late event (older than its attribute's newest, not a duplicate).

        Beyond the allowed lateness it raises LateEventError and changes nothing; else
        it is inserted in ts order and its features computed over its own window slice.
        """
        ts = event.ts
        last = record.last_ts[rp.name]
        if ts < last - rp.allowed_lateness:
            raise _late_error(rp, last, ts)
        item = (ts, event.event_id, *msgspec.structs.astuple(event.attrs))
        state = self._state(record, rp)
        items = record.items[rp.name]
        pos = bisect_right(items.ts, ts)
        items.insert(pos, item)
        prev = items.ts[pos - 1] if pos else None
        view_items = items.part(0, pos + 1)
        view_groups = self._slice_groups(rp, view_items, ts, pos + 1)
        state.groups[:] = self._build_groups(rp, items)
        self._rebase(state, rp, items)
        stats = record.lifetime[rp.name]
        self._lifetime[rp.name](stats, item)
        row = None
        row_of = self._rows.get(rp.name)
        if row_of is not None:
            view_prefixes = [p[: rp.prefix_width(j) * (pos + 2)] for j, p in enumerate(state.prefixes)]
            row = row_of(
                record, event, item, view_items, view_groups, view_prefixes, prev, stats, record.fixed
            )
        self._retain(record, rp, state)
        return row

    def _apply_fixed(self, record: SupernovaRecord, event: Event) -> None:
        if event.event_id in record.fixed_ids:
            record.duplicates += 1
            return
        record.fixed_ids.append(event.event_id)
        del record.fixed_ids[:-RECENT_FIXED_IDS]
        for k, v in msgspec.structs.asdict(event.attrs).items():
            if v is not msgspec.UNSET:
                # interned: a state, city or job is then one object however many records hold it
                record.fixed[k] = intern(v) if type(v) is str else v
        for state in (record.windows or {}).values():
            state.fixed_row = None  # computed again from the new fixed attributes

    def _retain(self, record: SupernovaRecord, rp: AttributePlan, state: _Windows) -> None:
        items = record.items[rp.name]
        too_old = items.ts[-1] - rp.rep.retention_ms
        k = max(0, len(items) - rp.rep.max_count)
        if items.ts[0] <= too_old:
            k = max(k, bisect_right(items.ts, too_old))
        if k:
            self._drop_oldest(rp, items, state, k)

    @staticmethod
    def _drop_oldest(rp: AttributePlan, items: Items, state: _Windows, k: int) -> None:
        """Drop the ``k`` oldest items, first from any window that still holds them."""
        base = items.dropped
        for grp in state.groups:
            if grp.lo < k and grp.aggs:
                for i, old in enumerate(items.values(grp.lo, k), grp.lo):
                    for agg in grp.aggs:
                        agg.remove(old, base + i)
            grp.lo = max(grp.lo, k) - k
        for j, prefix in enumerate(state.prefixes):
            del prefix[: rp.prefix_width(j) * k]
        items.drop(k)


def _late_error(rp: AttributePlan, last: int, ts: int) -> LateEventError:
    return LateEventError(
        "ts",
        f"event is {(last - ts) / 1000:.3f} s older than the entity's newest "
        f"(allowed lateness {rp.allowed_lateness / 1000:.0f} s)",
    )
