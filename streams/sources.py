"""Recorded event files -> validated events in arrival order (replay and produce).

Arrival order is file order sorted stably by ts. Files are read as a stream; if a
file turns out not to be sorted, reading restarts in sorted mode (whole file in
memory), so sorted files - the usual case - cost one pass and bounded memory.

Supported: a CSV(.gz) read through an input adapter (see :mod:`streams.adapters`),
or a JSON-lines(.gz) file of wire events, which needs none. Bad rows come out as
:class:`Rejected`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from entities.events import Event, EventCodec, EventError
from entities.spec import Spec
from streams.adapters import AdapterRef, raw_columns, require_adapter, resolve_adapter

BLOCK_BYTES = 1 << 20  # ~4,000 Sparkov rows: Python columns of one block stay small
JSONL_BLOCK = 4096  # events per block of a JSON-lines file


@dataclass(frozen=True)
class Rejected:
    """An input row that could not become events: where, and why."""

    row: int
    error: str


class NotSorted(Exception):  # noqa: N818 - public name
    """The input is not sorted by ts: read it again in sorted mode."""


def is_csv(path: Path) -> bool:
    """CSV by file name (``.csv`` or ``.csv.gz``); anything else is JSON lines."""
    return ".csv" in path.suffixes


def read_events(
    path: Path,
    codec: EventCodec,
    adapter: AdapterRef = None,
    limit: int | None = None,
    sort: bool = False,
) -> Iterator[Event | Rejected]:
    """Events of a file in arrival order, with rejected rows in between.

    ``adapter`` maps CSV rows to events (a class or ``FILE.py[:NAME]``); JSON lines
    need none. With ``sort=False`` raises NotSorted on the first out-of-order ts: the
    caller discards partial work and reads again with ``sort=True``.
    """
    return chain.from_iterable(block.items for block in read_blocks(path, codec, adapter, limit, sort))


@dataclass
class Block:
    """Consecutive items of :func:`read_events`, and how many of them are Rejected."""

    items: list[Event | Rejected]
    rejected: int = 0


def read_blocks(
    path: Path,
    codec: EventCodec,
    adapter: AdapterRef = None,
    limit: int | None = None,
    sort: bool = False,
    check: bool = True,
) -> Iterator[Block]:
    """:func:`read_events` a block at a time (thousands of events): replay's loop.

    Handing over lists instead of single events keeps a generator step per event
    out of the hot path. A CSV without an adapter raises AdapterError here, not
    once reading starts. ``check=False`` (with ``sort=False``) takes the file in its
    order, out-of-order ts and all, as a stream would receive it.
    """
    if is_csv(path):
        return _csv_blocks(path, codec, require_adapter(resolve_adapter(adapter), path), limit, sort, check)
    return _jsonl_blocks(path, codec, limit, sort, check)


# --- CSV -------------------------------------------------------------------------------


class _BlockBuilder(Block):
    """The block of one CSV batch: ``reject(i, error)`` places the batch's row ``i``."""

    def __init__(self, first_row: int, row_numbers: list[int] | None) -> None:
        super().__init__([])
        self.first_row = first_row
        self.row_numbers = row_numbers

    def reject(self, i: int, err: EventError) -> None:
        row = self.first_row + i
        if self.row_numbers is not None:
            row = self.row_numbers[row - 1]
        self.items.append(Rejected(row, str(err)))
        self.rejected += 1


def _csv_blocks(
    path: Path, codec: EventCodec, adapter: type, limit: int | None, sort: bool, check: bool = True
) -> Iterator[Block]:
    mapping = adapter(codec)
    # Optional batch form of ``mapping.events``, for rows that all have a ts.
    map_rows = getattr(mapping, "map_rows", None)
    invalid: list[Event | Rejected] = []

    def on_invalid(row: Any) -> str:
        invalid.append(Rejected(row.number or -1, f"malformed CSV row: {row.text[:80]!r}"))
        return "skip"

    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            include_columns=[mapping.ts_column, *mapping.columns],
            column_types={c: pa.string() for c in (mapping.ts_column, *mapping.columns)},
        ),
    )
    batches = _limited(reader, limit)
    if sort:
        table = pa.Table.from_batches(list(batches), schema=reader.schema)
        ts = _parse_ts(table.column(mapping.ts_column), mapping.ts_format)
        order = pc.sort_indices(pa.table({"ts": ts}), sort_keys=[("ts", "ascending", "at_start")])
        row_numbers = pa.array(range(1, table.num_rows + 1)).take(order).to_pylist()
        batches = iter(table.take(order).to_batches())
    else:
        row_numbers = None
    first_row, newest = 1, None
    for batch in batches:
        if invalid:
            yield Block(invalid[:], len(invalid))
            invalid.clear()
        ts_col = _parse_ts(batch.column(mapping.ts_column), mapping.ts_format)
        if not sort and check:
            newest = _check_sorted(ts_col, newest)
        ts_list = ts_col.to_pylist()
        cols = {c: batch.column(c).to_pylist() for c in mapping.columns}
        out = _BlockBuilder(first_row, row_numbers)
        if map_rows is not None and ts_col.null_count == 0:
            map_rows(cols, ts_list, out.items, out.reject)
        else:
            raw_ts = batch.column(mapping.ts_column).to_pylist()
            events = mapping.events
            for i, ts in enumerate(ts_list):
                if ts is None:
                    out.reject(i, EventError(mapping.ts_column, f"not a timestamp: {raw_ts[i]!r}"))
                    continue
                try:
                    out.items.extend(events(cols, i, ts))
                except EventError as err:
                    out.reject(i, err)
        first_row += batch.num_rows
        yield out
    if invalid:
        yield Block(invalid[:], len(invalid))


def _limited(reader: Any, limit: int | None) -> Iterator[pa.RecordBatch]:
    seen = 0
    for batch in reader:
        if limit is not None and seen + batch.num_rows >= limit:
            yield batch.slice(0, limit - seen)
            return
        seen += batch.num_rows
        yield batch


def _parse_ts(column: Any, fmt: str) -> pa.Array:
    parsed = pc.strptime(column, format=fmt, unit="ms", error_is_null=True)
    return pc.cast(parsed, pa.int64())


def _check_sorted(ts: pa.Array, newest: int | None) -> int | None:
    """Raise NotSorted unless ts continues non-decreasing; return the new newest."""
    valid = pc.drop_null(ts)
    if len(valid) == 0:
        return newest
    first = valid[0].as_py()
    if newest is not None and first < newest:
        raise NotSorted
    if len(valid) > 1 and pc.any(pc.less(valid[1:], valid[:-1])).as_py():
        raise NotSorted
    return int(pc.max(valid).as_py())


# --- JSON lines ----------------------------------------------------------------------------


def _jsonl_blocks(
    path: Path, codec: EventCodec, limit: int | None, sort: bool, check: bool = True
) -> Iterator[Block]:
    opener = gzip.open if path.suffix == ".gz" else open
    decoded: list[tuple[int, Event | Rejected]] = []
    newest: int | None = None
    block = Block([])
    with opener(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if limit is not None and n > limit:
                break
            line = line.strip()
            if not line:
                continue
            try:
                event: Event | Rejected = codec.decode(line)
            except EventError as err:
                event = Rejected(n, str(err))
            if sort:
                decoded.append((n, event))
                continue
            if isinstance(event, Event):
                if check and newest is not None and event.ts < newest:
                    raise NotSorted
                newest = event.ts
            else:
                block.rejected += 1
            block.items.append(event)
            if len(block.items) >= JSONL_BLOCK:
                yield block
                block = Block([])
    if sort:
        decoded.sort(key=lambda p: (p[1].ts if isinstance(p[1], Event) else -(2**63), p[0]))
        items = [event for _, event in decoded]
        for start in range(0, len(items), JSONL_BLOCK):
            part = items[start : start + JSONL_BLOCK]
            yield Block(part, sum(isinstance(e, Rejected) for e in part))
    elif block.items:
        yield block


# --- columns to slice by (backtest --slice-by) -------------------------------------------


class SourceError(ValueError):
    """A slice column the source file cannot give: the message names the ones it can."""


MISSING_VALUE = "(none)"


def slice_columns(
    path: Path, spec: Spec, columns: list[str], adapter: AdapterRef = None
) -> dict[str, list[str]]:
    """``event_id`` and each of ``columns`` for every event of a source file, as text.

    CSV: ``columns`` are raw columns the adapter reads, and every event a row makes
    gets that row's values. JSON lines: ``type``, ``entity_id`` or ``attrs.<field>``
    of each wire event (``(none)`` where an event lacks the field). Rows that make
    no valid event are left out; the caller joins by event id.
    """
    if is_csv(path):
        return _csv_columns(path, EventCodec(spec), require_adapter(resolve_adapter(adapter), path), columns)
    return _jsonl_columns(path, spec, columns)


def _csv_columns(path: Path, codec: EventCodec, adapter: type, columns: list[str]) -> dict[str, list[str]]:
    readable = raw_columns(adapter)
    unknown = [c for c in columns if c not in readable]
    if unknown:
        raise SourceError(f"{path}: the adapter does not read {unknown}; columns it reads: {readable}")
    mapping = adapter(codec)
    out: dict[str, list[str]] = {"event_id": [], **{c: [] for c in columns}}
    reader = pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=lambda row: "skip"),
        convert_options=pacsv.ConvertOptions(
            include_columns=readable, column_types=dict.fromkeys(readable, pa.string())
        ),
    )
    for batch in reader:
        ts_list = _parse_ts(batch.column(mapping.ts_column), mapping.ts_format).to_pylist()
        cols = {c: batch.column(c).to_pylist() for c in mapping.columns}
        wanted = [(out[c], batch.column(c).to_pylist()) for c in columns]
        for i, ts in enumerate(ts_list):
            if ts is None:
                continue
            try:
                events = mapping.events(cols, i, ts)
            except EventError:
                continue
            for event in events:
                out["event_id"].append(event.event_id)
                for values, column in wanted:
                    values.append(MISSING_VALUE if column[i] is None else column[i])
    return out


def _jsonl_columns(path: Path, spec: Spec, columns: list[str]) -> dict[str, list[str]]:
    parts: list[Any] = [spec.fixed, *spec.repeated.values()]
    fields = {f for part in parts for f in part.fields}
    unknown = [
        c
        for c in columns
        if c not in ("type", "entity_id") and not (c.startswith("attrs.") and c[len("attrs.") :] in fields)
    ]
    if unknown:
        raise SourceError(
            f"{path}: cannot slice JSON lines by {unknown}: use type, entity_id or attrs.<field> "
            f"with a field of the spec's events ({sorted(fields)})"
        )
    out: dict[str, list[str]] = {"event_id": [], **{c: [] for c in columns}}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
                continue
            out["event_id"].append(event["event_id"])
            attrs = event.get("attrs")
            if not isinstance(attrs, dict):
                attrs = {}
            for c in columns:
                value = attrs.get(c[len("attrs.") :]) if c.startswith("attrs.") else event.get(c)
                out[c].append(MISSING_VALUE if value is None else str(value))
    return out
