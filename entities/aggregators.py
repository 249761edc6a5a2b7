"""Sliding-window aggregators: add the newest item, remove the oldest, read a value.

Each aggregator holds plain data and is rebuilt from the record's items when a record
is loaded, so nothing here is serialised. Items are tuples; ``idx`` picks the field.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

Item = tuple[Any, ...]

# Below this ratio of centred to raw sum of squares the running variance has lost
# more than ~1e-12 of relative precision to cancellation: recompute in two passes.
_ILL_CONDITIONED = 1e-3


class Moments:
    """Count, sum and sum of squares of one field, with Neumaier-compensated updates."""

    __slots__ = ("idx", "n", "s", "cs", "q", "cq")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.n = 0
        self.s = self.cs = self.q = self.cq = 0.0

    def add(self, item: Item) -> None:
        """Add an item's value."""
        self._update(item[self.idx], 1)

    def remove(self, item: Item) -> None:
        """Remove an item's value (it must have been added)."""
        self._update(-item[self.idx], -1)

    def _update(self, x: float, dn: int) -> None:
        self.n += dn
        if self.n == 0:  # empty: drop accumulated rounding entirely
            self.s = self.cs = self.q = self.cq = 0.0
            return
        s = self.s
        t = s + x
        self.cs += (s - t) + x if abs(s) >= abs(x) else (x - t) + s
        self.s = t
        x2 = x * x if dn > 0 else -(x * x)
        q = self.q
        t = q + x2
        self.cq += (q - t) + x2 if abs(q) >= abs(x2) else (x2 - t) + q
        self.q = t

    def __len__(self) -> int:
        return self.n

    def total(self) -> float:
        """Sum of the values."""
        return self.s + self.cs

    def mean(self) -> float:
        """Mean of the values (NaN when empty)."""
        return (self.s + self.cs) / self.n if self.n else math.nan

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


def exact_std(xs: Sequence[float]) -> float:
    """Two-pass population std with exactly rounded sums."""
    n = len(xs)
    if n == 0:
        return math.nan
    m = math.fsum(xs) / n
    return math.sqrt(math.fsum([(x - m) * (x - m) for x in xs]) / n)


class Extreme:
    """Running max (or min) over a sliding window: a monotonic deque of items."""

    __slots__ = ("idx", "sign", "dq")

    def __init__(self, idx: int, largest: bool) -> None:
        self.idx = idx
        self.sign = 1.0 if largest else -1.0
        self.dq: deque[Item] = deque()

    def add(self, item: Item) -> None:
        """Add the newest item; older items it dominates can never be the extreme again."""
        dq, i, v = self.dq, self.idx, item[self.idx] * self.sign
        while dq and dq[-1][i] * self.sign <= v:
            dq.pop()
        dq.append(item)

    def remove(self, item: Item) -> None:
        """Remove the oldest item of the window."""
        if self.dq and self.dq[0] is item:
            self.dq.popleft()

    def __len__(self) -> int:
        return len(self.dq)

    def value(self) -> float:
        """The current extreme (NaN when empty)."""
        return self.dq[0][self.idx] if self.dq else math.nan


class Counter:
    """Occurrences of each value of one field: distinct count and per-value count."""

    __slots__ = ("idx", "counts")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.counts: dict[Any, int] = {}

    def add(self, item: Item) -> None:
        """Count an item's value."""
        k = item[self.idx]
        self.counts[k] = self.counts.get(k, 0) + 1

    def __len__(self) -> int:
        return len(self.counts)

    def remove(self, item: Item) -> None:
        """Uncount an item's value."""
        k = item[self.idx]
        c = self.counts[k] - 1
        if c:
            self.counts[k] = c
        else:
            del self.counts[k]


class Keyed:
    """One aggregator per value of a key field (for ``same_as_current`` filters)."""

    __slots__ = ("idx", "make", "parts")

    def __init__(self, idx: int, make: Callable[[], Any]) -> None:
        self.idx = idx
        self.make = make
        self.parts: dict[Any, Any] = {}

    def add(self, item: Item) -> None:
        """Add an item to its key's aggregator."""
        k = item[self.idx]
        part = self.parts.get(k)
        if part is None:
            part = self.parts[k] = self.make()
        part.add(item)

    def remove(self, item: Item) -> None:
        """Remove an item from its key's aggregator (dropping it once empty)."""
        k = item[self.idx]
        part = self.parts[k]
        part.remove(item)
        if not len(part):
            del self.parts[k]

    def get(self, key: Any) -> Any:
        """The aggregator of one key (None if that key never occurred)."""
        return self.parts.get(key)
