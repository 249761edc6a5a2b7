"""Bytes a record really takes in the worker's memory, against the cache's estimate.

    python -m bench.record_bytes [--input F] [--per-card 2] [--entities 100000]

Builds a population as ``bench/scale.py`` does (the last 8 days of the input, cards
cloned; ``--per-card N``: each card's history cut into cards of N transactions, 0:
whole cards), applies it with ``Engine.process`` in batches as the worker does,
encodes each changed record once (as a checkpoint leaves it) and keeps one last
score per entity (as ``Partition.last``). Real bytes per record: the growth of this
process's RSS over it (allocator slack included), divided by the records. Estimated:
``RecordCache.size_of`` (``streams/cache.py``, where the estimate lives). Run it for
two record sizes (``--per-card 2`` and ``0``) to fit ``RECORD_BYTES`` and
``ITEM_BYTES``: real = record + items × item.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
from pathlib import Path

from bench.run import SPEC, default_files
from bench.scale import _cards_per_copy, _events, clone, read_slice
from entities.engine import Engine
from entities.events import EventCodec
from entities.spec import load_spec
from streams.cache import RecordCache

BATCH = 5_000  # events per poll, as the worker's --max-batch


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    """Measure one population; print real and estimated bytes per record."""
    p = argparse.ArgumentParser(prog="python -m bench.record_bytes", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path)
    p.add_argument("--days", type=float, default=8.0)
    p.add_argument("--per-card", type=int, default=2, help="transactions per card (0: whole cards)")
    p.add_argument("--entities", type=int, default=100_000)
    args = p.parse_args(argv)
    args.smoke, args.train, args.train_rows = False, None, 0
    default_files(args)
    spec = load_spec(SPEC)
    codec = EventCodec(spec)
    slice_ = read_slice(args.input, args.days)
    per_card = args.per_card or None
    factor = math.ceil(args.entities / _cards_per_copy(slice_, per_card))
    with tempfile.TemporaryDirectory() as tmp:
        pop = clone(slice_, "p", factor, per_card, Path(tmp) / "p.csv")
        events = list(_events(pop.path, codec))
    del slice_
    engine = Engine(spec)
    cache = RecordCache(spec, engine.codec, lambda ids: [None] * len(ids), budget=1 << 62)
    engine.records = cache.records
    last: dict[str, dict[str, tuple[float, str, list[float]]]] = {}
    gc.collect()
    gc.freeze()
    before = rss_bytes()
    for start in range(0, len(events), BATCH):
        result = engine.process(events[start : start + BATCH])
        for event, row in zip(result.scored, result.rows, strict=True):
            last[event.entity_id] = {event.type: (0.5, event.event_id, row)}
        cache.note_changed(result.changed)
        for entity_id in result.changed:
            for _ in engine.codec.encode_parts(engine.records[entity_id], None):
                pass
    gc.collect()
    real = rss_bytes() - before
    n = len(cache.records)
    items = sum(len(v) for rec in cache.records.values() for v in rec.items.values())
    print(
        f"{args.per_card or 'whole'} transactions per card: {n:,} records, {items / n:.1f} items each; "
        f"real {real / n:,.0f} B per record (RSS), estimated {cache.bytes / n:,.0f} B "
        f"({cache.bytes / real:.2f}× real)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
