"""``supernova worker`` as the benchmark runs it, optionally under cProfile or step timers.

    python -m bench.worker_entry [--profile FILE] [--timing FILE] -- worker --spec ... --model ...

With ``--profile`` the whole process runs under cProfile and the stats are written
when the worker exits (SIGTERM stops it gracefully). With ``--timing`` the steps of
``BatchWorker.process`` are wrapped in wall-clock timers instead (low overhead: one
timer call per batch and step, and one per event for decode) and the totals are
written as JSON on exit; ``bench/timing_report.py`` turns them into µs/event.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import sys
from pathlib import Path

from streams.cli import main as supernova


def main() -> None:
    """Run the worker command line given after ``--``."""
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", type=Path, help="write cProfile stats here on exit")
    p.add_argument("--timing", type=Path, help="write per-step wall-clock totals (JSON) here on exit")
    args = p.parse_args(argv[:split])
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
