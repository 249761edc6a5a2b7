"""``supernova worker`` as the benchmark runs it: a start-up guard, optionally cProfile.

    python -m bench.worker_entry [--profile FILE] -- worker --spec ... --model ...

Start-up guard: ``BatchWorker.run`` polls while the rebalance listener is still
opening stores (``assign`` restores one partition after the other), and records
of a partition that is not in ``parts`` yet are skipped without seeking back, so
they are never scored. With a preloaded topic this loses whole partitions. The
guard holds the first poll until every assigned partition is open; the hot loop
is untouched. Remove it once ``streams/worker.py`` seeks back instead of skipping.

Profiling: with ``--profile`` the whole process runs under cProfile and the stats
are written when the worker exits (SIGTERM stops it gracefully). With ``--timing``
the steps of ``BatchWorker.process`` are wrapped in wall-clock timers instead (low
overhead: one timer call per batch and step, and one per event for decode) and the
totals are written as JSON on exit; ``bench/timing_report.py`` turns them into µs/event.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import cProfile
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streams.cli import main as supernova
from streams.worker import BatchWorker

_run = BatchWorker.run


async def _run_when_assigned(self: BatchWorker, should_stop: Callable[[], bool] = lambda: False) -> None:
    while not (self._stopping or should_stop()):
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        if assigned and all(tp.partition in self.parts for tp in assigned):
            break
        await asyncio.sleep(0.02)
    await _run(self, should_stop)


def _gc_freeze() -> None:
    """After start-up, move everything alive to the permanent generation; collect less often."""
    import gc

    start = BatchWorker.start

    async def start_then_freeze(self: BatchWorker) -> None:
        await start(self)
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)

    BatchWorker.start = start_then_freeze  # type: ignore[method-assign]


def _partition_cache() -> None:
    """Memoise the pure-Python murmur2 partition of a key (entity ids repeat)."""
    import functools

    import streams.worker as worker_module

    worker_module.partition_for = functools.lru_cache(maxsize=1 << 16)(worker_module.partition_for)


def _no_latency_histogram() -> None:
    """Drop the per-event Histogram.observe (what a once-per-batch observation would save)."""
    from streams.metrics import WorkerMetrics

    init = WorkerMetrics.__init__

    def no_observe(value: float, exemplar: Any = None) -> None:
        return None

    def init_without(self: WorkerMetrics) -> None:
        init(self)
        self.latency.observe = no_observe  # type: ignore[method-assign,assignment]

    WorkerMetrics.__init__ = init_without  # type: ignore[method-assign]


def _small_memtable() -> None:
    """8 MB RocksDB write buffers: every batch rewrites whole records, 64 MB memtables fill RSS."""
    import streams.store as store_module

    options = store_module.Options

    def small(*args: Any, **kwargs: Any) -> Any:
        opts = options(*args, **kwargs)
        opts.set_write_buffer_size(8 << 20)
        return opts

    store_module.Options = small  # type: ignore[misc,assignment]


def _small_fetch() -> None:
    """2 MB per partition / 8 MB per fetch instead of 16 / 64 MB: ~8,000 events, > max_batch."""
    import streams.worker as worker_module

    consumer = worker_module.AIOKafkaConsumer

    def smaller(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("group_id"):  # the batch loop's consumer, not the changelog reader
            kwargs.update(fetch_max_bytes=8 << 20, max_partition_fetch_bytes=2 << 20)
        return consumer(*args, **kwargs)

    worker_module.AIOKafkaConsumer = smaller  # type: ignore[misc]


# Trials of changes suggested for streams/worker.py, applied here to measure them first.
EXPERIMENTS: dict[str, Callable[[], None]] = {
    "gc-freeze": _gc_freeze,
    "partition-cache": _partition_cache,
    "no-latency-histogram": _no_latency_histogram,
    "small-memtable": _small_memtable,
    "small-fetch": _small_fetch,
}


def main() -> None:
    """Run the worker command line given after ``--``."""
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", type=Path, help="write cProfile stats here on exit")
    p.add_argument("--timing", type=Path, help="write per-step wall-clock totals (JSON) here on exit")
    p.add_argument(
        "--experiment", default="", help=f"comma-separated trials of changes: {', '.join(EXPERIMENTS)}"
    )
    args = p.parse_args(argv[:split])
    BatchWorker.run = _run_when_assigned  # type: ignore[method-assign]
    for name in filter(None, args.experiment.split(",")):
        EXPERIMENTS[name]()
    if args.timing:
        from bench.step_timers import install

        atexit.register(install(args.timing).dump)
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        supernova(argv[split + 1 :])
    except SystemExit:
        pass
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(args.profile))


if __name__ == "__main__":
    main()
