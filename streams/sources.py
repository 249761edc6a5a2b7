"""Recorded event files -> validated events in arrival order (replay and produce).

Arrival order is file order sorted stably by ts. Files are read as a stream; if a
file turns out not to be sorted, reading restarts in sorted mode (whole file in
memory), so sorted files - the usual case - cost one pass and bounded memory.

Supported: a CSV(.gz) with a ``csv_mapping`` declared by the spec module, or a
JSON-lines(.gz) file of wire events. Bad rows come out as :class:`Rejected`.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from entities.events import Event, EventCodec, EventError

BLOCK_BYTES = 4 << 20


@dataclass(frozen=True)
class Rejected:
    """An input row that could not become events: where, and why."""

    row: int
    error: str


class NotSorted(Exception):
    """The input is not sorted by ts: read it again in sorted mode."""


def is_csv(path: Path) -> bool:
    """CSV by file name (``.csv`` or ``.csv.gz``); anything else is JSON lines."""
    return ".csv" in path.suffixes


def read_events(
    path: Path,
    codec: EventCodec,
    spec_module: ModuleType,
    limit: int | None = None,
    sort: bool = False,
) -> Iterator[Event | Rejected]:
    """Events of a file in arrival order, with rejected rows in between.

    With ``sort=False`` raises NotSorted on the first out-of-order ts: the caller
    discards partial work and reads again with ``sort=True``.
    """
    reader = _csv_rows if is_csv(path) else _jsonl_rows
    yield from reader(path, codec, spec_module, limit, sort)


# --- CSV -------------------------------------------------------------------------------


def _csv_rows(
    path: Path, codec: EventCodec, spec_module: ModuleType, limit: int | None, sort: bool
) -> Iterator[Event | Rejected]:
    mapping_type = getattr(spec_module, "csv_mapping", None)
    if mapping_type is None:
        raise ValueError(f"{path}: CSV input needs `csv_mapping` in the spec module")
    mapping = mapping_type(codec)
    invalid: list[Rejected] = []

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
        order = pc.sort_indices(pa.table({"ts": ts}), [("ts", "ascending")], null_placement="at_start")
        row_numbers = pa.array(range(1, table.num_rows + 1)).take(order).to_pylist()
        batches = iter(table.take(order).to_batches())
    else:
        row_numbers = None
    first_row, newest = 1, None
    for batch in batches:
        yield from invalid
        invalid.clear()
        ts_col = _parse_ts(batch.column(mapping.ts_column), mapping.ts_format)
        if not sort:
            newest = _check_sorted(ts_col, newest)
        ts_list = ts_col.to_pylist()
        raw_ts = batch.column(mapping.ts_column).to_pylist()
        cols = {c: batch.column(c).to_pylist() for c in mapping.columns}
        events = mapping.events
        for i, ts in enumerate(ts_list):
            row = row_numbers[first_row - 1 + i] if row_numbers else first_row + i
            if ts is None:
                yield Rejected(row, f"field '{mapping.ts_column}': not a timestamp: {raw_ts[i]!r}")
                continue
            try:
                yield from events(cols, i, ts)
            except EventError as err:
                yield Rejected(row, str(err))
        first_row += batch.num_rows
    yield from invalid


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


def _jsonl_rows(
    path: Path, codec: EventCodec, spec_module: ModuleType, limit: int | None, sort: bool
) -> Iterator[Event | Rejected]:
    opener = gzip.open if path.suffix == ".gz" else open
    decoded: list[tuple[int, Event | Rejected]] = []
    newest: int | None = None
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
                if newest is not None and event.ts < newest:
                    raise NotSorted
                newest = event.ts
            yield event
    if sort:
        decoded.sort(key=lambda p: (p[1].ts if isinstance(p[1], Event) else -(2**63), p[0]))
        for _, event in decoded:
            yield event
