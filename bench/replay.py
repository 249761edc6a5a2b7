"""Replay throughput: events/s of a full replay, peak memory, and where the time goes.

    .venv/bin/python bench/replay.py --input ../shared/data/fraudTest.csv.gz [--limit N] [--stages] [--jobs N]

(``--adapter FILE.py[:NAME]`` maps CSV rows to events; default: the Sparkov adapter.)

The first row is the real thing: ``streams.replay.replay`` writing the features to a
temporary Parquet file, timed wall-clock and in process CPU time (the machine may be
shared; CPU time is what the cores spend, worker processes included). Peak RSS is
``ru_maxrss`` after it (with ``--jobs N``, also of the largest worker). With
``--stages`` (CSV input) the input is replayed three more times, each pass stopping one step
earlier, and the differences give the cost per event of each step:

    read    CSV blocks -> Python columns (decompress, parse, ts, to_pylist)
    map     rows -> validated events (the input adapter, --adapter)
    apply   Engine.process: records, windows, features
    output  feature matrix, output columns, Parquet
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from entities.engine import Engine
from entities.events import EventCodec
from entities.spec import load_spec
from streams.adapters import AdapterRef, resolve_adapter
from streams.replay import ReplaySummary, _batches, _gc_tuned, replay
from streams.sources import Block, read_blocks

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "fraudTest.csv.gz"
DEFAULT_SPEC = ROOT / "examples" / "fraud" / "spec.py"
DEFAULT_ADAPTER = ROOT / "examples" / "fraud" / "sparkov.py"


def _timed(run: Callable[[], int]) -> tuple[int, float, float]:
    """(events, wall s, CPU s) of one call, with the garbage collector tuned as replay does.

    CPU counts the child processes the call waited for (``replay --jobs``).
    """
    with _gc_tuned():
        wall, cpu = time.perf_counter(), time.process_time() + _children_cpu()
        events = run()
        return events, time.perf_counter() - wall, time.process_time() + _children_cpu() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _replay(
    spec: Path, path: Path, limit: int | None, adapter: AdapterRef = DEFAULT_ADAPTER, jobs: int = 1
) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        summary = replay(
            spec, path, features_out=Path(tmp) / "features.parquet", limit=limit, adapter=adapter, jobs=jobs
        )
    return summary.events


def _blocks(
    spec: Path, path: Path, limit: int | None, adapter: AdapterRef, map_rows: bool
) -> Iterator[Block]:
    mapping = resolve_adapter(adapter)
    if not map_rows and mapping is not None:  # the same reading, with an adapter that makes no events

        class Unmapped(mapping):  # type: ignore[misc,valid-type]
            def map_rows(self, *args: Any) -> None:
                pass

        mapping = Unmapped
    yield from read_blocks(path, EventCodec(load_spec(spec)), mapping, limit)


def _read(spec: Path, path: Path, limit: int | None, adapter: AdapterRef) -> int:
    for _ in _blocks(spec, path, limit, adapter, map_rows=False):
        pass
    return 0  # no events made


def _map(spec: Path, path: Path, limit: int | None, adapter: AdapterRef) -> int:
    return sum(len(b.items) - b.rejected for b in _blocks(spec, path, limit, adapter, map_rows=True))


def _apply(spec: Path, path: Path, limit: int | None, adapter: AdapterRef) -> int:
    engine = Engine(load_spec(spec))
    n = 0
    for batch in _batches(_blocks(spec, path, limit, adapter, map_rows=True), ReplaySummary(), None):
        engine.process(batch)
        n += len(batch)
    return n


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="CSV(.gz) or JSON lines(.gz)")
    parser.add_argument("--limit", type=int, help="read only the first N input rows")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="feature spec module")
    parser.add_argument(
        "--adapter", default=str(DEFAULT_ADAPTER), help="input adapter FILE.py[:NAME] for CSV input"
    )
    parser.add_argument("--stages", action="store_true", help="also time each step (3 more passes)")
    parser.add_argument("--jobs", type=int, default=1, help="replay --jobs N: processes, entities split")
    args = parser.parse_args(argv)
    if not args.input.exists():
        parser.error(f"no such input: {args.input} (try examples/fraud/sample.csv.gz)")

    adapter = resolve_adapter(args.adapter)  # loaded once, outside the timings
    # A worker process loads the adapter itself: give it the file.
    ref = args.adapter if args.jobs > 1 else adapter
    events, wall, cpu = _timed(lambda: _replay(args.spec, args.input, args.limit, ref, args.jobs))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    label = "replay" if args.jobs == 1 else f"--jobs {args.jobs}"
    print(f"input    {args.input} ({events:,} events)")
    print(f"{'':10}{'wall s':>9}{'events/s':>11}{'CPU s':>9}{'events/CPU s':>14}")
    print(f"{label:10}{wall:9.2f}{events / wall:11,.0f}{cpu:9.2f}{events / cpu:14,.0f}")
    print(f"peak RSS {peak_mib:,.0f} MiB")
    if args.jobs > 1:
        worker_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS of a worker {worker_mib:,.0f} MiB")
    if not args.stages:
        return 0

    passes: dict[str, Callable[[Path, Path, int | None, AdapterRef], int]] = {
        "read": _read,
        "map": _map,
        "apply": _apply,
    }
    times = {
        name: _timed(partial(f, args.spec, args.input, args.limit, adapter))[1:] for name, f in passes.items()
    }
    times["output"] = (wall, cpu)
    print(f"\n{'step':10}{'µs/event wall':>15}{'µs/event CPU':>14}")
    prev = (0.0, 0.0)
    for name, (w, c) in times.items():
        print(f"{name:10}{(w - prev[0]) / events * 1e6:15.2f}{(c - prev[1]) / events * 1e6:14.2f}")
        prev = (w, c)
    print(f"{'total':10}{wall / events * 1e6:15.2f}{cpu / events * 1e6:14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
