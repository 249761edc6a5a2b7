"""``supernova topics``: the topics and ACLs an app id needs; creates the topics as an admin."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streams.topics import TopicLayout
    from streams.worker import WorkerConfig

log = logging.getLogger(__name__)


def add_topics_command(
    sub: Any,
    kafka_args: Callable[[argparse.ArgumentParser], None],
    kafka_config: Callable[[argparse.Namespace], dict[str, Any]],
) -> None:
    """Add ``topics`` to an argparse subparsers object."""
    p = sub.add_parser(
        "topics", help="print the topics (partitions, configs) and the ACLs an app id needs; --create them"
    )
    kafka_args(p)
    p.add_argument("--app-id", required=True, help="the workers' --app-id")
    p.add_argument("--events-topic", default="events")
    p.add_argument("--scores-topic", default="scores")
    p.add_argument("--dlq-topic", default="events.dlq")
    p.add_argument(
        "--partitions",
        type=int,
        help="partitions of the events topic (default: with --create, its count if it exists; else 4; "
        "without --create no broker is asked)",
    )
    p.add_argument("--create", action="store_true", help="create what is missing (as an admin), then check")
    p.add_argument(
        "--replication-factor",
        type=int,
        default=1,
        help="replication factor of the topics --create makes (3 on a production cluster)",
    )
    p.add_argument("--worker-principal", default="User:supernova-worker")
    p.add_argument("--producer-principal", default="User:events-producer")
    p.add_argument("--reader-principal", default="User:scores-reader")
    p.add_argument("--reader-group", default="scores-reader", help="the scores reader's consumer group")
    p.add_argument(
        "--command-config",
        metavar="FILE",
        help="the admin's client properties for kafka-acls.sh (a secured cluster needs them): "
        "added to each ACL line",
    )

    def run(args: argparse.Namespace) -> int:
        from streams.topics import topic_needs
        from streams.worker import WorkerConfig

        cfg = WorkerConfig(
            bootstrap=args.bootstrap,
            app_id=args.app_id,
            events_topic=args.events_topic,
            scores_topic=args.scores_topic,
            dlq_topic=args.dlq_topic,
            partitions=args.partitions or 4,
            replication_factor=args.replication_factor,
            kafka=kafka_config(args),
        )
        partitions = cfg.partitions
        found: dict[str, int] = {}  # with --create: the partitions each topic has
        if args.create:
            layout = checked_topics(cfg, args.verbose, create=True)
            if layout is None:
                return 2
            if args.partitions and layout.events != args.partitions:
                print(
                    f"error: topic {cfg.events_topic} exists with {layout.events} partitions, "
                    f"not --partitions {args.partitions}",
                    file=sys.stderr,
                )
                return 2
            partitions = layout.events
            found = {"scores": layout.scores, "dlq": layout.dlq, "changelog": layout.changelog}
        print(f"# topics of app id {cfg.app_id}" + (" (exist, checked)" if args.create else ""))
        for need in topic_needs(cfg, partitions):
            configs = " ".join(f"{k}={v}" for k, v in need.configs.items())
            n = found.get(need.role, need.partitions)
            print(f"{need.name}\tpartitions={n}\t{configs or '-'}\t# {need.role}: {need.note}")
        print()
        print(
            acl_commands(
                cfg,
                args.worker_principal,
                args.producer_principal,
                args.reader_principal,
                args.reader_group,
                args.command_config,
            )
        )
        return 0

    p.set_defaults(run=run)


def checked_topics(cfg: WorkerConfig, verbose: bool, create: bool) -> TopicLayout | None:
    """``check_topics``; None after one line on stderr saying what to fix (and the traceback if verbose)."""
    from streams.topics import TopicError, check_topics

    try:
        return asyncio.run(check_topics(cfg, create=create))
    except TopicError as exc:
        if verbose:
            log.exception("topics")
        print(f"error: {exc}", file=sys.stderr)
        return None


def acl_commands(
    cfg: WorkerConfig,
    worker: str,
    producer: str,
    reader: str,
    reader_group: str,
    command_config: str | None = None,
) -> str:
    """The minimal ACLs per principal, as ``kafka-acls.sh`` lines (``--command-config`` last, if given)."""
    from streams.security import secured
    from streams.topics import producer_acls, reader_acls, worker_acls

    base = ["kafka-acls.sh", "--bootstrap-server", cfg.bootstrap, "--add", "--allow-principal"]
    tail = ["--command-config", command_config] if command_config else []
    lines = []
    if not tail and secured(cfg.kafka):
        lines.append(
            "# a secured cluster: kafka-acls.sh needs the admin's client properties too "
            "(--command-config FILE; supernova topics --command-config FILE adds it to each line)"
        )
    for header, principal, acls in (
        ("the worker", worker, worker_acls(cfg)),
        ("producers of events", producer, producer_acls(cfg)),
        ("readers of scores", reader, reader_acls(cfg, reader_group)),
    ):
        lines.append(f"# {header} ({principal})")
        for acl in acls:
            if acl.note:
                lines.append(f"# {acl.note}")
            lines.append(shlex.join([*base, principal, *acl.args(), *tail]))
    return "\n".join(lines)
