"""Code generation: the in-order path of a spec as Python source, compiled once.

The in-order path is the hot loop of replay and of the worker, so the plan writes it
out specialised to the spec: per repeated attribute, the append, the window updates
(windows unrolled, aggregator updates inlined, see ``emit_add`` in
:mod:`entities.aggregators`), the lifetime update and, for a scored type, one
expression per feature. Features of the scored event's own attribute that have a
running form are inline expressions; the rest call the readers of
:mod:`entities.reads`. ``FeaturePlan.source`` shows the code; tracebacks point into it.

Sums, means, stds and z-scores of unfiltered windows come from prefix sums: per
field, Neumaier-compensated running sums of the values and their squares, one entry
per item (flat in an ``array('d')``), so a window's sum is the difference of two
entries whatever its length. The compensation terms carry the rounding error of
every step, so a difference is as accurate as a sum kept per window; the prefixes
are recomputed from the items every ``REBASE_EVERY`` appends so their magnitude
stays that of the retained items. A std whose running variance is ill-conditioned
is recomputed exactly from the window's values (``exact_std``).
"""

from __future__ import annotations

import dis
import inspect
import keyword
import math
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from entities import reads
from entities.aggregations import ZSCORE_MIN_STD
from entities.aggregators import _ILL_CONDITIONED, Src, exact_centred, exact_std, neumaier
from entities.events import EventError
from entities.filters import SameAsCurrent
from entities.plan import FAMILIES, PREFIX_OPS, SQUARE_OPS, AggKey, AttributePlan, make_agg
from entities.spec import (
    AggregateFeature,
    CurrentFeature,
    DerivedFeature,
    Feature,
    Spec,
    TimeSinceFeature,
    base_type,
)

NAN = math.nan
REBASE_EVERY = 4096


class Source:
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


class RowCode:
    """The feature row of one scored type as source: set-up lines, one expression each.

    The code reads these locals: ``record``, ``event``, ``item``, ``items`` (the
    attribute's items up to and including ``item``, as ``Items``), ``prev`` (ts of the previous item
    or None), ``stats`` (lifetime aggregates), ``fixed``, per window group ``g`` its
    start ``lo{g}`` and aggregators ``a{g}_{k}``, and per summed field ``j`` its prefix
    sums ``_P{j}`` (the last entry is the one after ``item``).
    """

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.setup: list[tuple[str, list[str]]] = []  # (local set, lines that set it)
        self.exprs: list[str] = []
        self.fixed_calls: list[str] = []  # derived features that read only the fixed attributes
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


class Compiler:
    """Writes the source of a spec's plan; ``source`` and ``globals`` are what to exec.

    The source defines ``apply(record, event)``, per scored attribute
    ``row_of_<i>(...)`` (a row from window state, for late events), and per attribute
    ``lifetime_<i>(stats, item)`` and ``prefixes_<i>(items)``. The generated code calls
    back into the runtime plan as the global ``plan`` for its rare paths.
    """

    def __init__(self, spec: Spec, attrs: dict[str, AttributePlan], runtime: Any) -> None:
        self.spec = spec
        self.attrs = attrs
        self.by_type = {p.rep.event_type: p for p in attrs.values()}
        self.globals: dict[str, Any] = {}
        self._squares = {
            (f.repeated, f.agg.field, f.length if f.where else None, f.where)
            for t in spec.scored_types
            for f in spec.features_of(t)
            if isinstance(f, AggregateFeature) and f.agg.op in SQUARE_OPS
        }
        self.rows: dict[str, RowCode] = {}
        for t in spec.scored_types:
            rp = self.by_type[t]
            row = self.rows[rp.name] = RowCode(spec.feature_names_of(t))
            for f in spec.features_of(t):
                row.exprs.append(self._compile(f, rp, row))
            if row.fixed_calls:
                row.once("_fd", [f"_fd = {_tuple_of(row.fixed_calls)}"])
        self.source = self._generate(runtime)

    # --- features --------------------------------------------------------------------

    def _name(self, prefix: str, value: Any) -> str:
        """A global of the generated code holding ``value``."""
        name = f"{prefix}_{len(self.globals)}"
        self.globals[name] = value
        return name

    def _read(self, read: reads.Read) -> str:
        return f"{self._name('read', read)}(record, item, items)"

    def _compile(self, f: Feature, own: AttributePlan, row: RowCode) -> str:
        if isinstance(f, CurrentFeature):
            return _as_float(f"item[{own.index[f.field]}]", own.rep.fields[f.field])
        if isinstance(f, DerivedFeature):
            if f.with_record:
                fn = reads.derived_with_record(f.fn, self.attrs, own.name)
                return f"{self._name('derived', fn)}(event, record, item, items)"
            call = f"float({self._name('derived', f.fn)}(event, fixed))"
            if _reads_event(f.fn):
                return call
            row.fixed_calls.append(call)
            return f"_fd[{len(row.fixed_calls) - 1}]"
        assert isinstance(f, (AggregateFeature, TimeSinceFeature))
        rp = self.attrs[f.repeated]
        if isinstance(f, TimeSinceFeature):
            if rp is own and not f.where:
                return "(NAN if prev is None else (item[0] - prev) / 1000.0)"
            return self._read(reads.time_since(rp, own, f.where))
        if f.length is None:
            key = rp.lifetime_key(f.where, f.agg.field)
            if rp is own and not f.where:
                return self._compile_lifetime(f, rp, row)
            return self._read(reads.lifetime(f.agg.op, f.agg.field, rp, own, key))
        family = FAMILIES.get(type(f.agg))
        if rp is not own or family is None:
            return self._read(reads.window(f.agg, f.length, rp, own, f.where))
        if len(f.where) > 1 or (f.where and not isinstance(f.where[0], SameAsCurrent)):
            idx = -1 if f.agg.field is None else rp.index[f.agg.field]
            g, a = rp.agg_slot(f.length, AggKey(family, idx, rp.keys(f.where), rp.consts(f.where)))
            read = reads.running(f.agg.op, idx, rp, f.where)
            return f"{self._name('running', read)}(a{g}_{a}, item, items, lo{g})"
        return self._compile_window(f, rp, row)

    def _compile_lifetime(self, f: AggregateFeature, rp: AttributePlan, row: RowCode) -> str:
        op, fld = f.agg.op, f.agg.field
        # Locals that the hot path's lifetime update has set already (see _emit_lifetime).
        count = "_ln[0]"  # a float
        if op in ("count", "mean"):
            row.once("_ln", ["_ln = stats['']"])
        if op == "count":
            return count
        assert fld is not None  # the other ops aggregate a field
        k = rp.lifetime_fields.index(fld)
        st = row.once(f"_lt{k}", [f"_lt{k} = stats[{fld!r}]"])  # [sum, compensation, min, max]
        if op == "sum":
            return f"({st}[0] + {st}[1])"
        if op == "mean":
            return f"(({st}[0] + {st}[1]) / {count})"
        return f"{st}[{2 if op == 'min' else 3}]"

    def _compile_window(self, f: AggregateFeature, rp: AttributePlan, row: RowCode) -> str:
        """A window of the own attribute, unfiltered or filtered by one same_as_current."""
        assert f.length is not None
        op, fld = f.agg.op, f.agg.field
        where = rp.index[f.where[0].field] if f.where else None
        idx = rp.index[fld] if fld is not None else -1
        if op == "count" and where is None:
            size = row.once("_len", ["_len = len(items.ts)"])
            return f"float({size} - lo{rp.group(f.length)})"
        if op == "count":
            # Count of items equal to the current one in the filter field.
            g, a = rp.agg_slot(f.length, AggKey("counter", where))  # type: ignore[arg-type]
            return f"float(a{g}_{a}.counts[item[{where}]])"  # the window holds the current item
        if op in PREFIX_OPS and where is None:
            return self._compile_prefix(f, rp, idx, row)
        if op in PREFIX_OPS:
            squares = (f.repeated, fld, f.length, f.where) in self._squares
            family = "moments" if squares else "sums"
        else:
            family = {"distinct": "counter", "min": "min", "max": "max"}[op]
        g, a = rp.agg_slot(f.length, AggKey(family, idx, () if where is None else (where,)))
        agg = f"a{g}_{a}"
        if where is not None:  # the part of the keyed aggregator for the current value
            agg = row.once(f"p{g}_{a}", [f"p{g}_{a} = a{g}_{a}.parts[item[{where}]]"])
        if op == "sum":
            return f"({agg}.s + {agg}.cs)"
        if op == "mean":
            return f"(({agg}.s + {agg}.cs) / {agg}.n if {agg}.n else NAN)"
        if op in ("min", "max"):
            return f"({agg}.dq[0][0] if {agg}.dq else NAN)"
        if op == "distinct":
            return f"float(len({agg}.counts))"
        window = f"items.column({idx})[lo{g}:]"
        if where is not None:
            window = f"[_v for _v, _w in zip({window}, items.column({where})[lo{g}:]) if _w == item[{where}]]"
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
                f"        vals{g}_{a} = {window}",
                f"        sd{g}_{a} = exact_std(vals{g}_{a})",
            ],
        )
        if op == "std":
            return sd
        assert op == "zscore"
        # sd >= ZSCORE_MIN_STD implies n >= 2, so the mean needs no empty guard.
        mean = f"({agg}.s + {agg}.cs) / {agg}.n"
        centred = (
            f"(item[{idx}] - {mean} if vals{g}_{a} is None else exact_centred(item[{idx}], vals{g}_{a}))"
        )
        return f"(0.0 if not {sd} >= {ZSCORE_MIN_STD!r} else {centred} / {sd})"

    def _compile_prefix(self, f: AggregateFeature, rp: AttributePlan, idx: int, row: RowCode) -> str:
        """sum/mean/std/zscore of an unfiltered window, from differences of prefix sums."""
        assert f.length is not None
        op = f.agg.op
        j = rp.prefix_slot(idx, (f.repeated, f.agg.field, None, ()) in self._squares)
        g = rp.group(f.length)
        # The prefix entry after the newest item (as locals), and the one before the window's first.
        newest = _prefix_locals(j, rp.prefix_squares[j])
        w = rp.prefix_width(j)
        row.once(f"_pn{j}", _newest_entry(j, newest))
        pl = row.once(f"_pl{j}_{g}", [f"_pl{j}_{g} = _P{j}[{w} * lo{g}:{w} * lo{g} + {w}]"])
        total = row.once(f"sum{j}_{g}", _difference(f"sum{j}_{g}", newest[0], newest[1], pl, 0))
        size = row.once("_len", ["_len = len(items.ts)"])
        n = f"({size} - lo{g})"  # never 0: the window holds the current item
        if op == "sum":
            return total
        if op == "mean":
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
                f"        pvals{j}_{g} = items.column({idx})[lo{g}:]",
                f"        sd{j}_{g} = exact_std(pvals{j}_{g})",
            ],
        )
        if op == "std":
            return sd
        assert op == "zscore"
        vals = f"pvals{j}_{g}"
        centred = f"(item[{idx}] - {total} / {n} if {vals} is None else exact_centred(item[{idx}], {vals}))"
        return f"(0.0 if not {sd} >= {ZSCORE_MIN_STD!r} else {centred} / {sd})"

    # --- code --------------------------------------------------------------------------

    def _generate(self, runtime: Any) -> str:
        self.globals.update(
            NAN=NAN,
            sqrt=math.sqrt,
            exact_std=exact_std,
            exact_centred=exact_centred,
            astuple=msgspec.structs.astuple,
            intern=sys.intern,
            EventError=EventError,
            plan=runtime,
            bisect_right=bisect_right,
            array=array,
        )
        src = Source()
        spec = self.spec
        src(f"# Generated by entities.codegen for spec {spec.name!r} ({spec.hash()}).")
        attrs = list(self.attrs.values())
        for i, rp in enumerate(attrs):
            row = self.rows.get(rp.name)
            if row is not None:
                src("")
                self._emit_row_of(src, i, rp, row)
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
                    src(*(f"_f{j} = items.column({idx})" for j, idx in enumerate(rp.prefix_fields)))
                    with src.block("for _i in range(len(items.ts)):"):
                        self._emit_prefix_append(src, rp, lambda j, idx: f"_f{j}[_i]")
                src(f"return [{', '.join(f'_P{j}' for j in range(len(rp.prefix_fields)))}]")
        src("")
        with src.block("def apply(record, event):"):
            src('"""FeaturePlan.apply, specialised to this spec."""')
            src("type_ = event.type")
            for rp in sorted(attrs, key=lambda p: p.name not in self.rows):
                with src.block(f"if type_ == {rp.rep.event_type!r}:"):
                    self._emit_apply(src, rp, self._name("rp", rp))
            with src.block(f"if type_ == {spec.fixed.event_type!r}:"):
                src("return plan._apply_fixed(record, event)")
            src('raise EventError("type", f"unknown event type {type_!r}")')
        return src.text()

    def _emit_row_of(self, src: Source, i: int, rp: AttributePlan, row: RowCode) -> None:
        args = "record, event, item, items, groups, prefixes, prev, stats, fixed"
        with src.block(f"def row_of_{i}({args}):"):
            src(f'"""Feature row of a scored item of {rp.name!r} from its window state (late events)."""')
            for j in range(len(rp.prefix_fields)):
                src(f"_P{j} = prefixes[{j}]")
            for g in range(len(rp.lengths)):
                src(f"lo{g} = groups[{g}].lo")
                if rp.agg_keys[g]:
                    src(f"{_targets(f'a{g}_', len(rp.agg_keys[g]))} = groups[{g}].aggs")
            self._emit_row(src, row, set())
            src("return row")

    def _emit_row(self, src: Source, row: RowCode, bound: set[str]) -> None:
        src(*row.setup_lines(bound))
        src("row = [")
        src(*(f"    {expr},  # {name}" for expr, name in zip(row.exprs, row.names, strict=True)))
        src("]")

    def _emit_lifetime(self, src: Source, rp: AttributePlan) -> None:
        """Source of the lifetime update (the count, then sum/min/max per field, then filtered).

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
        if rp.filtered_lifetime:
            src(f"{self._name('lifetime_filtered', reads.lifetime_updater(rp))}(stats, item)")

    def _emit_prefix_append(
        self, src: Source, rp: AttributePlan, value: Callable[[int, int], str] = lambda j, idx: f"item[{idx}]"
    ) -> None:
        """Source appending an item to the prefix sums ``_P{j}`` (Neumaier-compensated);
        ``value(j, idx)`` is the source of its summed field ``j`` (item position ``idx``).

        The new entry stays in locals (``_prefix_locals``), where the feature row reads it.
        """
        for j, (idx, squares) in enumerate(zip(rp.prefix_fields, rp.prefix_squares, strict=True)):
            names = _prefix_locals(j, squares)
            src(*_newest_entry(j, names), f"_x = {value(j, idx)}")
            src(*neumaier(names[0], names[1], "_x"))
            if squares:  # a sum of squares never goes negative: a cheaper step, same result
                src("_x2 = _x * _x", *neumaier(names[2], names[3], "_x2", nonnegative=True))
            src(f"_P{j}.extend(({', '.join(names)}))")

    def _emit_apply(self, src: Source, rp: AttributePlan, rp_var: str) -> None:
        """Source of ``apply`` for one repeated attribute; the in-order path inline.

        The items are columns (``entities.items.Items``): ``_c0`` the ts, ``_c{i}`` the
        column of item position ``i``; the new item is also a tuple, ``item``, which
        the feature row reads.
        """
        name = repr(rp.name)
        fields = range(2, 2 + len(rp.rep.fields))
        src(
            "eid = event.event_id",
            f"items = record.items[{name}]",
            "if eid in items.ids:",
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
            "_c0 = items.ts",
            "_c0.append(ts)",
            "items.ids.append(eid)",
        )
        if fields:
            src(f"{_targets('_c', len(fields), start=2)} = items.fields")
            src(*(f"_c{i}.append(item[{i}])" for i in fields))
        src(f"last_ts[{name}] = ts")
        if any(rp.agg_keys):
            src("_base = items.dropped", "_seq = _base + len(_c0) - 1")
        if rp.lengths:
            src(f"{_targets('g', len(rp.lengths))} = state.groups")
        if rp.prefix_fields:
            src(*(f"_P{j} = state.prefixes[{j}]" for j in range(len(rp.prefix_fields))))
            self._emit_prefix_append(src, rp)
        new = Src(lambda i: f"item[{i}]", "item", "_seq")
        for g, length in enumerate(rp.lengths):
            aggs = [make_agg(k) for k in rp.agg_keys[g]]
            names = [f"a{g}_{k}" for k in range(len(aggs))]
            old = Src(lambda i, g=g: f"_c{i}[lo{g}]", f"items[lo{g}]", f"_base + lo{g}")  # type: ignore[misc]
            src(f"# window (ts - {length}, ts]")
            if aggs:
                src(f"{_targets(f'a{g}_', len(aggs))} = g{g}.aggs")
            for agg, var in zip(aggs, names, strict=True):
                src(*agg.emit_add(var, new))
            src(f"lo{g} = g{g}.lo", f"_cut = ts - {length}")
            with src.block(f"while _c0[lo{g}] <= _cut:"):
                for agg, var in zip(aggs, names, strict=True):
                    src(*agg.emit_remove(var, old))
                src(f"lo{g} += 1")
            src(f"g{g}.lo = lo{g}")
        src(f"stats = record.lifetime[{name}]")
        self._emit_lifetime(src, rp)
        row = self.rows.get(rp.name)
        if row is not None:
            src("fixed = record.fixed")
            if row.fixed_calls:
                src(
                    "_fd = state.fixed_row",
                    "if _fd is None:  # features of the fixed attributes only: once per change of them",
                    f"    _fd = state.fixed_row = {_tuple_of(row.fixed_calls)}",
                )
            # Set above: the newest prefix entries and the lifetime aggregates.
            bound = {"_fd", "_ln", *(f"_pn{j}" for j in range(len(rp.prefix_fields)))}
            self._emit_row(src, row, bound | {f"_lt{k}" for k in range(len(rp.lifetime_fields))})
        else:
            src("row = None")
        retention = rp.rep.retention_ms
        src(
            "# retention, after the features: drop items beyond max_count or retention",
            f"_k = len(_c0) - {rp.rep.max_count}",
            f"_too_old = ts - {retention}",
            "if _c0[0] <= _too_old:",
            # the newest item is never too old: a short scan
            "    _j = 1",
            "    while _c0[_j] <= _too_old:",
            "        _j += 1",
        )
        inside = " or ".join(f"lo{g} < _k" for g in range(len(rp.lengths))) or "False"
        src(
            "    if _j > _k:",
            "        _k = _j",
            "if _k > 0:",
            f"    if {inside}:  # a window still holds dropped items",
            f"        plan._drop_oldest({rp_var}, items, state, _k)",
            "    else:",
            *(f"        g{g}.lo = lo{g} - _k" for g in range(len(rp.lengths))),
            *(f"        del _P{j}[:{rp.prefix_width(j)} * _k]" for j in range(len(rp.prefix_fields))),
            "        items.drop(_k)",
        )
        if rp.prefix_fields:
            src(
                "state.fresh += 1",
                f"if state.fresh > {REBASE_EVERY}:",
                f"    plan._rebase(state, {rp_var}, items)",
            )
        src("return row")


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
    return value if base_type(field_type) is float else f"float({value})"


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


def _fields_of(attrs: str, rp: AttributePlan) -> str:
    """Source of the item fields of an attrs struct: attribute reads, or astuple for odd names.

    Text fields are interned: a merchant or category name is then one object however
    many items hold it (a decoded record's text is interned too, entities/columns.py).
    """
    names = list(rp.rep.fields)
    if all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        text = {n for n, t in rp.rep.fields.items() if base_type(t) is str}
        return ", ".join(f"intern({attrs}.{n})" if n in text else f"{attrs}.{n}" for n in names)
    return f"*astuple({attrs})"


def _tuple_of(exprs: list[str]) -> str:
    """Source of a tuple display of ``exprs``."""
    return f"({exprs[0]},)" if len(exprs) == 1 else f"({', '.join(exprs)})"


def _targets(prefix: str, n: int, start: int = 0) -> str:
    """Assignment targets ``{prefix}0, {prefix}1, ...`` (from ``start``) unpacking a sequence of ``n``."""
    names = ", ".join(f"{prefix}{k}" for k in range(start, start + n))
    return names if n > 1 else f"({names},)"
