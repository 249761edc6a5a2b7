"""A repeated attribute's retained items in memory: one typed column per position.

An item is ``(ts, event_id, *fields)`` in the spec's field order; :class:`Items` keeps
the items of one attribute as columns, so a retained item costs bytes, not Python
objects:

- ``ts``: an ``array('q')`` of epoch ms (8 bytes an item);
- event ids: :class:`EventIds`, 16 bytes an item while every id is a 32-digit
  lowercase hex string (Sparkov's ``trans_num``, uuid4 hex), else the strings and a
  set; both answer membership exactly, which is what dedupe within retention needs;
- ``float`` fields: ``array('d')`` (8 bytes, bit for bit, NaN included);
- every other field (text, int, optional, dates): a list of the values; text is
  interned when items are made, so each item costs a pointer.

The compiled hot path (``entities.codegen``) reads and appends the columns directly;
everything else may treat ``Items`` as a sequence of item tuples (``items[i]``,
slices, iteration), which builds the tuples on demand. Columns are also what a
record is stored as (``entities.columns``), so loading and storing a record copy
arrays instead of building objects per item.

``dropped`` counts the items ever dropped from the front, so ``dropped + i`` numbers
item ``i`` for as long as it is retained (the running max/min keep those numbers);
``inserted`` counts late insertions, which renumber what follows them.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator
from itertools import repeat
from typing import Any

from entities.spec import base_type

HEX_ID = 32
_FROMHEX = bytes.fromhex


def field_kinds(fields: dict[str, Any]) -> tuple[str, ...]:
    """Column kind of each field: "float" (an array) or "list"."""
    return tuple("float" if base_type(t) is float else "list" for t in fields.values())


def hex_key(event_id: str) -> bytes | None:
    """The 16 bytes of a 32-digit lowercase hex id (None for any other id)."""
    if len(event_id) != HEX_ID:
        return None
    try:
        raw = _FROMHEX(event_id)
    except ValueError:
        return None
    # fromhex also takes upper case: only the lowercase spelling decodes back exactly.
    return raw if len(raw) == HEX_ID // 2 and raw.hex() == event_id else None


class EventIds:
    """The event ids of retained items, in item order, with exact membership."""

    __slots__ = ("known", "raw", "text")

    def __init__(self) -> None:
        self.raw: bytearray | None = bytearray()  # 16 bytes an id while all are hex
        self.text: list[str] | None = None  # else the ids, and ``known`` for membership
        # How many times each text id is held: dropping one copy must not forget another.
        self.known: Counter[str] | None = None

    def __len__(self) -> int:
        return len(self.text) if self.text is not None else len(self.raw) // 16  # type: ignore[arg-type]

    def __contains__(self, event_id: object) -> bool:
        if self.known is not None:
            return event_id in self.known
        key = hex_key(event_id) if isinstance(event_id, str) else None
        if key is None:
            return False
        raw = self.raw
        assert raw is not None
        at = raw.find(key)
        while at >= 0 and at % 16:  # a match must start at an id, not straddle two
            at = raw.find(key, at + 1)
        return at >= 0

    def __getitem__(self, i: int) -> str:
        if self.text is not None:
            return self.text[i]
        raw = self.raw
        assert raw is not None
        n = len(raw) // 16
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("event id index out of range")
        return raw[16 * i : 16 * i + 16].hex()

    def insert(self, i: int, event_id: str) -> None:
        """Insert an id before position ``i`` (``len`` appends)."""
        if self.raw is not None:
            key = hex_key(event_id)
            if key is not None:
                self.raw[16 * i : 16 * i] = key
                return
            self._to_text()
        assert self.text is not None and self.known is not None
        self.text.insert(i, event_id)
        self.known[event_id] += 1

    def append(self, event_id: str) -> None:
        """Append an id."""
        if self.raw is not None:
            key = hex_key(event_id)
            if key is not None:
                self.raw += key
                return
            self._to_text()
        assert self.text is not None and self.known is not None
        self.text.append(event_id)
        self.known[event_id] += 1

    def drop(self, k: int) -> None:
        """Drop the ``k`` oldest ids."""
        if self.raw is not None:
            del self.raw[: 16 * k]
            return
        assert self.text is not None and self.known is not None
        known = self.known
        for event_id in self.text[:k]:
            left = known[event_id] - 1
            if left:
                known[event_id] = left
            else:
                del known[event_id]
        del self.text[:k]

    def part(self, lo: int, hi: int) -> EventIds:
        """A copy of ids ``lo`` to ``hi``."""
        out = EventIds()
        if self.raw is not None:
            out.raw = self.raw[16 * lo : 16 * hi]
        else:
            assert self.text is not None
            out.raw = None
            out.text = self.text[lo:hi]
            out.known = Counter(out.text)
        return out

    def _to_text(self) -> None:
        assert self.raw is not None
        self.text = [self.raw[i : i + 16].hex() for i in range(0, len(self.raw), 16)]
        self.known = Counter(self.text)
        self.raw = None

    @classmethod
    def of(cls, raw: bytes | None, text: list[str] | None) -> EventIds:
        """Ids from their stored form: 16 bytes each, or the strings."""
        out = cls()
        if text is not None:
            out.raw = None
            out.text = text
            out.known = Counter(text)
        else:
            out.raw = bytearray(raw or b"")
        return out


class Items:
    """The retained items of one repeated attribute, oldest first, as columns."""

    __slots__ = ("dropped", "fields", "ids", "inserted", "kinds", "ts")

    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.kinds = kinds
        self.ts: array[int] = array("q")
        self.ids = EventIds()
        self.fields: list[Any] = [array("d") if k == "float" else [] for k in kinds]
        self.dropped = 0
        self.inserted = 0

    # --- read as a sequence of item tuples ---------------------------------------------

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(len(self.ts)))]
        if i < 0:
            i += len(self.ts)
        if not 0 <= i < len(self.ts):
            raise IndexError("item index out of range")
        return self._item(i)

    def _item(self, i: int) -> tuple[Any, ...]:
        return (self.ts[i], self.ids[i], *[f[i] for f in self.fields])

    def values(self, lo: int, hi: int) -> list[tuple[Any, ...]]:
        """Item tuples ``lo`` to ``hi`` with None for the event id: what aggregators and
        filters read (they never read the id), built in C."""
        return list(zip(self.ts[lo:hi], repeat(None), *(f[lo:hi] for f in self.fields)))

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return (self._item(i) for i in range(len(self.ts)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Items, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Items({list(self)!r})"

    def column(self, idx: int) -> Any:
        """The column of item position ``idx`` (0: ts, 1: event ids, 2...: fields)."""
        if idx == 0:
            return self.ts
        if idx == 1:
            return self.ids
        return self.fields[idx - 2]

    # --- change --------------------------------------------------------------------------

    def append(self, item: tuple[Any, ...]) -> None:
        """Append an item tuple (the hot path appends to the columns itself)."""
        self.ts.append(item[0])
        self.ids.append(item[1])
        for col, value in zip(self.fields, item[2:], strict=True):
            col.append(value)

    def insert(self, i: int, item: tuple[Any, ...]) -> None:
        """Insert an item tuple before position ``i`` (a late item)."""
        self.ts.insert(i, item[0])
        self.ids.insert(i, item[1])
        for col, value in zip(self.fields, item[2:], strict=True):
            col.insert(i, value)
        self.inserted += 1

    def drop(self, k: int) -> None:
        """Drop the ``k`` oldest items (all of them if fewer)."""
        k = min(k, len(self.ts))
        if k <= 0:
            return
        del self.ts[:k]
        self.ids.drop(k)
        for col in self.fields:
            del col[:k]
        self.dropped += k

    def part(self, lo: int, hi: int) -> Items:
        """A copy of items ``lo`` to ``hi`` (numbered as here)."""
        out = Items(self.kinds)
        out.ts = self.ts[lo:hi]
        out.ids = self.ids.part(lo, hi)
        out.fields = [col[lo:hi] for col in self.fields]
        out.dropped = self.dropped + lo
        out.inserted = self.inserted
        return out

    def copy(self) -> Items:
        """A copy that later changes to this one do not reach."""
        return self.part(0, len(self.ts))

    @classmethod
    def of(cls, kinds: tuple[str, ...], ts: array[int], ids: EventIds, fields: list[Any]) -> Items:
        """Items from columns of equal length."""
        out = cls(kinds)
        out.ts, out.ids, out.fields = ts, ids, fields
        return out

    def extend(self, other: Items) -> None:
        """Append every item of ``other`` (newer than these)."""
        self.ts += other.ts
        if self.ids.raw is not None and other.ids.raw is not None:
            self.ids.raw += other.ids.raw
        else:
            for i in range(len(other.ids)):
                self.ids.append(other.ids[i])
        for mine, theirs in zip(self.fields, other.fields, strict=True):
            mine += theirs
