"""Incremental features: apply one event to its record and return the feature row.

The :class:`FeaturePlan` compiles a spec once. For each repeated attribute it keeps,
per distinct window length, a start index into the record's items and the
aggregators that the window features need (shared between features that need the
same one). An in-order event is appended, added to every window and the items that
fell out are removed: no rescan of history. A late event (older than the entity's
newest, within ``allowed_lateness``) is inserted in ts order and its features are
computed over its own window slice; the windows are then rebuilt around the newest
item. Both paths use the same aggregators and the same feature code. Retention
(``max_age``, ``max_count``) is applied after the features, so an event always sees
the window it declares.

Sums, means, stds and z-scores of unfiltered windows come from prefix sums: per
field, Neumaier-compensated running sums of the values and their squares, one entry
per item (flat in an ``array('d')``), so a window's sum is the difference of two
entries whatever its length and nothing has to be removed when an item leaves it.
The compensation terms carry the rounding error of every step, so a difference is as
accurate as a sum kept per window (a 1e6 leaving a window of cents loses nothing);
the prefixes are recomputed from the items every ``REBASE_EVERY`` appends so their
magnitude stays that of the retained items. A std whose running variance is
ill-conditioned is recomputed exactly from the window's values (``exact_std``).

The in-order path is the hot loop of replay and of the worker, so the plan writes it
out as Python source specialised to the spec - windows unrolled, aggregator updates
inlined (see ``emit_add`` in :mod:`entities.aggregators`), one expression per
feature - and compiles that once. ``FeaturePlan.source`` shows the generated code;
tracebacks point into it. Rare paths (late events, records loaded without window
state, profile events) stay ordinary methods. A derived function that never reads
its event argument depends on the fixed attributes only: its value is kept with the
window state and computed again only after a profile event (see ``_reads_event``).
"""

from __future__ import annotations

import dis
import inspect
import keyword
import linecache
import math
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

import msgspec

from entities.aggregators import (
    _ILL_CONDITIONED,
    Counter,
    Extreme,
    Item,
    Keyed,
    Moments,
    Sums,
    exact_centred,
    exact_std,
    neumaier,
)
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
    entries lie flat in one ``array('d')`` (entry k at ``[w*k:w*k+w]``, w = 2 or 4):
    the engine reads an entry from one cache line, where a tuple of floats is five
    objects.
    ``fresh`` counts entries appended since the prefixes were last computed from
    the items; they are recomputed every REBASE_EVERY appends so that their values,
    and their rounding, stay of the size of the retained items. ``fixed_row``: the
    values of the derived features that read only the fixed attributes (None until
    computed, and again after the fixed attributes change).
    """

    __slots__ = ("fixed_row", "fresh", "groups", "prefixes")

    def __init__(self, groups: list[_Group], prefixes: list[array[float]]) -> None:
        self.groups = groups
        self.prefixes = prefixes
        self.fresh = 0
        self.fixed_row: tuple[float, ...] | None = None


REBASE_EVERY = 4096


@dataclass(frozen=True)
class _AggKey:
    family: str  # sums | moments | max | min | counter
    idx: int
    where: int | None  # index of the same-as-current field, if filtered


def _make_agg(key: _AggKey) -> Any:
    def one() -> Any:
        if key.family == "sums":
            return Sums(key.idx)
        if key.family == "moments":
            return Moments(key.idx)
        if key.family in ("max", "min"):
            return Extreme(key.idx, largest=key.family == "max")
        return Counter(key.idx)

    return one() if key.where is None else Keyed(key.where, one)


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
        self.prefix_fields: list[int] = []  # item index of each summed field
        self.prefix_squares: list[bool] = []  # whether its squares are summed too

    def group(self, length: int) -> int:
        """Index of the group of windows of ``length`` (added on first use)."""
        if length not in self.lengths:
            self.lengths.append(length)
            self.agg_keys.append([])
        return self.lengths.index(length)

    def agg_slot(self, length: int, key: _AggKey) -> tuple[int, int]:
        """Index of the group for ``length`` and of the aggregator for ``key`` in it."""
        g = self.group(length)
        keys = self.agg_keys[g]
        if key not in keys:
            keys.append(key)
        return g, keys.index(key)

    def make_aggs(self, g: int) -> list[Any]:
        """Fresh aggregators of group ``g``."""
        return [_make_agg(k) for k in self.agg_keys[g]]

    def prefix_width(self, j: int) -> int:
        """Floats per entry of the prefix sums of summed field ``j``."""
        return 4 if self.prefix_squares[j] else 2

    def prefix_slot(self, idx: int, squares: bool) -> int:
        """Index of the prefix sums of item field ``idx`` (added on first use)."""
        if idx not in self.prefix_fields:
            self.prefix_fields.append(idx)
            self.prefix_squares.append(squares)
        return self.prefix_fields.index(idx)


class _Source:
    """Python source under construction: lines at the current indentation."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def __call__(self, *lines: str) -> None:
        self.lines.extend("    " * self.depth + line for line in lines)

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self(header)
        self.depth += 1
        yield
        self.depth -= 1

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class _RowCode:
    """The feature row of the scored attribute as source: set-up lines, one expression each.

    The code reads these locals: ``event``, ``item``, ``items`` (the record's items up
    to and including ``item``), ``prev`` (ts of the previous item or None), ``stats``
    (lifetime aggregates), ``fixed``, per window group ``g`` its start ``lo{g}`` and
    aggregators ``a{g}_{k}``, and per summed field ``j`` its prefix sums ``_P{j}``
    (the last entry is the one after ``item``).
    """

    def __init__(self) -> None:
        self.setup: list[tuple[str, list[str]]] = []  # (local set, lines that set it)
        self.exprs: list[str] = []
        self._done: set[str] = set()

    def once(self, name: str, lines: list[str]) -> str:
        """Emit ``lines`` (which set local ``name``) unless already emitted; return ``name``."""
        if name not in self._done:
            self._done.add(name)
            self.setup.append((name, lines))
        return name

    def setup_lines(self, bound: set[str]) -> list[str]:
        """The set-up lines, less those of the locals in ``bound`` (set by the caller)."""
        return [line for name, lines in self.setup if name not in bound for line in lines]


# Features that need the squares of a field (the rest of its window family needs sums).
_SQUARES = {"std", "zscore"}
_SUMS = {"sum", "mean", "std", "zscore"}


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
        self._globals: dict[str, Any] = {}
        self._squares = {
            (f.repeated, f.agg.field, f.length if f.where is not None else None, f.where)
            for f in spec.features
            if isinstance(f, Window) and f.agg.kind in _SQUARES
        }
        row = _RowCode()
        self._fixed_calls: list[str] = []  # derived features that read only the fixed attributes
        for f in spec.features:
            row.exprs.append(self._compile(f, row))
        if self._fixed_calls:
            row.once("_fd", [f"_fd = {_tuple_of(self._fixed_calls)}"])
        self.source = self._generate(row)
        filename = f"<supernova plan {spec.name or spec.entity} {spec.hash()}>"
        linecache.cache[filename] = (len(self.source), None, self.source.splitlines(True), filename)
        namespace = dict(self._globals)
        exec(compile(self.source, filename, "exec"), namespace)
        self._row: Callable[..., list[float]] = namespace["row_of"]
        self._lifetime: dict[str, Callable[[dict[str, list[float]], Item], None]] = {
            rp.name: namespace[f"lifetime_{i}"] for i, rp in enumerate(self.repeated.values())
        }
        self._prefixes: dict[str, Callable[[list[Item]], list[array[float]]]] = {
            rp.name: namespace[f"prefixes_{i}"] for i, rp in enumerate(self.repeated.values())
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

    # --- compilation: features -------------------------------------------------------

    def _name(self, prefix: str, value: Any) -> str:
        """A global of the generated code holding ``value``."""
        name = f"{prefix}_{len(self._globals)}"
        self._globals[name] = value
        return name

    def _compile(self, f: Any, row: _RowCode) -> str:
        scored = self.scored
        if isinstance(f, Current):
            return _as_float(f"item[{scored.index[f.field]}]", scored.rep.fields[f.field])
        if isinstance(f, Derived):
            call = f"float({self._name('derived', f.fn)}(event, fixed))"
            if _reads_event(f.fn):
                return call
            self._fixed_calls.append(call)
            return f"_fd[{len(self._fixed_calls) - 1}]"
        if isinstance(f, TimeSincePrevious):
            if self.repeated[f.repeated] is not scored:
                raise EventError("spec", f"{f.name}: time since previous needs the scored attribute")
            return "(NAN if prev is None else (item[0] - prev) / 1000.0)"
        if isinstance(f, Lifetime):
            return self._compile_lifetime(f, row)
        assert isinstance(f, Window)
        return self._compile_window(f, row)

    def _compile_lifetime(self, f: Lifetime, row: _RowCode) -> str:
        rp = self.repeated[f.repeated]
        if rp is not self.scored:
            raise EventError("spec", f"{f.name}: lifetime features need the scored attribute")
        kind, fld = f.agg.kind, f.agg.field
        # Locals that the hot path's lifetime update has set already (see _emit_lifetime).
        count = "_ln[0]"  # a float
        if kind in ("count", "mean"):
            row.once("_ln", ["_ln = stats['']"])
        if kind == "count":
            return count
        assert fld is not None  # the other kinds aggregate a field
        if fld not in rp.lifetime_fields:
            rp.lifetime_fields.append(fld)
        k = rp.lifetime_fields.index(fld)
        st = row.once(f"_lt{k}", [f"_lt{k} = stats[{fld!r}]"])  # [sum, compensation, min, max]
        if kind == "sum":
            return f"({st}[0] + {st}[1])"
        if kind == "mean":
            return f"(({st}[0] + {st}[1]) / {count})"
        return f"{st}[{2 if kind == 'min' else 3}]"

    def _compile_window(self, f: Window, row: _RowCode) -> str:
        rp = self.repeated[f.repeated]
        if rp is not self.scored:  # the row reads the window state of the scored attribute
            raise EventError("spec", f"{f.name}: window features need the scored attribute")
        kind, fld = f.agg.kind, f.agg.field
        where = None if f.where is None else rp.index[f.where.field]
        idx = rp.index[fld] if fld is not None else -1
        if kind == "count" and where is None:
            size = row.once("_len", ["_len = len(items)"])
            return f"float({size} - lo{rp.group(f.length)})"
        if kind == "count":
            # Count of items equal to the current one in the filter field.
            g, a = rp.agg_slot(f.length, _AggKey("counter", where, None))  # type: ignore[arg-type]
            return f"float(a{g}_{a}.counts[item[{where}]])"  # the window holds the current item
        if kind in _SUMS and where is None:
            return self._compile_prefix(f, rp, idx, row)
        if kind in _SUMS:
            squares = (f.repeated, fld, f.length, f.where) in self._squares
            family = "moments" if squares else "sums"
        else:
            family = {"distinct": "counter", "min": "min", "max": "max"}[kind]
        g, a = rp.agg_slot(f.length, _AggKey(family, idx, where))
        agg = f"a{g}_{a}"
        if where is not None:  # the part of the keyed aggregator for the current value
            agg = row.once(f"p{g}_{a}", [f"p{g}_{a} = a{g}_{a}.parts[item[{where}]]"])
        if kind == "sum":
            return f"({agg}.s + {agg}.cs)"
        if kind == "mean":
            return f"(({agg}.s + {agg}.cs) / {agg}.n if {agg}.n else NAN)"
        if kind in ("min", "max"):
            return f"({agg}.dq[0][{idx}] if {agg}.dq else NAN)"
        if kind == "distinct":
            return f"float(len({agg}.counts))"
        keep = "" if where is None else f" if _it[{where}] == item[{where}]"
        sd = row.once(
            f"sd{g}_{a}",
            [  # Moments.std; ill-conditioned windows are computed exactly from their values
                f"_n = {agg}.n",
                f"vals{g}_{a} = None",
                "if _n <= 1:",
                f"    sd{g}_{a} = 0.0 if _n == 1 else NAN",
                "else:",
                f"    _s = {agg}.s + {agg}.cs",
                f"    _q = {agg}.q + {agg}.cq",
                "    _c = _q - _s * _s / _n",
                f"    if _c > {_ILL_CONDITIONED!r} * _q:",
                f"        sd{g}_{a} = sqrt(_c / _n)",
                "    else:",
                f"        vals{g}_{a} = [_it[{idx}] for _it in items[lo{g}:]{keep}]",
                f"        sd{g}_{a} = exact_std(vals{g}_{a})",
            ],
        )
        if kind == "std":
            return sd
        assert kind == "zscore"
        # sd >= ZSCORE_MIN_STD implies n >= 2, so the mean needs no empty guard.
        mean = f"({agg}.s + {agg}.cs) / {agg}.n"
        centred = (
            f"(item[{idx}] - {mean} if vals{g}_{a} is None else exact_centred(item[{idx}], vals{g}_{a}))"
        )
        return f"(0.0 if not {sd} >= {ZSCORE_MIN_STD!r} else {centred} / {sd})"

    def _compile_prefix(self, f: Window, rp: _RepeatedPlan, idx: int, row: _RowCode) -> str:
        """sum/mean/std/zscore of an unfiltered window, from differences of prefix sums."""
        kind = f.agg.kind
        j = rp.prefix_slot(idx, (f.repeated, f.agg.field, None, None) in self._squares)
        g = rp.group(f.length)
        # The prefix entry after the newest item (as locals), and the one before the window's first.
        newest = _prefix_locals(j, rp.prefix_squares[j])
        w = rp.prefix_width(j)
        row.once(f"_pn{j}", _newest_entry(j, newest))
        pl = row.once(f"_pl{j}_{g}", [f"_pl{j}_{g} = _P{j}[{w} * lo{g}:{w} * lo{g} + {w}]"])
        total = row.once(f"sum{j}_{g}", _difference(f"sum{j}_{g}", newest[0], newest[1], pl, 0))
        size = row.once("_len", ["_len = len(items)"])
        n = f"({size} - lo{g})"  # never 0: the window holds the current item
        if kind == "sum":
            return total
        if kind == "mean":
            return f"{total} / {n}"
        sd = row.once(
            f"sd{j}_{g}",
            [  # as Moments.std; ill-conditioned windows are computed exactly from their values
                f"_n = {n}",
                f"pvals{j}_{g} = None",
                "if _n <= 1:",
                f"    sd{j}_{g} = 0.0 if _n == 1 else NAN",
                "else:",
                *(f"    {line}" for line in _difference("_q", newest[2], newest[3], pl, 2)),
                f"    _c = _q - {total} * {total} / _n",
                f"    if _c > {_ILL_CONDITIONED!r} * _q:",
                f"        sd{j}_{g} = sqrt(_c / _n)",
                "    else:",
                f"        pvals{j}_{g} = [_it[{idx}] for _it in items[lo{g}:]]",
                f"        sd{j}_{g} = exact_std(pvals{j}_{g})",
            ],
        )
        if kind == "std":
            return sd
        assert kind == "zscore"
        vals = f"pvals{j}_{g}"
        centred = f"(item[{idx}] - {total} / {n} if {vals} is None else exact_centred(item[{idx}], {vals}))"
        return f"(0.0 if not {sd} >= {ZSCORE_MIN_STD!r} else {centred} / {sd})"

    # --- compilation: code --------------------------------------------------------

    def _generate(self, row: _RowCode) -> str:
        self._globals.update(
            NAN=NAN,
            sqrt=math.sqrt,
            exact_std=exact_std,
            exact_centred=exact_centred,
            astuple=msgspec.structs.astuple,
            EventError=EventError,
            plan=self,
            bisect_right=bisect_right,
            array=array,
            _ts=_ts,
        )
        src = _Source()
        spec = self.spec
        src(f"# Generated by entities.features.FeaturePlan for spec {spec.name!r} ({spec.hash()}).")
        src("")
        rp = self.scored
        with src.block("def row_of(event, item, items, groups, prefixes, prev, stats, fixed):"):
            src('"""Feature row of a scored item from its window state (late events)."""')
            for j in range(len(rp.prefix_fields)):
                src(f"_P{j} = prefixes[{j}]")
            for g in range(len(rp.lengths)):
                src(f"lo{g} = groups[{g}].lo")
                if rp.agg_keys[g]:
                    src(f"{_targets(f'a{g}_', len(rp.agg_keys[g]))} = groups[{g}].aggs")
            self._emit_row(src, row, set())
            src("return row")
        for i, rp in enumerate(self.repeated.values()):
            src("")
            with src.block(f"def lifetime_{i}(stats, item):"):
                src(f'"""Update the lifetime aggregates of {rp.name!r} with an item."""')
                self._emit_lifetime(src, rp)
            src("")
            with src.block(f"def prefixes_{i}(items):"):
                src(f'"""The prefix sums of {rp.name!r} computed from its items."""')
                for j in range(len(rp.prefix_fields)):
                    src(f"_P{j} = array('d', {(0.0,) * rp.prefix_width(j)})")
                if rp.prefix_fields:
                    with src.block("for item in items:"):
                        self._emit_prefix_append(src, rp)
                src(f"return [{', '.join(f'_P{j}' for j in range(len(rp.prefix_fields)))}]")
        src("")
        with src.block("def apply(record, event):"):
            src('"""FeaturePlan.apply, specialised to this spec."""')
            src("type_ = event.type")
            for rp in sorted(self.repeated.values(), key=lambda p: p is not self.scored):
                with src.block(f"if type_ == {rp.rep.event_type!r}:"):
                    self._emit_apply(src, rp, self._name("rp", rp), row)
            with src.block(f"if type_ == {self.fixed_type!r}:"):
                src("return plan._apply_fixed(record, event)")
            src('raise EventError("type", f"unknown event type {type_!r}")')
        return src.text()

    def _emit_row(self, src: _Source, row: _RowCode, bound: set[str]) -> None:
        src(*row.setup_lines(bound))
        src("row = [")
        src(*(f"    {expr},  # {name}" for expr, name in zip(row.exprs, self.feature_names, strict=True)))
        src("]")

    def _emit_lifetime(self, src: _Source, rp: _RepeatedPlan) -> None:
        """Source of the lifetime update (the count, then sum/min/max per field).

        It leaves the count in ``_ln`` and the aggregates of each field in ``_lt{k}``,
        where the feature row reads them.
        """
        src(
            "try:",
            "    _ln = stats['']",
            "    _ln[0] += 1.0",
            "except KeyError:  # the first item",
            "    _ln = stats[''] = [1.0]",
        )
        for k, fld in enumerate(rp.lifetime_fields):
            st = f"_lt{k}"
            src(
                f"_x = {_as_float(f'item[{rp.index[fld]}]', rp.rep.fields[fld])}",
                "try:",
                f"    {st} = stats[{fld!r}]",
                "except KeyError:  # the first item",
                f"    {st} = stats[{fld!r}] = [_x, 0.0, _x, _x]",
                "else:",
                *(f"    {line}" for line in neumaier(f"{st}[0]", f"{st}[1]", "_x")),
                f"    if _x < {st}[2]:",
                f"        {st}[2] = _x",
                f"    if _x > {st}[3]:",
                f"        {st}[3] = _x",
            )

    def _emit_prefix_append(self, src: _Source, rp: _RepeatedPlan) -> None:
        """Source appending ``item`` to the prefix sums ``_P{j}`` (Neumaier-compensated).

        The new entry stays in locals (``_prefix_locals``), where the feature row reads it.
        """
        for j, (idx, squares) in enumerate(zip(rp.prefix_fields, rp.prefix_squares, strict=True)):
            names = _prefix_locals(j, squares)
            src(*_newest_entry(j, names), f"_x = item[{idx}]")
            src(*neumaier(names[0], names[1], "_x"))
            if squares:  # a sum of squares never goes negative: a cheaper step, same result
                src("_x2 = _x * _x", *neumaier(names[2], names[3], "_x2", nonnegative=True))
            src(f"_P{j}.extend(({', '.join(names)}))")

    def _emit_apply(self, src: _Source, rp: _RepeatedPlan, rp_var: str, row: _RowCode) -> None:
        """Source of ``apply`` for one repeated attribute; the in-order path inline."""
        name = repr(rp.name)
        src(
            "eid = event.event_id",
            f"ids = record.ids[{name}]",
            "if eid in ids:",
            "    record.duplicates += 1",
            "    return None",
            "ts = event.ts",
            "last_ts = record.last_ts",
            "try:",
            f"    prev = last_ts[{name}]",
            "except KeyError:  # the first item",
            "    prev = None",
            "else:",
            "    if ts < prev:",
            f"        return plan._apply_late(record, {rp_var}, event)",
            "_a = event.attrs",
            f"item = (ts, eid, {_fields_of('_a', rp)})",
            "try:",
            f"    state = record.windows[{name}]",
            "except (KeyError, TypeError):  # no window state yet (windows is None on a new record)",
            f"    state = plan._state(record, {rp_var})",
            "ids.add(eid)",
            f"items = record.items[{name}]",
            "items.append(item)",
            f"last_ts[{name}] = ts",
        )
        if rp.lengths:
            src(f"{_targets('g', len(rp.lengths))} = state.groups")
        if rp.prefix_fields:
            src(*(f"_P{j} = state.prefixes[{j}]" for j in range(len(rp.prefix_fields))))
            self._emit_prefix_append(src, rp)
        for g, length in enumerate(rp.lengths):
            aggs = [_make_agg(k) for k in rp.agg_keys[g]]
            names = [f"a{g}_{k}" for k in range(len(aggs))]
            src(f"# window (ts - {length}, ts]")
            if aggs:
                src(f"{_targets(f'a{g}_', len(aggs))} = g{g}.aggs")
            for agg, var in zip(aggs, names, strict=True):
                src(*agg.emit_add(var, "item"))
            src(f"lo{g} = g{g}.lo", f"_cut = ts - {length}")
            with src.block(f"while items[lo{g}][0] <= _cut:"):
                if aggs:
                    src(f"_old = items[lo{g}]")
                for agg, var in zip(aggs, names, strict=True):
                    src(*agg.emit_remove(var, "_old"))
                src(f"lo{g} += 1")
            src(f"g{g}.lo = lo{g}")
        src(f"stats = record.lifetime[{name}]")
        self._emit_lifetime(src, rp)
        if rp is self.scored:
            src("fixed = record.fixed")
            if self._fixed_calls:
                src(
                    "_fd = state.fixed_row",
                    "if _fd is None:  # features of the fixed attributes only: once per change of them",
                    f"    _fd = state.fixed_row = {_tuple_of(self._fixed_calls)}",
                )
            # Set above: the newest prefix entries and the lifetime aggregates.
            bound = {"_fd", "_ln", *(f"_pn{j}" for j in range(len(rp.prefix_fields)))}
            self._emit_row(src, row, bound | {f"_lt{k}" for k in range(len(rp.lifetime_fields))})
        else:
            src("row = None")
        src(
            "# retention, after the features: drop items beyond max_count or max_age",
            f"_k = len(items) - {rp.rep.max_count}",
            f"_too_old = ts - {rp.rep.max_age}",
            "if items[0][0] <= _too_old:",
        )
        if rp.rep.max_age > 0:  # the newest item is never too old: a short scan, no key calls
            src("    _j = 1", "    while items[_j][0] <= _too_old:", "        _j += 1")
        else:
            src("    _j = bisect_right(items, _too_old, key=_ts)")
        inside = " or ".join(f"lo{g} < _k" for g in range(len(rp.lengths))) or "False"
        src(
            "    if _j > _k:",
            "        _k = _j",
            "if _k > 0:",
            f"    if {inside}:  # a window still holds dropped items",
            f"        plan._drop_oldest({rp_var}, ids, items, state, _k)",
            "    else:",
            *(f"        g{g}.lo = lo{g} - _k" for g in range(len(rp.lengths))),
            *(f"        del _P{j}[:{rp.prefix_width(j)} * _k]" for j in range(len(rp.prefix_fields))),
            "        for _old in items[:_k]:",
            "            ids.discard(_old[1])",
            "        del items[:_k]",
        )
        if rp.prefix_fields:
            src(
                "state.fresh += 1",
                f"if state.fresh > {REBASE_EVERY}:",
                f"    plan._rebase(state, {rp_var}, items)",
            )
        src("return row")

    # --- state -----------------------------------------------------------------------

    def _state(self, record: SupernovaRecord, rp: _RepeatedPlan) -> _Windows:
        """The record's window state of ``rp``, built from its items on first use."""
        if record.windows is None:
            record.windows = {}
        state = record.windows.get(rp.name)
        if state is None:
            items = record.items[rp.name]
            state = _Windows(self._build_groups(rp, items), self._prefixes[rp.name](items))
            record.windows[rp.name] = state
        return state  # type: ignore[no-any-return]

    def _rebase(self, state: _Windows, rp: _RepeatedPlan, items: list[Item]) -> None:
        state.prefixes[:] = self._prefixes[rp.name](items)
        state.fresh = 0

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

    # --- the rare paths ---------------------------------------------------------------

    def _apply_late(self, record: SupernovaRecord, rp: _RepeatedPlan, event: Event) -> list[float] | None:
        """A late event (older than the entity's newest, not a duplicate).

        Beyond the allowed lateness it raises LateEventError and changes nothing; else
        it is inserted in ts order and its features computed over its own window slice.
        """
        ts = event.ts
        last = record.last_ts[rp.name]
        if ts < last - rp.allowed_lateness:
            raise _late_error(rp, last, ts)
        item = (ts, event.event_id, *msgspec.structs.astuple(event.attrs))
        state = self._state(record, rp)
        record.ids[rp.name].add(event.event_id)
        items = record.items[rp.name]
        pos = bisect_right(items, ts, key=_ts)
        items.insert(pos, item)
        prev = items[pos - 1][0] if pos else None
        view_items = items[: pos + 1]
        view_groups = [self._slice_group(rp, g, view_items, ts, pos + 1) for g in range(len(rp.lengths))]
        state.groups[:] = self._build_groups(rp, items)
        self._rebase(state, rp, items)
        stats = record.lifetime[rp.name]
        self._lifetime[rp.name](stats, item)
        row = None
        if rp is self.scored:
            view_prefixes = [p[: rp.prefix_width(j) * (pos + 2)] for j, p in enumerate(state.prefixes)]
            row = self._row(event, item, view_items, view_groups, view_prefixes, prev, stats, record.fixed)
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
                record.fixed[k] = v
        for state in (record.windows or {}).values():
            state.fixed_row = None  # computed again from the new fixed attributes

    def _retain(self, record: SupernovaRecord, rp: _RepeatedPlan, state: _Windows) -> None:
        items = record.items[rp.name]
        too_old = items[-1][0] - rp.rep.max_age
        k = max(0, len(items) - rp.rep.max_count)
        if items[0][0] <= too_old:
            k = max(k, bisect_right(items, too_old, key=_ts))
        if k:
            self._drop_oldest(rp, record.ids[rp.name], items, state, k)

    @staticmethod
    def _drop_oldest(rp: _RepeatedPlan, ids: set[str], items: list[Item], state: _Windows, k: int) -> None:
        """Drop the ``k`` oldest items, first from any window that still holds them."""
        for grp in state.groups:
            while grp.lo < k:
                old = items[grp.lo]
                for agg in grp.aggs:
                    agg.remove(old)
                grp.lo += 1
            grp.lo -= k
        for j, prefix in enumerate(state.prefixes):
            del prefix[: rp.prefix_width(j) * k]
        for old in items[:k]:
            ids.discard(old[1])
        del items[:k]


def _difference(target: str, hi: str, hi_comp: str, before: str, k: int) -> list[str]:
    """Source of ``target`` = the sum between two prefix entries: the newest one as the
    locals ``hi``, ``hi_comp`` and fields ``k``, ``k + 1`` of ``before``.

    The running sums are subtracted exactly (TwoSum: their rounding error is kept)
    and added to the difference of the compensations, so the window's sum comes out
    correctly rounded in all but near-tie cases - as a sum kept per window would.
    """
    lo = f"{before}[{k}]"
    return [
        f"_d = {hi} - {lo}",
        f"_e = _d - {hi}",
        f"{target} = _d + (({hi_comp} - {before}[{k + 1}]) + (({hi} - (_d - _e)) - ({lo} + _e)))",
    ]


def _newest_entry(j: int, names: list[str]) -> list[str]:
    """Source setting ``names`` to the newest entry of the flat prefix sums ``_P{j}``."""
    return [f"{name} = _P{j}[{i - len(names)}]" for i, name in enumerate(names)]


def _prefix_locals(j: int, squares: bool) -> list[str]:
    """Locals of the newest prefix entry of summed field ``j``: sum, compensation[, squares, compensation]."""
    return [f"_ps{j}", f"_pc{j}", *([f"_pq{j}", f"_pcq{j}"] if squares else [])]


def _as_float(value: str, field_type: Any) -> str:
    """Source of ``float(value)``; just ``value`` for a float field (the codec made it one)."""
    if get_origin(field_type) is Annotated:
        field_type = get_args(field_type)[0]
    return value if field_type is float else f"float({value})"


def _reads_event(fn: Callable[..., Any]) -> bool:
    """Whether a derived function may read its event argument.

    A plain function that never loads its first parameter depends on the fixed
    attributes only (derived functions are pure), so the plan computes it once per
    change of the fixed attributes instead of once per event.
    """
    if not inspect.isfunction(fn):
        return True
    code = fn.__code__
    if code.co_argcount < 1 or code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return True
    name = code.co_varnames[0]
    if name in code.co_cellvars:  # read by a nested function
        return True
    return any(ins.opcode in dis.haslocal and ins.argval == name for ins in dis.get_instructions(code))


def _fields_of(attrs: str, rp: _RepeatedPlan) -> str:
    """Source of the item fields of an attrs struct: attribute reads, or astuple for odd names."""
    names = list(rp.rep.fields)
    if all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        return ", ".join(f"{attrs}.{n}" for n in names)
    return f"*astuple({attrs})"


def _tuple_of(exprs: list[str]) -> str:
    """Source of a tuple display of ``exprs``."""
    return f"({exprs[0]},)" if len(exprs) == 1 else f"({', '.join(exprs)})"


def _targets(prefix: str, n: int) -> str:
    """Assignment targets ``{prefix}0, {prefix}1, ...`` unpacking a sequence of ``n``."""
    names = ", ".join(f"{prefix}{k}" for k in range(n))
    return names if n > 1 else f"({names},)"


def _late_error(rp: _RepeatedPlan, last: int, ts: int) -> LateEventError:
    return LateEventError(
        "ts",
        f"event is {(last - ts) / 1000:.3f} s older than the entity's newest "
        f"(allowed lateness {rp.allowed_lateness / 1000:.0f} s)",
    )
