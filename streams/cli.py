"""The ``supernova`` command: one entry point for replay, the worker and the models."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entities.spec import SpecError, load_spec
from streams import messages as msg
from streams.cache import DEFAULT_CACHE_MB, DEFAULT_REPLAY_CACHE_MB
from streams.sources import Rejected

if TYPE_CHECKING:
    from streams.worker import WorkerConfig

log = logging.getLogger("supernova")
MAX_REJECTS_SHOWN = 20


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``supernova`` command line."""
    parser = argparse.ArgumentParser(prog="supernova", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="replay a recorded file through the core into Parquet")
    p.add_argument("--spec", required=True, type=Path, help="feature spec module")
    p.add_argument("--input", required=True, type=Path, help="CSV(.gz) or JSON lines(.gz) of wire events")
    _adapter_arg(p)
    p.add_argument(
        "--warmup",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="history that comes first (merged by ts): updates records, no output rows (repeatable)",
    )
    p.add_argument(
        "--file-order",
        action="store_true",
        help="take events in file order (warm-ups first), not sorted by ts: what a worker fed them in that "
        "order scores, late events too (scored with late=true within the allowed lateness, rejected beyond)",
    )
    p.add_argument("--limit", type=int, help="read only the first N input rows")
    p.add_argument(
        "--features-out",
        type=Path,
        help="feature rows: F.parquet (for a spec with one scored type) or a directory "
        "(one <event_type>.parquet per scored type)",
    )
    p.add_argument(
        "--model",
        type=Path,
        action="append",
        default=[],
        help="model artifact directory: also score (repeatable: one per scored type)",
    )
    p.add_argument("--scores-out", type=Path, help="scores, as --features-out (needs --model)")
    p.add_argument(
        "--cache-mb",
        type=float,
        default=DEFAULT_REPLAY_CACHE_MB,
        help="keep at most this many MB of records in memory (per process), the rest in a RocksDB "
        f"beside the output (populations larger than memory; same output; default {DEFAULT_REPLAY_CACHE_MB}, "
        "0: all in memory)",
    )
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="N processes, entities split by hash: the same output as one (each reads the whole input)",
    )
    split.add_argument(
        "--shard",
        metavar="i/N",
        help="only shard i (0..N-1) of N: its rows, with their input positions, for `supernova replay-merge`",
    )
    p.set_defaults(run=_replay)

    p = sub.add_parser("replay-merge", help="combine the outputs of `replay --shard i/N` into one replay's")
    p.add_argument(
        "shard_outs",
        nargs="+",
        type=Path,
        metavar="SHARD_OUT",
        help="every shard's --features-out (or --scores-out): F.parquet files or directories",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="F.parquet (the shards wrote files) or a directory"
    )
    p.set_defaults(run=_replay_merge)

    p = sub.add_parser("worker", help="run the streaming worker (faust app + batch loop)")
    p.add_argument("--spec", required=True, type=Path)
    models = p.add_mutually_exclusive_group(required=True)
    models.add_argument(
        "--model",
        type=Path,
        action="append",
        help="model artifact directory (fixed; repeatable: one per scored type)",
    )
    models.add_argument(
        "--registry",
        type=Path,
        help="model registry: serve each scored type's champion, shadow its challenger, hot-reload",
    )
    p.add_argument(
        "--shadow",
        type=Path,
        action="append",
        default=[],
        help="challenger artifact scored in shadow (with --model; repeatable: one per scored type)",
    )
    p.add_argument("--explain", type=int, default=0, metavar="K", help="top-K contributions per score")
    _kafka_args(p)
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="RocksDB and faust state")
    p.add_argument("--app-id", default="supernova")
    p.add_argument("--partitions", type=int, default=4, help="partitions of topics it creates")
    p.add_argument(
        "--replication-factor", type=int, default=1, help="replication factor of topics it creates"
    )
    p.add_argument("--events-topic", default="events")
    p.add_argument("--scores-topic", default="scores")
    p.add_argument("--dlq-topic", default="events.dlq")
    p.add_argument(
        "--no-create-topics",
        action="store_true",
        help="create no topics: stop, naming a missing one (create them with `supernova topics --create`)",
    )
    p.add_argument("--max-batch", type=int, default=5000)
    p.add_argument(
        "--cache-mb",
        type=float,
        default=DEFAULT_CACHE_MB,
        help=f"records held in memory, all partitions together; the rest are read from RocksDB "
        f"when needed (estimated MB, default {DEFAULT_CACHE_MB})",
    )
    p.add_argument("--no-features", action="store_true", help="leave features out of scores")
    p.add_argument(
        "--exactly-once",
        action="store_true",
        help="one Kafka transaction per batch (scores, changelog, offset); read_committed consumers "
        "then see exactly one score per event",
    )
    p.add_argument("--max-future", type=float, default=86_400.0, help="seconds ahead of the clock before DLQ")
    p.add_argument(
        "--commit-interval",
        type=float,
        help="seconds between checkpoints (default 5.0; 0.1 with --exactly-once)",
    )
    p.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address of the HTTP server; anything but loopback needs --http-token-file",
    )
    p.add_argument("--http-port", type=int, default=6066)
    p.add_argument(
        "--http-token-file",
        type=Path,
        metavar="FILE",
        help="bearer token that /entities requires (not readable by other users)",
    )
    p.add_argument(
        "--expose-pii",
        action="store_true",
        help="show the fixed fields the spec marks pii in /entities answers (left out by default)",
    )
    p.set_defaults(run=_worker)

    from streams.cli_bootstrap import add_bootstrap_command

    add_bootstrap_command(sub, _kafka_args, _kafka_config, _adapter_arg)

    from streams.cli_topics import add_topics_command

    add_topics_command(sub, _kafka_args, _kafka_config)

    p = sub.add_parser("produce", help="publish a recorded file as events")
    p.add_argument(
        "--spec", required=True, type=Path, help="feature spec module: the events are validated by it"
    )
    p.add_argument("--input", required=True, type=Path, help="CSV(.gz) or JSON lines(.gz) of wire events")
    _adapter_arg(p)
    p.add_argument("--limit", type=int)
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--topic", default="events")
    _kafka_args(p)
    p.set_defaults(run=_produce)

    p = sub.add_parser("tail", help="print messages of a topic as they arrive")
    p.add_argument("topic", nargs="?", default="scores")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--limit", type=int)
    _kafka_args(p)
    p.set_defaults(run=_tail)

    from streams.cli_models import add_model_commands

    add_model_commands(sub)

    p = sub.add_parser("describe", help="print the spec: features, record layout, hash")
    p.add_argument("--spec", required=True, type=Path)
    p.set_defaults(run=_describe)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # `supernova topics | head`: the reader left, nothing is wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


def _adapter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapter",
        metavar="FILE.py[:NAME]",
        help="input adapter mapping CSV rows to events (NAME defaults to the file's `adapter`); "
        "JSON lines of wire events need none",
    )


def _one_line_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A user's mistake (spec, adapter, model, output path) ends the command with one line."""

    def wrapper(args: argparse.Namespace) -> int:
        from entities.spec import SpecError
        from models.artifact import ArtifactError
        from streams.adapters import AdapterError
        from streams.replay import OutputError
        from streams.shards import ShardError

        try:
            return run(args)
        except (SpecError, AdapterError, ArtifactError, OutputError, ShardError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


def _inputs_exist(*paths: Path) -> bool:
    """Whether every input file exists; else one ``error:`` line naming the missing ones."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no such input file: {', '.join(missing)}", file=sys.stderr)
    return not missing


@_one_line_errors
def _replay(args: argparse.Namespace) -> int:
    from streams.replay import replay
    from streams.shards import Shard

    if args.scores_out and not args.model:
        raise SystemExit("--scores-out needs --model")
    if args.model and not args.scores_out:
        print("error: --model scores into --scores-out (S.parquet | DIR): give it", file=sys.stderr)
        return 2
    if not args.features_out and not args.scores_out:
        print("error: nothing to write: give --features-out (and --scores-out with --model)", file=sys.stderr)
        return 2
    if not _inputs_exist(args.input, *args.warmup):
        return 2
    shard = Shard.parse(args.shard) if args.shard is not None else None
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
            models=args.model,
            scores_out=args.scores_out,
            adapter=args.adapter,
            on_reject=on_reject,
            on_progress=advance,
            warmup=args.warmup,
            cache_mb=args.cache_mb,
            jobs=args.jobs,
            shard=shard,
            file_order=args.file_order,
        )
    print(f"shard {shard}: {summary.line()}" if shard is not None else summary.line())
    return 0


@_one_line_errors
def _replay_merge(args: argparse.Namespace) -> int:
    from streams.shards import merge

    written = merge(args.shard_outs, args.out)
    files = ", ".join(f"{path} ({rows:,} rows)" for path, rows in written.items())
    print(f"merged {len(args.shard_outs)} shards: {files}")
    return 0


def _kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap HOST:PORT")
    p.add_argument(
        "--kafka-config",
        type=Path,
        help="JSON of extra Kafka client settings (security_protocol, sasl_mechanism, "
        "sasl_plain_username, sasl_plain_password, ssl_cafile, ...); a secret may be "
        '{"env": "NAME"} or {"file": "PATH"}; refused if readable by every user',
    )


def _kafka_config(args: argparse.Namespace) -> dict[str, Any]:
    """Security and other client settings, passed through to every Kafka client.

    A refused file (world-readable, a secret that is not there) ends the command with one line.
    """
    import asyncio

    from streams.security import SecurityError, check_login, load_kafka_config, secured

    if not args.kafka_config:
        return {}
    try:
        config = load_kafka_config(args.kafka_config)
    except SecurityError as exc:
        raise SystemExit(f"error: {exc}") from None
    protocol = config.get("security_protocol", "PLAINTEXT")
    if protocol in ("SSL", "SASL_SSL") and "ssl_context" not in config:
        config.setdefault("ssl_cafile", None)  # no CA file: the system's trusted CAs
    if "ssl_cafile" in config or "ssl_certfile" in config:
        import ssl

        from aiokafka.helpers import create_ssl_context

        files = {k: config.pop(k) for k in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if k in config}
        config["ssl_context"] = create_ssl_context(
            cafile=files.get("ssl_cafile"),
            certfile=files.get("ssl_certfile"),
            keyfile=files.get("ssl_keyfile"),
        )
        assert isinstance(config["ssl_context"], ssl.SSLContext)
    if secured(config):
        try:  # a wrong password or CA: one line now, not a traceback from a client later
            asyncio.run(check_login(args.bootstrap, config))
        except SecurityError as exc:
            raise SystemExit(f"error: {exc}") from None
    return config


def _groups_readable(cfg: WorkerConfig) -> bool:
    """Whether the worker may read its consumer groups and the topics it consumes; else one line."""
    import asyncio

    from aiokafka.errors import KafkaError

    from streams.security import check_reads, refusal
    from streams.topics import faust_leader_topic

    groups = [cfg.app_id, cfg.group_id]
    reads = {
        cfg.events_topic: "Read on the events topic",
        cfg.changelog_topic: "Read on the changelog topic",
        faust_leader_topic(cfg): "Read on faust's assignor topic",
    }
    try:
        asyncio.run(check_reads(cfg.bootstrap, cfg.kafka, groups, reads, cfg.events_topic))
    except KafkaError as exc:
        why = refusal(exc, reads)
        if why is None:
            raise
        print(f"error: {why}", file=sys.stderr)
        return False
    return True


def _worker(args: argparse.Namespace) -> int:
    from faust.worker import Worker

    from models.scorer import Scorer
    from streams.app import create_app
    from streams.reload import ModelWatcher
    from streams.security import SecurityError, check_bind, http_token
    from streams.worker import BatchWorker, WorkerConfig

    try:
        token = http_token(args.http_token_file)
        check_bind(args.http_host, token)
    except SecurityError as exc:
        raise SystemExit(f"error: {exc}") from None
    spec = load_spec(args.spec)
    if args.registry:
        models = ModelWatcher.initial(args.registry, spec)
    else:
        models = _fixed_models(args.model, args.shadow, spec)
    scorers = {
        t: Scorer(champion, shadow=shadow, explain_top_k=args.explain)
        for t, (champion, shadow) in models.items()
    }
    cfg = WorkerConfig(
        bootstrap=args.bootstrap,
        app_id=args.app_id,
        data_dir=args.data_dir,
        events_topic=args.events_topic,
        scores_topic=args.scores_topic,
        dlq_topic=args.dlq_topic,
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        create_topics=not args.no_create_topics,
        max_batch=args.max_batch,
        cache_mb=args.cache_mb,
        include_features=not args.no_features,
        expose_pii=args.expose_pii,
        exactly_once=args.exactly_once,
        commit_interval_ms=int(
            1000
            * (
                args.commit_interval
                if args.commit_interval is not None
                else 0.1
                if args.exactly_once
                else WorkerConfig.commit_interval_ms / 1000
            )
        ),
        max_future_ms=int(args.max_future * 1000),
        kafka=_kafka_config(args),
    )
    from streams.cli_topics import checked_topics

    if checked_topics(cfg, args.verbose, create=cfg.create_topics) is None:  # before faust starts
        return 2
    if cfg.kafka and not _groups_readable(cfg):
        return 2
    worker = BatchWorker(cfg, spec, scorers)
    watcher = ModelWatcher(args.registry, spec, scorers, worker.lock) if args.registry else None
    app = create_app(
        cfg,
        worker,
        http_host=args.http_host,
        http_port=args.http_port,
        on_timer=watcher.check if watcher else None,
        http_token=token,
    )
    try:
        Worker(app, loglevel="debug" if args.verbose else "info", quiet=True).execute_from_commandline()
    except SystemExit:
        if not worker.fatal:
            raise
    if worker.fatal:
        print(f"error: {worker.fatal}", file=sys.stderr)
        return 2
    return 0


def _fixed_models(champions: list[Path], shadows: list[Path], spec: Any) -> dict[str, tuple[Any, Any]]:
    """``--model``/``--shadow`` artifacts per scored type; a type without a model ends the command."""
    from models.artifact import ArtifactError, load_by_type, require_every_type

    try:
        models = load_by_type(champions, spec)
        require_every_type(models, spec, "--model DIR (or --registry DIR)")
        shadow = load_by_type(shadows, spec)
    except ArtifactError as exc:
        raise SystemExit(f"error: {exc}") from None
    return {t: (models[t], shadow.get(t)) for t in spec.scored_types}


@_one_line_errors
def _produce(args: argparse.Namespace) -> int:
    import asyncio

    from streams.produce import file_events, produce

    kafka = _kafka_config(args)  # a refused config ends the command before any reading
    if not _inputs_exist(args.input):  # before the producer connects
        return 2
    codec, events = file_events(args.spec, args.input, args.limit, adapter=args.adapter)
    rejected = 0

    def on_reject(item: Rejected) -> None:
        nonlocal rejected
        rejected += 1
        if rejected <= MAX_REJECTS_SHOWN:
            print(f"rejected row {item.row}: {item.error}", file=sys.stderr)

    with progress("produce") as advance, _refusals({args.topic: "Write on the topic"}):
        sent = asyncio.run(
            produce(
                args.bootstrap,
                args.topic,
                codec,
                events,
                rate=args.rate,
                on_progress=advance,
                on_reject=on_reject,
                kafka=kafka,
            )
        )
    print(f"produced {sent:,} events to {args.topic}; rejected {rejected:,} rows")
    if rejected and not sent:
        print(f"error: every row was rejected: are they events of {args.spec}?", file=sys.stderr)
        return 2
    return 0


@contextlib.contextmanager
def _refusals(topics: dict[str, str]) -> Iterator[None]:
    """A refused ACL ends the command with one ``error:`` line (exit 2), not a traceback."""
    from aiokafka.errors import KafkaError

    from streams.security import refusal

    try:
        yield
    except KafkaError as exc:
        why = refusal(exc, topics)
        if why is None:
            raise
        raise SystemExit(f"error: {why}") from None


def _tail(args: argparse.Namespace) -> int:
    import asyncio

    kafka = _kafka_config(args)
    with contextlib.suppress(KeyboardInterrupt), _refusals({args.topic: "Read on the topic"}):
        asyncio.run(
            tail_topic(args.bootstrap, args.topic, show_message, args.from_beginning, args.limit, kafka)
        )
    return 0


def show_message(rec: Any) -> None:
    """A tailed message's value on stdout; a dead letter's source and reason before it, on stderr.

    stdout stays one value per line (for jq and the like); the reason is for the reader.
    """
    headers = dict(rec.headers or ())
    reason = headers.get(msg.DLQ_REASON)
    if reason is not None:
        source = headers.get(msg.DLQ_SOURCE, b"?").decode(errors="replace")
        print(f"# dead letter from {source}: {reason.decode(errors='replace')}", file=sys.stderr, flush=True)
    print(rec.value.decode(errors="replace") if rec.value is not None else "null", flush=True)


async def tail_topic(
    bootstrap: str,
    topic: str,
    show: Callable[[Any], None],
    from_beginning: bool,
    limit: int | None,
    kafka: dict[str, Any],
) -> int:
    """Tail a topic until interrupted (or ``limit`` messages)."""
    from streams.produce import tail

    return await tail(bootstrap, topic, show, from_beginning=from_beginning, limit=limit, kafka=kafka)


def _describe(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:  # a mistake in the spec: one line, no traceback
        print(f"error: SpecError: {exc}", file=sys.stderr)
        return 2
    # pii is a serving policy, not part of the hashed declaration
    # layout: what stored records depend on (a worker refuses records of another layout)
    shown = {
        "hash": spec.hash(),
        "layout": spec.layout_hash(),
        **spec.describe(),
        "pii": sorted(spec.fixed.pii),
    }
    print(json.dumps(shown, indent=2, default=str))
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
