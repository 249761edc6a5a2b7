"""A repeated attribute's items stored as columns: the compact part of a record.

Items live in memory as columns (``entities.items``) and are stored as columns, one
per position, so encoding and decoding are a copy of arrays and a record costs bytes
per item, not Python objects per item:

- ``ts``: msgpack integers (encoded and decoded in C, unlike a typed array built from
  Python ints);
- event ids: 16 bytes each when every id is a lowercase 32-digit hex string (Sparkov's
  ``trans_num``, uuid4 hex), else the strings; both decode to the exact ids, so
  dedupe within retention stays exact;
- ``float`` fields: float64 (bit for bit, NaN included);
- ``str`` fields: the distinct values in first-seen order plus 1-, 2- or 4-byte codes;
  decoded values are interned, so a merchant name is one object in the process
  however many records hold it;
- anything else (``int``, ``bool``, dates, optional fields): the values, typed.

The layout keeps columns contiguous and typed so a compiled kernel can later run the
window updates over them directly.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

import msgspec

from entities.items import EventIds, Items, field_kinds
from entities.spec import base_type

_SWAP = sys.byteorder != "little"  # the bytes at rest are little-endian everywhere
_CODE_TYPES = ((1 << 8, "B"), (1 << 16, "H"), (1 << 32, "I"))
_HEX_ID = 32


class ColumnsError(ValueError):
    """Columns whose lengths or codes do not fit together."""


class Text(msgspec.Struct, array_like=True):
    """A dictionary-coded text column: distinct values and one code per item."""

    values: list[str]
    codes: bytes


class Ids(msgspec.Struct, array_like=True):
    """Event ids: ``hex`` (16 bytes per id) when all are 32-digit lowercase hex, else ``text``."""

    hex: bytes = b""
    text: list[str] | None = None


def _pack(typecode: str, values: Any) -> bytes:
    arr = array(typecode, values)
    if _SWAP:
        arr.byteswap()
    return arr.tobytes()


def _unpack(typecode: str, data: bytes, n: int) -> array[Any]:
    arr = array(typecode)
    if len(data) != n * arr.itemsize:
        raise ColumnsError(f"a {typecode} column of {len(data)} bytes for {n} items")
    arr.frombytes(data)
    if _SWAP:
        arr.byteswap()
    return arr


def _pack_array(arr: array[Any]) -> bytes:
    if _SWAP:
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr.tobytes()


def encode_ids(ids: tuple[str, ...] | list[str]) -> Ids:
    """Event ids in their compact form (exact either way)."""
    joined = "".join(ids)
    if len(joined) == _HEX_ID * len(ids) and min(map(len, ids)) == _HEX_ID:  # so all are 32
        try:
            raw = bytes.fromhex(joined)
        except ValueError:
            raw = b""
        if raw.hex() == joined:  # fromhex also takes upper case and spaces: not exact
            return Ids(hex=raw)
    return Ids(text=list(ids))


def event_ids(ids: Ids, n: int) -> EventIds:
    """The event ids ``encode_ids`` stored, as ``Items`` keeps them (16 bytes each while hex)."""
    if ids.text is not None:
        if len(ids.text) != n:
            raise ColumnsError(f"{len(ids.text)} event ids for {n} items")
        return EventIds.of(None, ids.text)
    if len(ids.hex) != n * _HEX_ID // 2:
        raise ColumnsError(f"{len(ids.hex)} bytes of event ids for {n} items")
    return EventIds.of(ids.hex, None)


def decode_ids(ids: Ids, n: int) -> list[str]:
    """The event ids ``encode_ids`` stored, as strings."""
    stored = event_ids(ids, n)
    return [stored[i] for i in range(n)]


def encode_text(values: tuple[str, ...] | list[str]) -> Text:
    """A text column as distinct values and codes."""
    index = {v: i for i, v in enumerate(dict.fromkeys(values))}
    if len(index) <= 256:
        return Text(list(index), bytes(map(index.__getitem__, values)))
    typecode = next(t for limit, t in _CODE_TYPES if len(index) <= limit)
    return Text(list(index), _pack(typecode, map(index.__getitem__, values)))


def decode_text(column: Text, n: int) -> list[str]:
    """The values of a text column, interned."""
    if not n:
        return []
    width = len(column.codes) // n
    typecode = {1: "B", 2: "H", 4: "I"}.get(width)
    if typecode is None:
        raise ColumnsError(f"text codes of {len(column.codes)} bytes for {n} items")
    values = [sys.intern(v) for v in column.values]
    try:
        return list(map(values.__getitem__, _unpack(typecode, column.codes, n).tolist()))
    except IndexError:
        raise ColumnsError("a text code beyond its values") from None


class ColumnsCodec:
    """Encodes one repeated attribute's items as columns and back."""

    def __init__(self, name: str, fields: dict[str, Any]) -> None:
        self.name = name
        self.kinds = field_kinds(fields)  # "float" or "list", as Items keeps them
        self.stored: list[str] = []  # how each field is stored: float, text or typed
        members: list[tuple[str, Any]] = [("n", int), ("ts", list[int]), ("ids", Ids)]
        for i, (kind, t) in enumerate(zip(self.kinds, fields.values(), strict=True)):
            # positional names: a field may be called "n"
            stored = "float" if kind == "float" else "text" if base_type(t) is str else "typed"
            self.stored.append(stored)
            members.append((f"f{i}", {"float": bytes, "text": Text}.get(stored, list[t])))  # type: ignore[valid-type]
        self.struct = msgspec.defstruct(f"{name}_columns", members, array_like=True)

    def encode(self, items: Items | list[tuple[Any, ...]], lo: int = 0, hi: int | None = None) -> Any:
        """Items ``lo`` to ``hi`` (default: all) as one columns struct."""
        if not isinstance(items, Items):
            items = self.items_of(items)
        hi = len(items) if hi is None else hi
        n = hi - lo
        if n <= 0:
            return self.struct(0, [], Ids(), *(_EMPTY[k] for k in self.stored))
        whole = lo == 0 and hi == len(items)
        ids = items.ids
        if ids.raw is not None:
            stored_ids = Ids(hex=bytes(ids.raw[16 * lo : 16 * hi]))
        else:
            assert ids.text is not None
            stored_ids = encode_ids(ids.text if whole else ids.text[lo:hi])
        columns: list[Any] = []
        for stored, col in zip(self.stored, items.fields, strict=True):
            part = col if whole else col[lo:hi]
            if stored == "float":
                columns.append(_pack_array(part))
            elif stored == "text":
                columns.append(encode_text(part))
            else:
                columns.append(list(part))
        return self.struct(n, items.ts[lo:hi].tolist(), stored_ids, *columns)

    def items_of(self, tuples: list[tuple[Any, ...]]) -> Items:
        """Items holding these item tuples."""
        out = Items(self.kinds)
        for item in tuples:
            out.append(item)
        return out

    def decode(self, columns: Any) -> Items:
        """The items the columns hold, in their stored order."""
        n = columns.n
        if n < 0:
            raise ColumnsError(f"{n} items")
        values = msgspec.structs.astuple(columns)[3:]
        fields: list[Any] = []
        for stored, column in zip(self.stored, values, strict=True):
            if stored == "float":
                fields.append(_unpack("d", column, n))
            elif stored == "text":
                fields.append(decode_text(column, n))
            elif len(column) != n:
                raise ColumnsError(f"{len(column)} values for {n} items")
            else:
                fields.append(column)
        if len(columns.ts) != n:
            raise ColumnsError(f"{len(columns.ts)} timestamps for {n} items")
        try:
            ts = array("q", columns.ts)
        except OverflowError:
            raise ColumnsError("a timestamp beyond 64 bits") from None
        return Items.of(self.kinds, ts, event_ids(columns.ids, n), fields)


_EMPTY: dict[str, Any] = {"float": b"", "text": Text([], b""), "typed": []}
