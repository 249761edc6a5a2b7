"""Replay on a Dask cluster: one ``replay --shard i/N`` task per shard, then ``replay-merge``.

    python examples/dask_replay.py --spec examples/fraud/spec.py --adapter examples/fraud/sparkov.py \\
        --input examples/fraud/sample.csv.gz --shards 4 --features-out out/features.parquet
        [--warmup HISTORY ...] [--scheduler tcp://HOST:8786 | --local-workers 2] [--work DIR]

Each task runs ``supernova replay --shard i/N`` (its Python form, so its summary comes
back to the client) and writes shard ``i``'s rows under ``--work``; the client then
merges them as ``supernova replay-merge`` does into ``--features-out``: exactly the
rows of a one-process replay. On a real cluster, every worker must see the input,
warm-up, spec and adapter files and ``--work`` at the same paths (a shared file
system), and have this project installed. Without ``--scheduler`` it starts a
LocalCluster of ``--local-workers`` processes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dask.distributed import Client, LocalCluster

from streams.replay import ReplaySummary, replay
from streams.shards import Shard, merge


def replay_shard(
    shard: Shard, spec: Path, source: Path, adapter: str | None, warmup: list[Path], out: Path
) -> ReplaySummary:
    """One Dask task: ``supernova replay --shard i/N ... --features-out out``."""
    return replay(spec, source, features_out=out, adapter=adapter, warmup=warmup, shard=shard)


def run(client: Client, args: argparse.Namespace) -> ReplaySummary:
    """Submit the shards, wait for all of them, merge; the summary of the whole run."""
    started = time.perf_counter()
    work: Path = args.work or args.features_out.parent / f".{args.features_out.name}.shards"
    name = "features.parquet" if args.features_out.suffix == ".parquet" else "features"
    outs = [work / f"shard-{i}" / name for i in range(args.shards)]
    futures = [
        client.submit(
            replay_shard,
            Shard(i, args.shards),
            args.spec.resolve(),
            args.input.resolve(),
            str(Path(args.adapter).resolve()) if args.adapter else None,
            [p.resolve() for p in args.warmup],
            outs[i].resolve(),
            key=f"replay-shard-{i}-of-{args.shards}",
            pure=False,
        )
        for i in range(args.shards)
    ]
    try:
        summaries = client.gather(futures)  # the first failed task raises its error here
        merge(outs, args.features_out)  # what `supernova replay-merge` does
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = ReplaySummary()
    for part in summaries:
        for field in ("events", "scored", "entities", "rejected", "duplicates"):
            setattr(total, field, getattr(total, field) + getattr(part, field))
    total.seconds = time.perf_counter() - started
    return total


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, type=Path)
    ap.add_argument("--input", required=True, type=Path)
    ap.add_argument("--adapter", help="FILE.py[:NAME] for a CSV input")
    ap.add_argument("--warmup", type=Path, action="append", default=[])
    ap.add_argument("--features-out", required=True, type=Path, help="F.parquet or a directory, as replay")
    ap.add_argument("--shards", type=int, default=2, help="tasks, one shard of the entities each")
    ap.add_argument("--scheduler", help="address of a running Dask scheduler (default: a LocalCluster)")
    ap.add_argument("--local-workers", type=int, default=2, help="processes of the LocalCluster")
    ap.add_argument("--work", type=Path, help="shard outputs (shared by the workers; removed at the end)")
    args = ap.parse_args(argv)
    if args.shards < 1:
        ap.error("--shards must be at least 1")
    if args.scheduler:
        with Client(args.scheduler) as client:
            summary = run(client, args)
    else:
        cluster = LocalCluster(
            n_workers=args.local_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        with cluster, Client(cluster) as client:
            summary = run(client, args)
    print(f"{args.shards} shards on Dask: {summary.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
