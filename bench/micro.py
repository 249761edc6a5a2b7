"""CPU cost per event of each piece of the worker's batch loop, without a broker.

Runs the worker's own calls on real Sparkov events in batches shaped like the
worker's (one partition's share of a poll), after a warm-up that fills the
30-day windows, and prints µs per event for each step. Use it to see what a
change in ``streams/`` (the worker's parts) or ``entities/`` buys before running the full bench.

    python -m bench.micro [--events 150000] [--batch 1250] [--model DIR]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from rich.console import Console
from rich.table import Table

from bench.model import model_artifact
from entities.engine import Engine
from entities.events import EventCodec
from entities.spec import load_spec
from models.artifact import load
from models.scorer import Scorer
from streams.kafka_io import partition_for
from streams.produce import file_events
from streams.sources import Rejected
from streams.state import Partition
from streams.store import PartitionStore
from streams.worker import BatchWorker, WorkerConfig, tune_gc

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "fraud" / "spec.py"
DATA = REPO.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> None:
    """Time each step; print a table of µs per event."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, default=DATA / "fraudTest.csv.gz")
    p.add_argument("--events", type=int, default=150_000, help="events to read (the first half warms up)")
    p.add_argument("--batch", type=int, default=1250, help="events per batch (one partition's share)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--model", type=Path)
    args = p.parse_args(argv)
    spec = load_spec(SPEC)
    model = args.model or model_artifact(SPEC, DATA / "fraudTrain.csv.gz", 300_000)
    scorer = Scorer(load(model, spec))
    codec, items = file_events(SPEC, args.input, None, adapter=SPEC.parent / "sparkov.py")
    events = [e for e in islice(items, args.events) if not isinstance(e, Rejected)]
    # One partition's events, as the worker sees them.
    mine = [e for e in events if partition_for(e.entity_id.encode(), args.partitions) == 0]
    wire = [(e.entity_id.encode(), codec.encode(e)) for e in mine]
    warm = len(mine) // 2
    engine = Engine(spec)
    engine.process(mine[:warm])
    tune_gc()  # as the worker does once started
    timers: dict[str, float] = defaultdict(float)
    n = 0
    store_dir = Path("/tmp") / f"bench-micro-{time.time_ns()}"
    store = PartitionStore(store_dir)
    # The worker's own score step, on a partition that is never started (no I/O).
    worker = BatchWorker(WorkerConfig(partitions=args.partitions), spec, scorer)
    bare = BatchWorker(WorkerConfig(partitions=args.partitions, include_features=False), spec, scorer)
    part = Partition(TopicPartition("events", 0), store, engine)
    try:
        for start in range(warm, len(mine), args.batch):
            keys_values = wire[start : start + args.batch]
            n += len(keys_values)
            t: Any = _timed(timers)
            decoded = t("decode (msgspec + checks)", lambda kv=keys_values: _decode(codec, kv))
            result = t("engine: append + features", lambda d=decoded: engine.process(d))
            scored = [
                (part, ev, SimpleNamespace(key=ev.entity_id.encode(), offset=i), late)
                for i, (ev, late) in enumerate(zip(result.scored, result.late, strict=True))
            ]
            messages = t(
                "score messages (predict, build, encode)",
                lambda s=scored, r=result: worker.emitter.scores(s, r.rows),
            )
            matrix = np.array(result.rows, dtype=np.float64)
            t("  of which predict (200 trees)", lambda m=matrix: scorer.score(m))
            t("  the same without features", lambda s=scored, r=result: bare.emitter.scores(s, r.rows))
            t("producer batch append", lambda v=[m[1] for m in messages]: _append(v))
            snapshots = t(
                "record copy at the checkpoint",
                lambda r=result: [(eid, engine.codec.snapshot(engine.records[eid])) for eid in r.changed],
            )
            changed = t(
                "record encode (a slice per poll)",
                lambda s=snapshots: [(eid, engine.codec.encode_snapshot(x)) for eid, x in s],
            )
            t("rocksdb WriteBatch of changed", lambda c=changed, o=start: store.commit(c, o, o))
            timers["changed records"] += len(changed)
            timers["changelog bytes"] += sum(len(d) for _, d in changed)
    finally:
        store.destroy()
    table = Table(title=f"µs per event: {n:,} events after {warm:,} warm-up, batches of {args.batch}")
    table.add_column("step")
    table.add_column("µs/event", justify="right")
    for step, seconds in timers.items():
        if step in ("changed records", "changelog bytes"):
            continue
        table.add_row(step, f"{seconds / n * 1e6:.2f}")
    table.add_row("changed records per event", f"{timers['changed records'] / n:.3f}")
    table.add_row("changelog bytes per event", f"{timers['changelog bytes'] / n:,.0f}")
    Console().print(table)


def _timed(timers: dict[str, float]) -> Callable[[str, Callable[[], Any]], Any]:
    def run(step: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        timers[step] += time.perf_counter() - t
        return out

    return run


def _decode(codec: EventCodec, keys_values: list[tuple[bytes, bytes]]) -> list[Any]:
    out = []
    for key, value in keys_values:
        event = codec.decode(value)
        if event.entity_id.encode() != key:
            raise ValueError("key mismatch")
        out.append(event)
    return out


def _append(values: list[bytes]) -> None:
    builder = DefaultRecordBatchBuilder(2, 0, 0, 0, 0, 0, 1 << 20)
    for v in values:
        if builder.append(0, None, b"1234567890123456", v, []) is None:
            builder = DefaultRecordBatchBuilder(2, 0, 0, 0, 0, 0, 1 << 20)
    builder.build()


if __name__ == "__main__":
    main()
