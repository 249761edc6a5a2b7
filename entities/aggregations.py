"""Aggregations as small typed objects: ``Count()``, ``Sum("amount")``, ...

Each class says what it needs (a numeric field, the scored event's own attribute),
which windows it allows (``LIFETIME`` or not), its default name and its exact value
over a list of qualifying values (:meth:`Agg.of`). That exact value is what every
feature of the aggregation computes; the engine computes the built-in ones
incrementally where it can (:mod:`entities.plan` picks how) and falls back to
:meth:`Agg.of` over the window's items otherwise, so a new aggregation is one class
here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from entities.aggregators import exact_centred, exact_std

ZSCORE_MIN_STD = 1e-9
NAN = math.nan


@dataclass(frozen=True)
class Agg:
    """Base of the aggregations; ``field`` is the aggregated field (None for Count)."""

    op: ClassVar[str]
    numeric: ClassVar[bool] = True  # needs a numeric field
    lifetime: ClassVar[bool] = False  # allows the LIFETIME window
    own_only: ClassVar[bool] = False  # only over the scored event's own attribute

    @property
    def field(self) -> str | None:
        return None

    def default_prefix(self, repeated: str) -> str:
        """Name prefix when the declaration gives none."""
        return f"{self.field}_{self.op}"

    def of(self, values: Sequence[Any], current: Any) -> float:
        """The exact value over the qualifying items' values (``current``: the scored event's)."""
        raise NotImplementedError


@dataclass(frozen=True)
class FieldAgg(Agg):
    """Base of the aggregations of one field: ``Sum("amount")``."""

    name: str

    @property
    def field(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


@dataclass(frozen=True)
class Count(Agg):
    """Number of qualifying items (0.0 when none)."""

    op = "count"
    numeric = False
    lifetime = True

    def default_prefix(self, repeated: str) -> str:
        return f"{repeated}_count"

    def of(self, values: Sequence[Any], current: Any) -> float:
        return float(len(values))

    def __repr__(self) -> str:
        return "Count()"


@dataclass(frozen=True, repr=False)
class Sum(FieldAgg):
    """Sum of a numeric field (0.0 when no item qualifies)."""

    op = "sum"
    lifetime = True

    def of(self, values: Sequence[Any], current: Any) -> float:
        return math.fsum(values)


@dataclass(frozen=True, repr=False)
class Mean(FieldAgg):
    """Arithmetic mean of a numeric field (NaN when no item qualifies)."""

    op = "mean"
    lifetime = True

    def of(self, values: Sequence[Any], current: Any) -> float:
        return math.fsum(values) / len(values) if values else NAN


@dataclass(frozen=True, repr=False)
class Std(FieldAgg):
    """Population standard deviation (ddof 0) of a numeric field (NaN when none qualifies)."""

    op = "std"

    def of(self, values: Sequence[Any], current: Any) -> float:
        return exact_std([float(v) for v in values])


@dataclass(frozen=True, repr=False)
class ZScore(FieldAgg):
    """(scored value - mean) / std over the window; 0.0 when std < 1e-9 or nothing qualifies."""

    op = "zscore"
    own_only = True

    def of(self, values: Sequence[Any], current: Any) -> float:
        xs = [float(v) for v in values]
        sd = exact_std(xs)
        if not sd >= ZSCORE_MIN_STD:
            return 0.0
        return exact_centred(float(current), xs) / sd


@dataclass(frozen=True, repr=False)
class _Extreme(FieldAgg):
    lifetime = True
    largest: ClassVar[bool]

    def of(self, values: Sequence[Any], current: Any) -> float:
        if not values:
            return NAN
        return float(max(values) if self.largest else min(values))


@dataclass(frozen=True, repr=False)
class Min(_Extreme):
    """Minimum of a numeric field (NaN when none qualifies)."""

    op = "min"
    largest = False


@dataclass(frozen=True, repr=False)
class Max(_Extreme):
    """Maximum of a numeric field (NaN when none qualifies)."""

    op = "max"
    largest = True


@dataclass(frozen=True, repr=False)
class Distinct(FieldAgg):
    """Number of distinct values of a field (0.0 when none qualifies)."""

    op = "distinct"
    numeric = False

    def of(self, values: Sequence[Any], current: Any) -> float:
        return float(len(set(values)))
