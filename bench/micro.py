"""CPU cost per event of each piece of the worker's batch loop, without a broker.

Runs the worker's own calls on real Sparkov events in batches shaped like the
worker's (one partition's share of a poll), after a warm-up that fills the
30-day windows, and prints µs per event for each step. Use it to see what a
change in ``streams/worker.py`` or ``entities/`` buys before running the full bench.

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
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from rich.console import Console
from rich.table import Table

from bench.model import model_artifact
from entities.engine import Engine
from entities.events import EventCodec
from entities.spec import load_spec
from models.artifact import load
from models.scorer import Scorer
from streams import messages as msg
from streams.kafka_io import partition_for
from streams.metrics import WorkerMetrics
from streams.produce import file_events
from streams.sources import Rejected
from streams.store import PartitionStore

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
    codec, items = file_events(SPEC, args.input, None)
    events = [e for e in islice(items, args.events) if not isinstance(e, Rejected)]
    # One partition's events, as the worker sees them.
    mine = [e for e in events if partition_for(e.entity_id.encode(), args.partitions) == 0]
    wire = [(e.entity_id.encode(), codec.encode(e)) for e in mine]
    warm = len(mine) // 2
    engine = Engine(spec)
    engine.process(mine[:warm])
    timers: dict[str, float] = defaultdict(float)
    n = 0
    names = spec.feature_names
    metrics = WorkerMetrics()
    store_dir = Path("/tmp") / f"bench-micro-{time.time_ns()}"
    store = PartitionStore(store_dir)
    try:
        for start in range(warm, len(mine), args.batch):
            keys_values = wire[start : start + args.batch]
            n += len(keys_values)
            t: Any = _timed(timers)
            decoded = t("decode (msgspec + checks)", lambda kv=keys_values: _decode(codec, kv))
            result = t("engine: append + features", lambda d=decoded: engine.process(d))
            matrix = t("rows -> numpy matrix", lambda r=result: np.array(r.rows, dtype=np.float64))
            scored = t("predict (200 trees)", lambda m=matrix: scorer.score(m))
            feats = t(
                "features dict per score",
                lambda r=result: [dict(zip(names, row, strict=True)) for row in r.rows],
            )
            t("score message + JSON encode", lambda r=result, s=scored, f=feats: _messages(r, s, f))
            t("score message, no features", lambda r=result, s=scored: _messages(r, s, None))
            t(
                "murmur2 partition per score",
                lambda r=result: [murmur2(e.entity_id.encode()) for e in r.scored],
            )
            values = [b"x" * 700] * len(result.scored)
            t("producer batch append", lambda v=values: _append(v))
            changed = t(
                "record encode (changed records)",
                lambda r=result: [(eid, engine.codec.encode(engine.records[eid])) for eid in r.changed],
            )
            t("rocksdb WriteBatch of changed", lambda c=changed, o=start: store.commit(c, o, o))
            t("latency histogram observe", lambda r=result: _observe(metrics, len(r.scored)))
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


def _messages(result: Any, scored: Any, feats: list[dict[str, Any]] | None) -> list[bytes]:
    encode = msg.score_encoder.encode
    source = SimpleNamespace(topic="events", partition=0)
    return [
        encode(
            msg.ScoreMessage(
                event_id=ev.event_id,
                entity_id=ev.entity_id,
                event_ts=ev.ts,
                scored_at=0,
                model=scored.model,
                model_version=scored.version,
                spec_hash="x" * 16,
                score=float(scored.scores[i]),
                source=msg.Source(source.topic, source.partition, i),
                late=result.late[i],
                features=None if feats is None else feats[i],
                **scored.extra(i),
            )
        )
        for i, ev in enumerate(result.scored)
    ]


def _observe(metrics: WorkerMetrics, n: int) -> None:
    observe = metrics.latency.observe
    for _ in range(n):
        observe(0.01)


def _append(values: list[bytes]) -> None:
    builder = DefaultRecordBatchBuilder(2, 0, 0, 0, 0, 0, 1 << 20)
    for v in values:
        if builder.append(0, None, b"1234567890123456", v, []) is None:
            builder = DefaultRecordBatchBuilder(2, 0, 0, 0, 0, 0, 1 << 20)
    builder.build()


if __name__ == "__main__":
    main()
