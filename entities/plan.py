"""What to compute, as plain data: per repeated attribute, the state its features need.

A :class:`AttributePlan` lists, for one repeated attribute, the window lengths of
the features over it that are computed incrementally (each with its aggregators,
shared between features that need the same one), the fields whose prefix sums it
keeps, and the lifetime aggregates kept in the record. :mod:`entities.codegen`
turns it into code and :mod:`entities.features` runs it.

How a feature is computed depends on which attribute it reads:

* over the scored event's own attribute, windows are incremental: prefix sums
  for unfiltered count/sum/mean/std/zscore, running aggregators (``FAMILIES``)
  otherwise, wrapped in ``Keyed`` for ``same_as_current`` and ``Filtered`` for
  constant filters;
* over another attribute, a window is the slice of its retained items found by
  bisection on ts (:mod:`entities.reads`);
* an aggregation with no running family is computed from its window's items
  with its own ``Agg.of``;
* lifetime aggregates (count, compensated sum, min, max) are updated on every
  append of their attribute, per filter and per value of ``same_as_current``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from entities.aggregations import Agg, Count, Distinct, Max, Mean, Min, Std, Sum, ZScore
from entities.aggregators import Counter, Extreme, Filtered, Keyed, Moments, Sums, Tally
from entities.filters import Compare, Filter, SameAsCurrent
from entities.spec import Repeated

# Running aggregator family of each built-in aggregation (filtered or keyed windows).
FAMILIES: dict[type[Agg], str] = {
    Count: "tally",
    Sum: "sums",
    Mean: "sums",
    Std: "moments",
    ZScore: "moments",
    Min: "min",
    Max: "max",
    Distinct: "counter",
}
# Aggregations read from prefix sums when unfiltered (the rest of their family needs sums).
PREFIX_OPS = {"sum", "mean", "std", "zscore"}
SQUARE_OPS = {"std", "zscore"}


@dataclass(frozen=True)
class AggKey:
    """A running aggregator of a window group: its family, field and filters."""

    family: str  # tally | sums | moments | max | min | counter
    idx: int  # item index of the aggregated field (-1 for tally)
    keys: tuple[int, ...] = ()  # item indices of the same_as_current fields
    consts: tuple[tuple[int, str, Any], ...] = ()  # (item index, op, constant) of constant filters


def agg_factory(key: AggKey) -> Callable[[], Any]:
    """A function making fresh aggregators for ``key`` (built once: loading a record makes many)."""
    one: Callable[[], Any]
    if key.family == "sums":
        one = partial(Sums, key.idx)
    elif key.family == "moments":
        one = partial(Moments, key.idx)
    elif key.family in ("max", "min"):
        one = partial(Extreme, key.idx, key.family == "max")
    elif key.family == "tally":
        one = Tally
    else:
        one = partial(Counter, key.idx)
    make = one if not key.keys else partial(Keyed, key.keys[0] if len(key.keys) == 1 else key.keys, one)
    if not key.consts:
        return make
    test = item_test(key.consts)
    return lambda: Filtered(test, make())


def make_agg(key: AggKey) -> Any:
    """A fresh aggregator for ``key``."""
    return agg_factory(key)()


def item_test(consts: tuple[tuple[int, str, Any], ...]) -> Callable[[tuple[Any, ...]], bool]:
    """Whether an item passes every constant filter ``(item index, op, constant)``."""
    tests = [(i, Compare("", op, value).test()) for i, op, value in consts]
    if len(tests) == 1:
        ((i, test),) = tests
        return lambda item: test(item[i])
    return lambda item: all(test(item[i]) for i, test in tests)


@dataclass(frozen=True)
class LifetimeKey:
    """Lifetime aggregates of one filter of an attribute (no filter: ``prefix`` is "")."""

    prefix: str  # state key prefix: "" or "[<filters>]"
    consts: tuple[tuple[int, str, Any], ...]
    keys: tuple[int, ...]  # item indices of same_as_current fields: one state per value

    def state_key(self, values: tuple[Any, ...]) -> str:
        """Key prefix of the aggregates of items whose same_as_current fields are ``values``."""
        return self.prefix if not self.keys else f"{self.prefix}{values!r}"


def lifetime_prefix(where: tuple[Filter, ...]) -> str:
    """State key prefix of the lifetime aggregates under ``where``."""
    return "" if not where else "[" + " and ".join(w.describe() for w in where) + "]"


class AttributePlan:
    """Everything the plan knows about one repeated attribute."""

    def __init__(self, name: str, rep: Repeated, allowed_lateness: int) -> None:
        self.name = name
        self.rep = rep
        self.index = {f: 2 + i for i, f in enumerate(rep.fields)}
        self.allowed_lateness = allowed_lateness
        self.lengths: list[int] = []
        self.agg_keys: list[list[AggKey]] = []
        self.prefix_fields: list[int] = []  # item index of each summed field
        self.prefix_squares: list[bool] = []  # whether its squares are summed too
        self.lifetime_fields: list[str] = []  # unfiltered lifetime sum/min/max fields
        self.filtered_lifetime: dict[LifetimeKey, list[str]] = {}  # filter -> its fields
        self._factories: dict[int, list[Callable[[], Any]]] = {}  # per group, as agg_keys

    def group(self, length: int) -> int:
        """Index of the group of windows of ``length`` (added on first use)."""
        if length not in self.lengths:
            self.lengths.append(length)
            self.agg_keys.append([])
        return self.lengths.index(length)

    def agg_slot(self, length: int, key: AggKey) -> tuple[int, int]:
        """Index of the group for ``length`` and of the aggregator for ``key`` in it."""
        g = self.group(length)
        keys = self.agg_keys[g]
        if key not in keys:
            keys.append(key)
        return g, keys.index(key)

    def make_aggs(self, g: int) -> list[Any]:
        """Fresh aggregators of group ``g``."""
        keys = self.agg_keys[g]
        factories = self._factories.get(g)
        if factories is None or len(factories) != len(keys):  # keys are added while compiling
            factories = self._factories[g] = [agg_factory(k) for k in keys]
        return [make() for make in factories]

    def prefix_width(self, j: int) -> int:
        """Floats per entry of the prefix sums of summed field ``j``."""
        return 4 if self.prefix_squares[j] else 2

    def prefix_slot(self, idx: int, squares: bool) -> int:
        """Index of the prefix sums of item field ``idx`` (added on first use)."""
        if idx not in self.prefix_fields:
            self.prefix_fields.append(idx)
            self.prefix_squares.append(squares)
        return self.prefix_fields.index(idx)

    def consts(self, where: tuple[Filter, ...]) -> tuple[tuple[int, str, Any], ...]:
        """The constant filters of ``where`` as (item index, op, constant)."""
        return tuple((self.index[w.field], w.op, w.value) for w in where if isinstance(w, Compare))

    def keys(self, where: tuple[Filter, ...]) -> tuple[int, ...]:
        """Item indices of the same_as_current fields of ``where``."""
        return tuple(self.index[w.field] for w in where if isinstance(w, SameAsCurrent))

    def lifetime_key(self, where: tuple[Filter, ...], fld: str | None) -> LifetimeKey:
        """Register the lifetime aggregates of ``fld`` (None: the count) under ``where``."""
        if not where:
            if fld is not None and fld not in self.lifetime_fields:
                self.lifetime_fields.append(fld)
            return LifetimeKey("", (), ())
        key = LifetimeKey(lifetime_prefix(where), self.consts(where), self.keys(where))
        fields = self.filtered_lifetime.setdefault(key, [])
        if fld is not None and fld not in fields:
            fields.append(fld)
        return key
