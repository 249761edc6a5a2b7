"""Filters of aggregations and time-since features: which items qualify.

``same_as_current(field)`` keeps the items whose ``field`` equals the scored
event's; ``col(field) <op> constant`` (op one of ``== != < <= > >=``) keeps the
items whose field compares so to the constant. A list of filters means all of them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Filter:
    """A condition on one field of an item."""

    field: str

    def describe(self) -> str:
        """A stable text form (part of the spec hash and of lifetime state keys)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SameAsCurrent(Filter):
    """Items whose ``field`` equals the scored event's."""

    def describe(self) -> str:
        return f"{self.field} == current"


@dataclass(frozen=True)
class Compare(Filter):
    """Items whose ``field`` compares with ``op`` to ``value``."""

    op: str
    value: Any

    def describe(self) -> str:
        return f"{self.field} {self.op} {self.value!r}"

    def test(self) -> Callable[[Any], bool]:
        """A function of the field's value: whether an item qualifies."""
        op, value = _OPS[self.op], self.value
        return lambda x: bool(op(x, value))


def same_as_current(field_name: str) -> SameAsCurrent:
    """Keep only items with the same value of ``field_name`` as the scored event."""
    return SameAsCurrent(field_name)


class Column:
    """``col(field)``: compare it to a constant to get a filter."""

    __hash__ = None  # type: ignore[assignment]  # == builds a filter, not a bool

    def __init__(self, field_name: str) -> None:
        self.field = field_name

    def _compare(self, op: str, value: Any) -> Compare:
        return Compare(self.field, op, value)

    def __eq__(self, value: object) -> Compare:  # type: ignore[override]
        return self._compare("==", value)

    def __ne__(self, value: object) -> Compare:  # type: ignore[override]
        return self._compare("!=", value)

    def __lt__(self, value: Any) -> Compare:
        return self._compare("<", value)

    def __le__(self, value: Any) -> Compare:
        return self._compare("<=", value)

    def __gt__(self, value: Any) -> Compare:
        return self._compare(">", value)

    def __ge__(self, value: Any) -> Compare:
        return self._compare(">=", value)


def col(field_name: str) -> Column:
    """A field of the aggregated items, for constant filters: ``col("amount") > 100``."""
    return Column(field_name)
