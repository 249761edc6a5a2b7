"""``supernova bootstrap``: its arguments and how it reports (the work is in streams.bootstrap)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_bootstrap_command(
    sub: Any,
    kafka_args: Callable[[argparse.ArgumentParser], None],
    kafka_config: Callable[[argparse.Namespace], dict[str, Any]],
    adapter_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``bootstrap`` to an argparse subparsers object (the shared arguments come from the caller)."""
    p = sub.add_parser(
        "bootstrap",
        help="replay history files and write the records to the worker's changelog: workers start warm",
    )
    p.add_argument("--spec", required=True, type=Path, help="feature spec module")
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        action="append",
        metavar="FILE",
        help="history file, CSV(.gz) or JSON lines(.gz) (repeatable: merged by ts)",
    )
    adapter_arg(p)
    kafka_args(p)
    p.add_argument("--app-id", required=True, help="the workers' --app-id (names the changelog and group)")
    p.add_argument("--events-topic", default="events", help="the workers' --events-topic")
    p.add_argument(
        "--partitions",
        type=int,
        help="partitions of the events topic if bootstrap creates it (default 4); else it must match",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write even into a non-empty changelog or for a group with committed offsets",
    )

    def run(args: argparse.Namespace) -> int:
        from entities.spec import SpecError
        from streams.adapters import AdapterError
        from streams.bootstrap import BootstrapConfig, BootstrapRefused, bootstrap
        from streams.worker import WorkerConfig

        worker = WorkerConfig(
            bootstrap=args.bootstrap,
            app_id=args.app_id,
            events_topic=args.events_topic,
            kafka=kafka_config(args),
        )
        cfg = BootstrapConfig(worker, partitions=args.partitions, force=args.force)
        try:
            summary = bootstrap(args.spec, args.input, cfg, adapter=args.adapter)
        except (BootstrapRefused, SpecError, AdapterError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(summary.line())
        return 0

    p.set_defaults(run=run)
