"""Property test: the incremental core equals a from-scratch recompute.

Random event sequences (two entities, two repeated attributes that are both
scored, and profile events) go through ``entities.engine.Engine`` in random
batches; every batch's ``BatchResult`` (rows, scored, rejected, duplicates, late
flags, changed) and the record state afterwards are compared with
``tests/reference_core.py``, which recomputes every feature from plain lists with
exact arithmetic.

Features cover every kind over the event's own attribute and over the other one:
windows (unfiltered, ``same_as_current``, constant filters, both), lifetime
aggregates (filtered too), time-since (filtered too) and derived functions that
read the record view. The sequences exercise retention (small ``max_count`` and
``retention``), duplicate event ids (of retained, of dropped and of profile
events), equal timestamps (within and across the two attributes), late events
within the allowed lateness, events beyond it (rejected, record unchanged,
``LateEventError`` from ``FeaturePlan.apply``), interleaved profile events and
codec round trips of a record between batches (a restart: window state is rebuilt
from the items).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_core import Outcome, Reference

import entities.engine as engine_module
from entities.aggregations import Agg, FieldAgg
from entities.engine import Engine
from entities.events import Event, EventCodec, LateEventError
from entities.features import FeaturePlan
from entities.record import RecordCodec, segment_prefix
from entities.spec import (
    LIFETIME,
    Aggregation,
    Count,
    Current,
    Derived,
    Distinct,
    Fixed,
    Max,
    Mean,
    Min,
    Repeated,
    Scored,
    Spec,
    Std,
    Sum,
    TimeSince,
    ZScore,
    col,
    same_as_current,
)

REL_TOL = 1e-9
# `make test-fast` runs a quarter of the examples (SUPERNOVA_TEST_FAST=1); `make test`, all.
FAST = os.environ.get("SUPERNOVA_TEST_FAST") == "1"


def examples(n: int) -> int:
    """Hypothesis examples of a property: ``n``, or a quarter of it in the fast run."""
    return max(25, n // 4) if FAST else n


ABS_FLOOR = 1e-12
NAN = math.nan
BASE_TS = 1_600_000_000_000
B_CODES = {"p": 1.0, "q": 2.0, "r": 3.0}


# --- the test spec -----------------------------------------------------------------


def profile_a(event: Event, fixed: dict[str, Any]) -> float:
    """Fixed attribute a twice plus the current x or y (NaN before any profile sets a)."""
    a = fixed.get("a")
    return NAN if a is None else a * 2.0 + (event.attrs.x if event.type == "txn" else event.attrs.y)


def profile_b(event: Event, fixed: dict[str, Any]) -> float:
    """Code of fixed attribute b (NaN before any profile sets b)."""
    b = fixed.get("b")
    return NAN if b is None else B_CODES[b]


def views(event: Event, fixed: dict[str, Any], record: Any) -> float:
    """Reads the record view: sizes of both attributes, a field and a ts of each."""
    own, other = record["items"], record["logs"]
    if event.type == "log":
        own, other = other, own
    last = NAN if len(other) == 0 else float(other["k"][len(other) - 1] == event.attrs.k)
    return len(own) + 1000.0 * len(other) + last + (own.ts[-1] - own.ts[0]) / 1000.0


@dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...]
    filtered: tuple[int, ...]  # lengths that also get the filtered windows
    lateness: int
    max_age: int
    max_count: int
    log_max_count: int = 3


CONFIGS = [
    Config(lengths=(3, 7), filtered=(3, 7), lateness=5, max_age=12, max_count=4),
    Config(lengths=(2, 5, 9), filtered=(2, 9), lateness=3, max_age=12, max_count=6, log_max_count=1000),
    Config(lengths=(4, 10), filtered=(10,), lateness=0, max_age=10, max_count=5),
    Config(lengths=(5, 8, 20), filtered=(5, 20), lateness=10, max_age=30, max_count=1000),
    Config(lengths=(3,), filtered=(3,), lateness=2, max_age=5, max_count=1, log_max_count=2),
]

OWN_AGGS = {
    "count": Count(),
    "sum": Sum("x"),
    "mean": Mean("x"),
    "std": Std("x"),
    "zscore": ZScore("x"),
    "min": Min("x"),
    "max": Max("x"),
    "distinct_k": Distinct("k"),
    "distinct_x": Distinct("x"),
}
OTHER_AGGS = {
    "count": Count(),
    "sum": Sum("y"),
    "mean": Mean("y"),
    "std": Std("y"),
    "min": Min("y"),
    "max": Max("y"),
    "distinct_k": Distinct("k"),
}
LIFETIME_AGGS = ("count", "sum", "mean", "min", "max")
# Filters of windows, lifetime and time-since: name -> where (fields k, ok are in both attributes).
FILTERS: dict[str, Any] = {
    "same_k": same_as_current("k"),
    "ok": col("ok") == True,  # noqa: E712
    "same_k_not_a": [same_as_current("k"), col("k") != "a"],
}
POSITIVE = {"x": col("x") > 0.0, "y": col("y") >= 0.0}


def _features(
    cfg: Config, own: str, other: str, own_aggs: dict[str, Any], other_aggs: dict[str, Any]
) -> list[Any]:
    """Every feature kind over the own attribute and the other one."""
    value = "x" if own == "items" else "y"
    other_value = "y" if own == "items" else "x"
    out: list[Any] = [Current(value, name="now"), Derived("profile_a", profile_a)]
    for prefix, rep, aggs, positive in (
        ("own", own, own_aggs, POSITIVE[value]),
        ("other", other, other_aggs, POSITIVE[other_value]),
    ):
        filters = {**FILTERS, "positive": positive}
        for name, agg in aggs.items():
            out.append(Aggregation(rep, agg, windows=list(cfg.lengths), name=f"{prefix}_{name}"))
            for fname, where in filters.items():
                out.append(
                    Aggregation(
                        rep, agg, windows=list(cfg.filtered), where=where, name=f"{prefix}_{name}_{fname}"
                    )
                )
            if name in LIFETIME_AGGS:
                out.append(Aggregation(rep, agg, windows=[LIFETIME], name=f"{prefix}_{name}"))
                for fname, where in filters.items():
                    out.append(
                        Aggregation(
                            rep, agg, windows=[LIFETIME], where=where, name=f"{prefix}_{name}_{fname}"
                        )
                    )
        out.append(TimeSince(rep, name=f"{prefix}_since"))
        for fname, where in filters.items():
            out.append(TimeSince(rep, where=where, name=f"{prefix}_since_{fname}"))
    out += [Derived("views", views), Derived("profile_b", profile_b)]
    return out


@functools.cache
def make_plan(cfg: Config) -> FeaturePlan:
    """The compiled plan of a config's spec, shared by the examples (it holds no record state)."""
    return FeaturePlan(make_spec(cfg))


def _on(agg: Agg, old: str, new: str) -> Agg:
    """The same aggregation over field ``new`` where it aggregated ``old``."""
    return dataclasses.replace(agg, name=new) if isinstance(agg, FieldAgg) and agg.field == old else agg


@functools.cache
def make_spec(cfg: Config) -> Spec:
    fields = {"k": str, "x": float, "ok": bool}
    log_fields = {"k": str, "y": float, "ok": bool}
    x_aggs = OWN_AGGS
    y_aggs = {n: _on(a, "x", "y") for n, a in OWN_AGGS.items() if n != "distinct_x"}
    other_x = {n: _on(a, "y", "x") for n, a in OTHER_AGGS.items()}
    return Spec(
        name="core-test",
        entity="thing",
        key="thing_id",
        fixed=Fixed(event_type="profile", fields={"a": float, "b": str}),
        repeated={
            "items": Repeated("txn", fields, retention=cfg.max_age, max_count=cfg.max_count),
            "logs": Repeated("log", log_fields, retention=cfg.max_age, max_count=cfg.log_max_count),
        },
        allowed_lateness=cfg.lateness,
        scored=[
            Scored("txn", _features(cfg, "items", "logs", x_aggs, OTHER_AGGS)),
            Scored("log", _features(cfg, "logs", "items", y_aggs, other_x)),
        ],
    )


# --- event sequences ---------------------------------------------------------------

# Multiples of 0.01 in mixed ranges: repeated equal values, ~1e6 next to tiny ones.
SPECIAL_X = [
    0.0,
    0.01,
    0.02,
    0.1,
    1.0,
    2.5,
    9.99,
    10.0,
    99.99,
    123.45,
    5000.0,
    1e6,
    1e6 + 0.01,
    1e6 + 0.02,
    999_999.99,
    1_234_567.89,
    2e6,
    -0.01,
    -1.0,
    -1e6,
]
x_values = st.one_of(
    st.sampled_from(SPECIAL_X),
    # A cluster near 1e6: windows whose std is ~1e-8 of their mean.
    st.integers(-3, 3).map(lambda i: (100_000_000 + i) / 100),
    # Near 1e6 with offsets up to +-1000: std/mean from 1e-8 to 1e-3 (the range where
    # a one-pass variance loses digits).
    st.integers(-100_000, 100_000).map(lambda i: (100_000_000 + i) / 100),
    st.integers(0, 100_000).map(lambda i: i / 100),
    st.integers(-200_000_000, 200_000_000).map(lambda i: i / 100),
)


def ts_steps(cfg: Config) -> st.SearchStrategy[int]:
    """Millisecond steps from the entity's newest accepted ts: ties, small steps, the
    exact window / retention / lateness boundaries (and one off), jumps, and
    backwards steps within and beyond the allowed lateness."""
    forward = {cfg.max_age, *cfg.lengths, cfg.lateness}
    forward |= {b + 1 for b in forward} | {b - 1 for b in forward if b > 0}
    backward = {-1, -2, -cfg.lateness, -cfg.lateness - 1, *(-w for w in cfg.lengths if w <= cfg.lateness)}
    return st.one_of(
        st.sampled_from([0, 0, 0, 1, 1, 2, 3]),
        st.sampled_from(sorted(forward)),
        st.sampled_from(sorted(backward)),
        st.integers(-cfg.lateness - 3, 40),
    )


@dataclass
class Op:
    kind: str  # "txn" | "log" | "profile" | "restart" | "flush"
    entity: str = ""
    step: int = 0
    reuse: int | None = None  # index into earlier ids of the same kind, else a fresh id
    attrs: dict[str, Any] | None = None
    from_entity: bool = False  # step from the entity's newest of any attribute, not of its own


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Config, list[Op]]:
    cfg = draw(st.sampled_from(CONFIGS))
    steps = ts_steps(cfg)
    # Some sequences are profile-heavy: enough profile ids to exercise the window of
    # the last 16 that profile dedupe remembers.
    logs = draw(st.sampled_from([2, 6, 10]))
    kinds = ["txn"] * 10 + ["log"] * logs + ["profile"] * draw(st.sampled_from([1, 1, 12]))
    kinds += ["restart", "flush", "flush"]
    out = []
    n = draw(st.integers(1, 60))
    for _ in range(n):
        kind = draw(st.sampled_from(kinds))
        entity = draw(st.sampled_from(["e1", "e1", "e1", "e2"]))
        reuse = draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, 60)))
        if kind in ("txn", "log"):
            value = "x" if kind == "txn" else "y"
            attrs = {"k": draw(st.sampled_from("abc")), value: draw(x_values), "ok": draw(st.booleans())}
            out.append(Op(kind, entity, draw(steps), reuse, attrs, from_entity=draw(st.booleans())))
        elif kind == "profile":
            attrs = {}
            if draw(st.booleans()):
                attrs["a"] = draw(x_values)
            if draw(st.booleans()):
                attrs["b"] = draw(st.sampled_from(sorted(B_CODES)))
            out.append(Op("profile", entity, draw(st.integers(-5, 5)), reuse, attrs))
        else:
            out.append(Op(kind, entity))
    return cfg, out


# --- edge cases of the exact path (tested at the end) ---------------------------------


def _core_rows(xs: list[float], step: int = 0) -> list[dict[str, float]]:
    """Feature rows of the core for one entity's in-order events with these x values."""
    spec = make_spec(CONFIGS[3])
    engine = Engine(spec, plan=make_plan(CONFIGS[3]))
    codec = EventCodec(spec)
    batch = [
        codec.build("txn", f"p{i}", "probe", BASE_TS + i * step, {"k": "a", "x": x, "ok": True})
        for i, x in enumerate(xs)
    ]
    names = spec.feature_names_of("txn")
    return [dict(zip(names, row, strict=True)) for row in engine.process(batch).rows]


def event_ts(ref: Reference, op: Op) -> int:
    """The ts of an op's event: a step from its attribute's newest ts, or from the entity's."""
    newest = ref.entity(op.entity).newest
    if op.kind == "profile" or op.from_entity:
        base = max(newest.values(), default=None)
    else:
        base = newest.get(ref.attr_of[op.kind])
    return (BASE_TS if base is None else base) + op.step


# Constant window of a value whose n-fold sum is inexact: std must be exactly 0 and
# zscore 0.0 (a rounded mean would leave 1 ulp of the value).
EQUAL_VALUES = [12_345_678.91] * 3
# Cluster near 1e6 (std/mean ~ 1e-8): the exact zscore is 1.2247448713915892.
CLUSTER = [1e6, 1e6 + 0.01, 1e6 + 0.02]
CLUSTER_Z = 1.2247448713915892


# --- comparison --------------------------------------------------------------------


def close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= max(REL_TOL * max(abs(a), abs(b)), ABS_FLOOR)


def assert_rows_equal(got: list[float], want: list[float], names: list[str], where: str) -> None:
    assert len(got) == len(want) == len(names), where
    bad = [(n, g, w) for n, g, w in zip(names, got, want, strict=True) if not close(g, w)]
    assert not bad, f"{where}: features differ (name, core, reference): {bad}"


def check_record(engine: Engine, ref: Reference, entity_id: str) -> None:
    st_ = ref.entities.get(entity_id)
    rec = engine.records.get(entity_id)
    if st_ is None:
        assert rec is None
        return
    assert rec is not None
    for attr, names in ref.field_names.items():
        want = [it.as_tuple(names) for it in st_.items[attr]]
        assert rec.items[attr] == want, f"retained items of {attr} differ"
        assert rec.ids[attr] == {it.event_id for it in st_.items[attr]}
        assert rec.last_ts.get(attr) == st_.newest.get(attr)
    assert rec.fixed == st_.fixed
    assert rec.fixed_ids == st_.profile_ids[-16:]
    assert rec.duplicates == st_.duplicates


# --- the property ------------------------------------------------------------------


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_incremental_equals_from_scratch(scenario: tuple[Config, list[Op]]) -> None:
    cfg, seq = scenario
    spec = make_spec(cfg)
    engine = Engine(spec, plan=make_plan(cfg))
    plan = engine.plan
    codec = RecordCodec(spec)
    # Segments a few ms wide, so that records span many and retention empties some.
    segmented = RecordCodec(spec, bucket_ms={"items": 3, "logs": 2})
    store: dict[bytes, bytes] = {}  # what segmented checkpoints wrote
    events = EventCodec(spec)
    ref = Reference(spec)

    def checkpoint(entity_ids: set[str]) -> None:
        for entity_id in entity_ids:
            for key, data in segmented.encode_parts(engine.records[entity_id]):
                if data is None:
                    del store[key]  # only segments written before are deleted
                else:
                    store[key] = data

    used: dict[tuple[str, str], list[str]] = {}
    fresh = 0
    # Events of the current batch with what the reference made of them (it is applied
    # when the event is generated, so that ts steps are relative to the true newest).
    pending: list[tuple[Event, Outcome]] = []

    def flush() -> None:
        if not pending:
            return
        rows = [(ev, out) for ev, out in pending if out.kind == "row"]
        assert not any(out.kind == "appended" for _, out in pending)  # both types are scored
        rejected = [ev for ev, out in pending if out.kind == "late"]
        dups = sum(out.kind == "duplicate" for _, out in pending)
        for label, hit in (
            ("late accepted", any(out.was_late for _, out in rows)),
            ("late rejected", bool(rejected)),
            ("duplicate", dups > 0),
            (
                "retention dropped items",
                any(len(e.lifetime[a]) > len(e.items[a]) for e in ref.entities.values() for a in e.items),
            ),
            ("cross-attribute rows", any(out.row and ev.type == "log" for ev, out in rows)),
        ):
            if hit:
                event(label)

        got = engine.process([ev for ev, _ in pending])
        checkpoint(got.changed)

        assert [e.event_id for e in got.scored] == [ev.event_id for ev, _ in rows]
        for (ev, out), got_row in zip(rows, got.rows, strict=True):
            assert out.row is not None
            names = spec.feature_names_of(ev.type)
            assert_rows_equal(got_row, out.row, names, f"event {ev.event_id} ({ev.type})")
        assert got.late == [out.was_late for _, out in rows]
        assert [e for e, _ in got.rejected] == rejected
        for _, err in got.rejected:
            assert isinstance(err, LateEventError) and err.field == "ts"
        assert got.duplicates == dups
        assert got.changed == {ev.entity_id for ev, out in pending if out.kind != "late"}
        for entity in ("e1", "e2"):
            check_record(engine, ref, entity)
        # A rejected event is rejected by the plan itself too, and changes nothing.
        for ev in rejected:
            attr = ref.attr_of[ev.type]
            if any(it.event_id == ev.event_id for it in ref.entities[ev.entity_id].items[attr]):
                continue  # a duplicate by now
            rec = engine.records[ev.entity_id]
            before = codec.encode(rec)
            before_items = list(rec.items[attr])
            with pytest.raises(LateEventError):
                plan.apply(rec, ev)
            assert codec.encode(rec) == before
            assert repr(list(rec.items[attr])) == repr(before_items)  # NaN and -0.0 too
        pending.clear()

    for op in seq:
        if op.kind == "flush":
            flush()
            continue
        if op.kind == "restart":  # the record goes through the store and back
            flush()
            rec = engine.records.get(op.entity)
            if rec is not None:
                event("codec round trip")
                data = codec.encode(rec)
                assert codec.encode(codec.decode(data)) == data
                # From its segments, as written over the checkpoints so far: retention
                # applied on load gives exactly the items in memory.
                head = store[op.entity.encode()]
                keys = segmented.segment_keys(head)
                mine = {k for k in store if k.startswith(segment_prefix(op.entity))}
                assert mine == set(keys), "segments stored and segments listed differ"
                if len(keys) > 1:
                    event("record in several segments")
                engine.records[op.entity] = loaded = segmented.decode(head, [store[k] for k in keys])
                assert codec.encode(loaded) == data
                check_record(engine, ref, op.entity)
            continue
        ids = used.setdefault((op.entity, op.kind), [])
        if op.reuse is not None and ids:
            eid = ids[op.reuse % len(ids)]
        else:
            fresh += 1
            eid = f"{op.kind}-{fresh}"
            ids.append(eid)
        ts = event_ts(ref, op)
        assert op.attrs is not None
        ev = events.build(op.kind, eid, op.entity, ts, dict(op.attrs))
        pending.append((ev, ref.apply(op.entity, op.kind, eid, ts, dict(op.attrs), ev)))
    flush()


# --- edge cases of the exact path ------------------------------------------------------------


def test_equal_values_have_zero_std_and_zscore() -> None:
    for n in (2, 3, 6):
        for v in (12_345_678.91, 1_000_000.01, 0.7):
            last = _core_rows([v] * n)[-1]
            assert last["own_std_5ms"] == 0.0, (v, n, last["own_std_5ms"])
            assert last["own_zscore_5ms"] == 0.0, (v, n, last["own_zscore_5ms"])


def test_zscore_of_a_tight_cluster_of_large_values() -> None:
    z = _core_rows(CLUSTER)[-1]["own_zscore_5ms"]
    assert close(z, CLUSTER_Z), (z, CLUSTER_Z)


# --- grouping a batch by entity ------------------------------------------------------


@st.composite
def many_entities(draw: st.DrawFn) -> tuple[Config, list[Op]]:
    """A scenario whose events are spread over four entities."""
    cfg, seq = draw(scenarios())
    spread = draw(st.lists(st.sampled_from(["e1", "e2", "e3", "e4"]), min_size=len(seq), max_size=len(seq)))
    return cfg, [
        Op(op.kind, e, op.step, op.reuse, op.attrs, op.from_entity) for op, e in zip(seq, spread, strict=True)
    ]


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=many_entities())
def test_a_batch_grouped_by_entity_equals_event_by_event(scenario: tuple[Config, list[Op]]) -> None:
    """``Engine.process`` regroups a batch by entity: same results, in arrival order."""
    cfg, seq = scenario
    spec = make_spec(cfg)
    ref, events, batch = Reference(spec), EventCodec(spec), []
    used: dict[tuple[str, str], list[str]] = {}
    for n, op in enumerate(seq):
        if op.kind not in ("txn", "log", "profile"):
            continue
        ids = used.setdefault((op.entity, op.kind), [])
        eid = ids[op.reuse % len(ids)] if op.reuse is not None and ids else f"{op.kind}-{n}"
        ids.append(eid)
        ts = event_ts(ref, op)
        assert op.attrs is not None
        ev = events.build(op.kind, eid, op.entity, ts, dict(op.attrs))
        ref.apply(op.entity, op.kind, eid, ts, dict(op.attrs), ev)
        batch.append(ev)

    one_by_one = Engine(spec, plan=make_plan(cfg))
    singles = [one_by_one.process([ev]) for ev in batch]
    grouped = Engine(spec, plan=make_plan(cfg))
    with pytest.MonkeyPatch.context() as mp:  # group whatever the batch's size and shape
        mp.setattr(engine_module, "GROUP_MIN_EVENTS", 2)
        mp.setattr(engine_module, "GROUP_MAX_SHARE", 1.0)
        got = grouped.process(batch)
    if len({ev.entity_id for ev in batch}) < len(batch):
        event("regrouped")

    assert [e.event_id for e in got.scored] == [e.event_id for r in singles for e in r.scored]
    want_rows = [row for r in singles for row in r.rows]
    for g, w in zip(got.rows, want_rows, strict=True):  # bit for bit: the same arithmetic
        assert [x if x == x else "nan" for x in g] == [x if x == x else "nan" for x in w]
    assert got.late == [flag for r in singles for flag in r.late]
    want_rejected = [(e, str(err)) for r in singles for e, err in r.rejected]
    assert [(e, str(err)) for e, err in got.rejected] == want_rejected
    assert got.duplicates == sum(r.duplicates for r in singles)
    assert got.changed == set().union(*(r.changed for r in singles))
    codec = RecordCodec(spec)
    assert grouped.records.keys() == one_by_one.records.keys()
    for entity_id, rec in grouped.records.items():
        assert codec.encode(rec) == codec.encode(one_by_one.records[entity_id])
