"""The ``supernova`` command: one entry point for replay, the worker and the models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from entities.spec import load_spec
from streams.sources import Rejected

log = logging.getLogger("supernova")
MAX_REJECTS_SHOWN = 20


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``supernova`` command line."""
    parser = argparse.ArgumentParser(prog="supernova", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="replay a recorded file through the core into Parquet")
    p.add_argument("--spec", required=True, type=Path, help="feature spec module")
    p.add_argument("--input", required=True, type=Path, help="CSV(.gz) or JSON lines(.gz)")
    p.add_argument("--limit", type=int, help="read only the first N input rows")
    p.add_argument("--features-out", type=Path, help="Parquet of feature rows")
    p.add_argument("--model", type=Path, help="model artifact directory: also score")
    p.add_argument("--scores-out", type=Path, help="Parquet of scores (needs --model)")
    p.set_defaults(run=_replay)

    p = sub.add_parser("describe", help="print the spec: features, record layout, hash")
    p.add_argument("--spec", required=True, type=Path)
    p.set_defaults(run=_describe)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args) or 0)


def _replay(args: argparse.Namespace) -> int:
    from streams.replay import replay

    if args.scores_out and not args.model:
        raise SystemExit("--scores-out needs --model")
    shown = 0

    def on_reject(item: Rejected | tuple[Any, str]) -> None:
        nonlocal shown
        shown += 1
        if shown <= MAX_REJECTS_SHOWN:
            where = f"row {item.row}" if isinstance(item, Rejected) else f"event {item[0].event_id}"
            reason = item.error if isinstance(item, Rejected) else item[1]
            print(f"rejected {where}: {reason}", file=sys.stderr)
        elif shown == MAX_REJECTS_SHOWN + 1:
            print("(further rejects are counted, not shown)", file=sys.stderr)

    with progress("replay") as advance:
        summary = replay(
            args.spec,
            args.input,
            features_out=args.features_out,
            limit=args.limit,
            model_dir=args.model,
            scores_out=args.scores_out,
            on_reject=on_reject,
            on_progress=advance,
        )
    print(summary.line())
    return 0


def _describe(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    print(json.dumps({"hash": spec.hash(), **spec.describe()}, indent=2, default=str))
    return 0


class progress:  # noqa: N801 - used as a context manager, reads like a function
    """A rich progress counter on a terminal, nothing otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._progress: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not sys.stderr.isatty():
            return lambda n: None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            TextColumn("{task.completed:,.0f} events"),
            TimeElapsedColumn(),
            transient=True,
        )
        self._progress.start()
        task = self._progress.add_task(self.label, total=None)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


if __name__ == "__main__":
    sys.exit(main())
