"""Time ``streams.recovery.restore`` alone, of one source tree, into empty stores (run by bench/restore.py).

    python bench/restore_probe.py --tree DIR --bootstrap B --topic T --partitions 4 --data D [--profile F]

``--tree`` is put first on ``sys.path``, so that ``streams`` and ``entities`` are
that tree's (an export of an older commit, or this checkout): the same probe times
the code before and after a change against the same changelog, with the garbage
collector tuned as that tree's worker tunes it. Prints one JSON line: seconds per
partition, CPU seconds (RocksDB's threads included), messages restored.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import sys
import time
from pathlib import Path
from typing import Any


def main() -> None:
    """Restore every partition of the topic into a fresh store under ``--data``, timed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--spec", type=Path, required=True)
    p.add_argument("--profile", type=Path)
    args = p.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    print(json.dumps(asyncio.run(_probe(args))), flush=True)


async def _probe(args: argparse.Namespace) -> dict[str, Any]:
    from entities.record import RecordCodec
    from entities.spec import load_spec
    from streams.layout import LayoutCheck
    from streams.recovery import restore
    from streams.store import PartitionStore

    check = LayoutCheck(RecordCodec(load_spec(args.spec)))
    # The collector as the worker sets it before its partitions are assigned: with
    # Python's default thresholds a restore that keeps many objects alive at once (a
    # consumer's ConsumerRecords) pays for collections a worker does not.
    from streams.worker import tune_gc

    tune_gc()
    seconds: list[float] = []
    cpu = time.process_time()
    messages = 0
    profiler = cProfile.Profile() if args.profile else None
    for part in range(args.partitions):
        store = PartitionStore(args.data / f"p{part}")
        t = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        restored = await restore(
            args.bootstrap, args.topic, part, store, {}, check=lambda r: check.check(r, "changelog")
        )
        if profiler is not None:
            profiler.disable()
        seconds.append(time.perf_counter() - t)
        messages += restored.records
        store.close()
    if profiler is not None:
        profiler.dump_stats(str(args.profile))
    cpu = time.process_time() - cpu  # this process's threads, RocksDB's included; the stores' closes too
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "messages": messages,
        "module": sys.modules["streams.recovery"].__file__,
    }


if __name__ == "__main__":
    main()
