"""Sliding-window aggregators: add the newest item, remove the oldest, read a value.

Each aggregator holds plain data and is rebuilt from the record's items when a record
is loaded, so nothing here is serialised. Items are tuples; ``idx`` picks the field;
``seq`` numbers an item (the running max/min tell the item leaving a window by it).

Every ``add``/``remove`` has an inline twin (``emit_add``/``emit_remove``): the same
statements as Python source, which the compiled feature plan pastes into its hot
path instead of calling the method. The two must stay in step, operation for
operation, so that both paths give bit-identical state; keep them side by side.
The plan emits an aggregator's ``emit_add`` before its ``emit_remove``, so the
latter may use the locals the former binds.

Some aggregators also have ``fill(items, lo, hi)``: the state ``add`` would reach
over items ``lo`` to ``hi`` of an ``entities.items.Items``, read from its columns
(counting in C where it can); it returns False, changing nothing, when the
aggregator cannot be filled so. Loading a record rebuilds its windows with it; the
others are rebuilt by ``add``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

Item = tuple[Any, ...]


class Src(NamedTuple):
    """Where inline source finds an item: ``field(i)`` its field ``i``, ``whole`` the
    tuple (for the rare calls), ``seq`` its number (``Items.dropped`` + index)."""

    field: Callable[[int], str]
    whole: str
    seq: str


# Below this ratio of centred to raw sum of squares the running variance has lost
# more than ~1e-12 of relative precision to cancellation: recompute in two passes.
_ILL_CONDITIONED = 1e-3


def neumaier(total: str, comp: str, x: str, nonnegative: bool = False) -> list[str]:
    """Source of one Neumaier step: ``total += x`` with its rounding error into ``comp``.

    ``abs(a) >= abs(b)`` is spelled out as conditionals (no calls, same branch for
    every float including -0.0 and NaN): the hot path runs this a dozen times an event.
    With ``nonnegative`` (sums of squares: both operands >= 0 or NaN) the comparison
    needs no signs at all. A ``total`` that is a plain local is used in place.
    """
    s = total if total.isidentifier() else "_s"
    abs_s, abs_x = (s, x) if nonnegative else (f"({v} if {v} >= 0.0 else -{v})" for v in (s, x))
    return [
        *([] if s == total else [f"_s = {total}"]),
        f"_t = {s} + {x}",
        f"{comp} += ({s} - _t) + {x} if {abs_s} >= {abs_x} else ({x} - _t) + {s}",
        f"{total} = _t",
    ]


def compensated(total: float, comp: float, x: float) -> tuple[float, float]:
    """Neumaier step: (total + x, comp + the rounding error of that addition)."""
    t = total + x
    comp += (total - t) + x if abs(total) >= abs(x) else (x - t) + total
    return t, comp


class Sums:
    """Count and Neumaier-compensated sum of one field (for sum and mean)."""

    __slots__ = ("cs", "idx", "n", "s")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.n = 0
        self.s = self.cs = 0.0

    def add(self, item: Item, seq: int = 0) -> None:
        """Add an item's value."""
        self.n += 1
        self.s, self.cs = compensated(self.s, self.cs, item[self.idx])

    def remove(self, item: Item, seq: int = 0) -> None:
        """Remove an item's value (it must have been added)."""
        self.n -= 1
        if self.n == 0:  # empty: drop accumulated rounding entirely
            self.s = self.cs = 0.0
            return
        self.s, self.cs = compensated(self.s, self.cs, -item[self.idx])

    def emit_add(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.add(item)``."""
        return [f"{var}.n += 1", f"_x = {it.field(self.idx)}", *neumaier(f"{var}.s", f"{var}.cs", "_x")]

    def emit_remove(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.remove(item)``."""
        return [
            f"{var}.n -= 1",
            f"if {var}.n == 0:",
            f"    {var}.s = {var}.cs = 0.0",
            "else:",
            f"    _x = -{it.field(self.idx)}",
            *(f"    {line}" for line in neumaier(f"{var}.s", f"{var}.cs", "_x")),
        ]

    def __len__(self) -> int:
        return self.n

    def total(self) -> float:
        """Sum of the values."""
        return self.s + self.cs

    def mean(self) -> float:
        """Mean of the values (NaN when empty)."""
        return (self.s + self.cs) / self.n if self.n else math.nan


class Moments(Sums):
    """Count, sum and sum of squares of one field, with Neumaier-compensated updates."""

    __slots__ = ("cq", "q")

    def __init__(self, idx: int) -> None:
        super().__init__(idx)
        self.q = self.cq = 0.0

    def add(self, item: Item, seq: int = 0) -> None:
        """Add an item's value."""
        super().add(item, seq)
        x = item[self.idx]
        self.q, self.cq = compensated(self.q, self.cq, x * x)

    def remove(self, item: Item, seq: int = 0) -> None:
        """Remove an item's value (it must have been added)."""
        super().remove(item, seq)
        if self.n == 0:
            self.q = self.cq = 0.0
            return
        x = item[self.idx]
        self.q, self.cq = compensated(self.q, self.cq, -(x * x))

    def emit_add(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.add(item)``."""
        return [
            *super().emit_add(var, it),
            "_x2 = _x * _x",
            *neumaier(f"{var}.q", f"{var}.cq", "_x2"),
        ]

    def emit_remove(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.remove(item)``."""
        return [
            f"{var}.n -= 1",
            f"if {var}.n == 0:",
            f"    {var}.s = {var}.cs = {var}.q = {var}.cq = 0.0",
            "else:",
            f"    _x = -{it.field(self.idx)}",
            *(f"    {line}" for line in neumaier(f"{var}.s", f"{var}.cs", "_x")),
            "    _x2 = -(_x * _x)",
            *(f"    {line}" for line in neumaier(f"{var}.q", f"{var}.cq", "_x2")),
        ]

    def std(self, values: Callable[[], Sequence[float]]) -> float:
        """Population std; ``values`` gives the window's values for the exact path."""
        n = self.n
        if n <= 1:
            return 0.0 if n == 1 else math.nan
        s = self.s + self.cs
        q = self.q + self.cq
        centred = q - s * s / n
        if centred > _ILL_CONDITIONED * q:
            return math.sqrt(centred / n)
        return exact_std(values())


def _as_integers(xs: Sequence[float]) -> tuple[list[int], int]:
    """Exact integers a and one power-of-two d with x == a / d for every x."""
    ratios = [x.as_integer_ratio() for x in xs]
    d = max(den for _, den in ratios)
    return [num * (d // den) for num, den in ratios], d


def exact_std(xs: Sequence[float]) -> float:
    """Population std computed exactly (integer arithmetic), rounded once at the end.

    Used where the running sums have lost precision to cancellation: values that
    are all equal then give exactly 0, not one ulp of the value.
    """
    n = len(xs)
    if n == 0 or not all(map(math.isfinite, xs)):
        return math.nan
    a, d = _as_integers(xs)
    s = sum(a)
    num, den = n * sum(v * v for v in a) - s * s, n * n * d * d
    try:
        return math.sqrt(num / den)
    except OverflowError:  # variance beyond the float range; the std may still fit
        return math.exp((math.log(num) - math.log(den)) / 2)


def exact_centred(x: float, xs: Sequence[float]) -> float:
    """x - mean(xs), exactly, rounded once (the zscore numerator of a tight cluster)."""
    n = len(xs)
    if n == 0 or not math.isfinite(x) or not all(map(math.isfinite, xs)):
        return math.nan
    a, d = _as_integers([x, *xs])
    try:
        return (n * a[0] - sum(a[1:])) / (n * d)
    except OverflowError:
        return x - math.fsum(xs) / n


class Extreme:
    """Running max (or min) over a sliding window: a monotonic queue of (value, item number).

    The queue is a list (its oldest entry first): it is short, and an empty list costs
    56 bytes where a deque allocates a block of 64 slots per record.
    """

    __slots__ = ("dq", "idx", "largest")

    def __init__(self, idx: int, largest: bool) -> None:
        self.idx = idx
        self.largest = largest
        self.dq: list[tuple[Any, int]] = []

    def add(self, item: Item, seq: int = 0) -> None:
        """Add the newest item; older items it dominates can never be the extreme again."""
        self.push(item[self.idx], seq)

    def push(self, v: Any, seq: int) -> None:
        """Add the newest item's value ``v``."""
        dq = self.dq
        if self.largest:
            while dq and dq[-1][0] <= v:
                dq.pop()
        else:
            while dq and dq[-1][0] >= v:
                dq.pop()
        dq.append((v, seq))

    def remove(self, item: Item, seq: int = 0) -> None:
        """Remove the oldest item of the window (numbered ``seq``)."""
        if self.dq and self.dq[0][1] == seq:
            del self.dq[0]

    def fill(self, items: Any, lo: int, hi: int) -> bool:
        """The queue ``add`` leaves after items ``lo`` to ``hi`` (numbered from ``items.dropped + lo``)."""
        self.dq = []
        push = self.push
        for seq, v in enumerate(items.column(self.idx)[lo:hi], items.dropped + lo):
            push(v, seq)
        return True

    def emit_add(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.add(item)``; binds ``{var}q``, the queue, for ``emit_remove``."""
        op, dq = "<=" if self.largest else ">=", f"{var}q"
        return [
            f"{dq} = {var}.dq",
            f"_v = {it.field(self.idx)}",
            f"while {dq} and {dq}[-1][0] {op} _v:",
            f"    {dq}.pop()",
            f"{dq}.append((_v, {it.seq}))",
        ]

    def emit_remove(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.remove(item)`` (after ``emit_add`` of the same ``var``)."""
        dq = f"{var}q"
        return [f"if {dq} and {dq}[0][1] == {it.seq}:", f"    del {dq}[0]"]

    def __len__(self) -> int:
        return len(self.dq)

    def value(self) -> float:
        """The current extreme (NaN when empty)."""
        return self.dq[0][0] if self.dq else math.nan  # type: ignore[no-any-return]


class Counter:
    """Occurrences of each value of one field: distinct count and per-value count."""

    __slots__ = ("counts", "idx")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.counts: dict[Any, int] = {}

    def add(self, item: Item, seq: int = 0) -> None:
        """Count an item's value."""
        k = item[self.idx]
        self.counts[k] = self.counts.get(k, 0) + 1

    def remove(self, item: Item, seq: int = 0) -> None:
        """Uncount an item's value."""
        k = item[self.idx]
        c = self.counts[k] - 1
        if c:
            self.counts[k] = c
        else:
            del self.counts[k]

    def fill(self, items: Any, lo: int, hi: int) -> bool:
        """The counts of items ``lo`` to ``hi``, in first-seen order as ``add`` makes them."""
        self.counts = dict(collections.Counter(items.column(self.idx)[lo:hi]))
        return True

    def emit_add(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.add(item)``; binds ``{var}c``, the counts, for ``emit_remove``."""
        c = f"{var}c"
        return [f"{c} = {var}.counts", f"_k = {it.field(self.idx)}", f"{c}[_k] = {c}.get(_k, 0) + 1"]

    def emit_remove(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.remove(item)`` (after ``emit_add`` of the same ``var``)."""
        c = f"{var}c"
        return [
            f"_k = {it.field(self.idx)}",
            f"_n = {c}[_k] - 1",
            "if _n:",
            f"    {c}[_k] = _n",
            "else:",
            f"    del {c}[_k]",
        ]

    def __len__(self) -> int:
        return len(self.counts)


class Tally:
    """Number of items (the count of a filtered or keyed window)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def add(self, item: Item, seq: int = 0) -> None:
        """Count an item."""
        self.n += 1

    def remove(self, item: Item, seq: int = 0) -> None:
        """Uncount an item."""
        self.n -= 1

    def fill(self, items: Any, lo: int, hi: int) -> bool:
        """The count of items ``lo`` to ``hi``."""
        self.n = hi - lo
        return True

    def emit_add(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.add(item)``."""
        return [f"{var}.n += 1"]

    def emit_remove(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.remove(item)``."""
        return [f"{var}.n -= 1"]

    def __len__(self) -> int:
        return self.n


class Keyed:
    """One aggregator per value of a key field (for ``same_as_current`` filters).

    ``idx`` is an item index, or a tuple of them for a key of several fields.
    """

    __slots__ = ("idx", "make", "parts")

    def __init__(self, idx: int | tuple[int, ...], make: Callable[[], Any]) -> None:
        self.idx = idx
        self.make = make
        self.parts: dict[Any, Any] = {}

    def key(self, item: Item) -> Any:
        """The key of an item."""
        idx = self.idx
        return item[idx] if isinstance(idx, int) else tuple(item[i] for i in idx)

    def add(self, item: Item, seq: int = 0) -> None:
        """Add an item to its key's aggregator."""
        k = self.key(item)
        part = self.parts.get(k)
        if part is None:
            part = self.parts[k] = self.make()
        part.add(item, seq)

    def remove(self, item: Item, seq: int = 0) -> None:
        """Remove an item from its key's aggregator (dropping it once empty)."""
        k = self.key(item)
        part = self.parts[k]
        part.remove(item, seq)
        if not len(part):
            del self.parts[k]

    def fill(self, items: Any, lo: int, hi: int) -> bool:
        """The parts ``add`` leaves after items ``lo`` to ``hi``, counted in C; only when they are tallies."""
        if not (isinstance(self.idx, int) and self.make is Tally):
            return False
        self.parts = {}
        for k, n in collections.Counter(items.column(self.idx)[lo:hi]).items():
            part = self.parts[k] = Tally()
            part.n = n
        return True

    def emit_add(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.add(item)`` (a call: filtered windows are rare)."""
        return [f"{var}.add({it.whole}, {it.seq})"]

    def emit_remove(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.remove(item)``."""
        return [f"{var}.remove({it.whole}, {it.seq})"]

    def get(self, key: Any) -> Any:
        """The aggregator of one key (None if no item of that key is inside)."""
        return self.parts.get(key)


class Filtered:
    """An aggregator that sees only the items passing ``test`` (constant filters)."""

    __slots__ = ("inner", "test")

    def __init__(self, test: Callable[[Item], bool], inner: Any) -> None:
        self.test = test
        self.inner = inner

    def add(self, item: Item, seq: int = 0) -> None:
        """Add the item if it qualifies."""
        if self.test(item):
            self.inner.add(item, seq)

    def remove(self, item: Item, seq: int = 0) -> None:
        """Remove the item if it qualifies (it was added then)."""
        if self.test(item):
            self.inner.remove(item, seq)

    def emit_add(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.add(item)`` (a call: filtered windows are rare)."""
        return [f"{var}.add({it.whole}, {it.seq})"]

    def emit_remove(self, var: str, it: Src) -> list[str]:
        """Inline source of ``var.remove(item)``."""
        return [f"{var}.remove({it.whole}, {it.seq})"]
