"""µs per event of each worker step, from ``worker_entry --timing`` JSON files.

    python -m bench.timing_report FILE.json [FILE.json ...]

Steps nest: "score messages" includes "predict"; "process (total)" includes decode,
record load, the checkpoint's record copies, engine and score messages, and the
producer batches of scores (those of the changelog are sent by the checkpoint task,
as are delivery waits, RocksDB writes and commits). gc time is inside whichever step
allocated. "other in process" is ``process`` less decode, record load, record
copies, engine and score messages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

_INSIDE_PROCESS = (
    "decode", "record load", "record copies before change", "engine (append + features)",
    "score messages (incl. predict)",
)  # fmt: skip


def main(paths: list[str]) -> None:
    """Print one column per file."""
    data = [json.loads(Path(p).read_text()) for p in paths]
    table = Table(title="worker steps, wall-clock µs per event")
    table.add_column("step")
    for p, d in zip(paths, data, strict=True):
        table.add_column(
            f"{Path(p).stem}\n{d['events']:,} events, {d['batches']:,} batches\n"
            f"({d['events'] / max(1, d['batches']):,.0f} per batch)",
            justify="right",
        )
    steps: list[str] = []
    for d in data:
        steps += [s for s in d["seconds"] if s not in steps]
    steps.append("other in process")
    for step in steps:
        cells = []
        for d in data:
            sec = d["seconds"]
            if step == "other in process":
                value = sec.get("process (total)", 0) - sum(sec.get(s, 0) for s in _INSIDE_PROCESS)
            else:
                value = sec.get(step, 0.0)
            cells.append(f"{value / max(1, d['events']) * 1e6:.1f}")
        table.add_row(step, *cells)
    Console(width=160).print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
