"""Restore throughput: megabytes of changelog per second into empty stores (issue 19: ≥ 100 MB/s).

One changelog topic is filled once with what a worker writes (``fill``): the first
``--events`` rows of the Sparkov test file (with ``--card-txns N``, each card's
history cut into cards of N transactions, as ``bench/scale.py``'s thin population),
each card cloned ``--clones`` times under new card numbers, applied by an ``Engine``
and checkpointed every ``--checkpoint-events`` events: the changed records'
``RecordCodec.encode_parts`` (new segments, head, deletes) with the worker's two
headers, sent as the worker's checkpoint sends them. The topic is created with
``min.compaction.lag.ms`` of an hour, as in ``bench/scale.py``: nothing is compacted,
every version is read back. ``--app-id`` reuses the changelog of another run on the
same broker (``bench/scale.py --bootstrap ... --keep``: a real worker's changelog).

Then, for each ``--trees`` entry ``NAME=REF`` (a git ref exported with ``git archive``,
or ``.`` for this checkout), rounds interleaved so that load on the machine hits
each alike:

- **restore**: ``bench/restore_probe.py`` times ``streams.recovery.restore`` of that
  tree alone, partition after partition, into empty stores (wall and CPU seconds;
  the garbage collector tuned as the worker tunes it);
- **worker** (with ``--worker``): ``supernova worker`` of that tree with an empty data
  directory, from its first "restoring partition" log line to its last "assigned"
  one (as ``bench/scale.py`` step 5).

MB/s are of the size of the topic's ``.log`` segment files on the broker, as in
``bench/scale.py`` (with ``--bootstrap``, give that broker's ``--kafka-data``).

    python -m bench.restore [--events 75000] [--clones 8] [--trees before=main,after=.] [--rounds 3]
        [--worker] [--bootstrap B --kafka-data DIR] [--app-id A]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bench.harness import REPO, Child, Offsets, create_topics, python
from bench.run import ADAPTER, DATA, SAMPLE, SPEC, local_broker, setup_logging, work_dir
from bench.scale import restore_seconds
from entities.engine import Engine
from entities.events import Event, EventCodec
from entities.spec import load_spec
from streams import messages as msg
from streams.kafka_io import CHANGELOG_CONFIG, MAX_PRODUCER_BATCH, Message, partition_for, send_batches
from streams.local_kafka import free_port
from streams.sources import Rejected, read_events

log = logging.getLogger("bench.restore")
PROBE = REPO / "bench" / "restore_probe.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_input = DATA / "fraudTest.csv.gz"
    p.add_argument("--input", type=Path, default=default_input if default_input.is_file() else SAMPLE)
    p.add_argument("--events", type=int, default=75_000, help="source rows (each cloned --clones times)")
    p.add_argument("--clones", type=int, default=8)
    p.add_argument("--card-txns", type=int, help="cut each card into cards of this many transactions (thin)")
    p.add_argument("--checkpoint-events", type=int, default=65_000, help="events between two checkpoints")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--trees", default="before=main,after=.", help="NAME=REF,...: git refs, '.' for this checkout"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", action="store_true", help="also time the whole worker's restore")
    p.add_argument("--model", type=Path, help="the worker's model artifact (--worker; default: a small one)")
    p.add_argument("--bootstrap", help="an existing broker (default: one of our own)")
    p.add_argument("--kafka-data", type=Path, help="that broker's log.dirs, for the changelog's size")
    p.add_argument("--app-id", help="reuse this app's changelog if it is already filled")
    p.add_argument("--profile", type=Path, help="cProfile the last round of the last tree here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Fill the changelog once, then time each tree's restore; print a markdown table."""
    args = parse_args(argv)
    setup_logging(False)
    with work_dir("supernova-restore-", args.keep) as work, local_broker(args.bootstrap, work) as bootstrap:
        kafka_data = args.kafka_data if args.bootstrap else work / "kafka" / "data"
        results = asyncio.run(_run(args, bootstrap, kafka_data, work))
    print(markdown(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


async def _run(
    args: argparse.Namespace, bootstrap: str, kafka_data: Path | None, work: Path
) -> dict[str, Any]:
    thin = f"-t{args.card_txns}" if args.card_txns else ""
    app_id = args.app_id or f"restore-{args.events}x{args.clones}{thin}-{args.checkpoint_events}"
    changelog = f"{app_id}-records-changelog"
    size = await changelog_bytes(bootstrap, changelog, args.partitions, kafka_data)
    if size["messages"] == 0:
        t = time.monotonic()
        await fill(args, bootstrap, changelog)
        log.info("filled %s in %.1f s", changelog, time.monotonic() - t)
        size = await changelog_bytes(bootstrap, changelog, args.partitions, kafka_data)
    log.info(
        "%s: %s messages, %.1f MB (%s)",
        changelog,
        f"{size['messages']:,}",
        size["bytes"] / 1e6,
        size["method"],
    )
    trees = {name: export(ref, work / f"tree-{name}") for name, ref in _pairs(args.trees)}
    model = args.model or (_small_model() if args.worker else None)
    runs: dict[str, dict[str, list[float]]] = {
        name: {"restore": [], "cpu": [], "worker": []} for name in trees
    }
    for r in range(args.rounds):
        for name, tree in trees.items():
            last = r == args.rounds - 1 and name == list(trees)[-1]
            got = probe(
                tree,
                bootstrap,
                changelog,
                args.partitions,
                work / f"probe-{name}-{r}",
                args.profile if last else None,
            )
            runs[name]["restore"].append(sum(got["seconds"]))
            runs[name]["cpu"].append(got["cpu_s"])
            log.info(
                "%s round %d: restore %.2f s (CPU %.2f s), %s messages (%s)",
                name,
                r,
                sum(got["seconds"]),
                got["cpu_s"],
                f"{got['messages']:,}",
                got["module"],
            )
            if args.worker:
                assert model is not None
                s = await worker_restore(
                    tree, bootstrap, app_id, args.partitions, model, work / f"worker-{name}-{r}"
                )
                runs[name]["worker"].append(s)
                log.info("%s round %d: worker restore %.2f s", name, r, s)
    refs = {name: _commit(ref) for name, ref in _pairs(args.trees)}
    return {"changelog": {"topic": changelog, **size}, "trees": refs, "runs": runs}


def _commit(ref: str) -> str:
    """The commit a ref names (``.``: this checkout, with its uncommitted changes if any)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD" if ref == "." else ref],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if ref != ".":
        return f"{ref} = {head}"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "streams"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return f"checkout at {head}{' + changes' if dirty.strip() else ''}"


def _pairs(spec: str) -> list[tuple[str, str]]:
    return [(name, ref) for name, _, ref in (item.partition("=") for item in spec.split(","))]


# --- the changelog ----------------------------------------------------------------------------


def checkpoints(args: argparse.Namespace) -> Iterator[list[Message]]:
    """Changelog messages of each checkpoint a worker would take over the cloned events."""
    spec = load_spec(SPEC)
    engine = Engine(spec)
    batch: list[Event] = []
    start = 0
    for e in _thin(read_events(args.input, EventCodec(spec), ADAPTER, limit=args.events), args.card_txns):
        batch.append(e)
        for k in range(1, args.clones):
            batch.append(
                msgspec.structs.replace(e, entity_id=f"{e.entity_id}-{k}", event_id=f"{e.event_id}-{k}")
            )
        if len(batch) >= args.checkpoint_events:
            yield _checkpoint(engine, batch, start, args.partitions)
            start += len(batch)
            batch = []
    if batch:
        yield _checkpoint(engine, batch, start, args.partitions)


def _thin(events: Iterator[Event | Rejected], txns: int | None) -> Iterator[Event]:
    """The valid events; with ``txns``, each card's history cut into cards of that many transactions.

    Each new card gets a copy of its source card's last profile event first (as
    ``bench/scale.py``'s thin population).
    """
    profiles: dict[str, Event] = {}
    counts: dict[str, int] = {}
    for e in events:
        if isinstance(e, Rejected):
            continue
        if txns is None:
            yield e
        elif e.type == "profile":
            profiles[e.entity_id] = e
        else:
            n = counts[e.entity_id] = counts.get(e.entity_id, 0) + 1
            run = (n - 1) // txns
            eid = f"{e.entity_id}-r{run}"
            if (n - 1) % txns == 0 and e.entity_id in profiles:
                p = profiles[e.entity_id]
                yield msgspec.structs.replace(p, entity_id=eid, event_id=f"{p.event_id}-r{run}", ts=e.ts)
            yield msgspec.structs.replace(e, entity_id=eid)


def _checkpoint(engine: Engine, batch: list[Event], start: int, partitions: int) -> list[Message]:
    changed = engine.process(batch).changed
    headers = [
        (msg.CL_BATCH_START, str(start).encode()),
        (msg.CL_BATCH_END, str(start + len(batch)).encode()),
    ]
    out: list[Message] = []
    for entity_id in changed:
        p = partition_for(entity_id.encode(), partitions)
        out.extend(
            (key, data, headers, p) for key, data in engine.codec.encode_parts(engine.records[entity_id])
        )
    return out


async def fill(args: argparse.Namespace, bootstrap: str, topic: str) -> None:
    """Create the changelog (no compaction for an hour) and write every checkpoint to it."""
    configs = {**CHANGELOG_CONFIG, "min.compaction.lag.ms": str(3_600_000)}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, args.partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()
    # The events topic of the same app, for --worker (it restores, then consumes nothing).
    await create_topics(bootstrap, [f"{topic.removesuffix('-records-changelog')}.events"], args.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        max_batch_size=MAX_PRODUCER_BATCH,
        max_request_size=4 * MAX_PRODUCER_BATCH,
        linger_ms=5,
    )
    await producer.start()
    try:
        for i, messages in enumerate(checkpoints(args)):
            await asyncio.gather(*await send_batches(producer, topic, messages))
            log.info("checkpoint %d: %s messages", i, f"{len(messages):,}")
    finally:
        await producer.stop()


async def changelog_bytes(
    bootstrap: str, topic: str, partitions: int, kafka_data: Path | None
) -> dict[str, Any]:
    """Messages and bytes of the changelog (0 messages if it does not exist yet)."""
    try:
        async with Offsets(bootstrap, topic, partitions) as offsets:
            messages = sum((await offsets.end()).values())
    except Exception:
        return {"messages": 0, "bytes": 0, "method": "none"}
    if kafka_data is not None:
        size = sum(
            f.stat().st_size for p in range(partitions) for f in (kafka_data / f"{topic}-{p}").glob("*.log")
        )
        return {"messages": messages, "bytes": size, "method": "log segment files"}
    raise SystemExit("--bootstrap needs --kafka-data: the changelog's size is read from its log files")


# --- the trees and the measurements -------------------------------------------------------------


def export(ref: str, into: Path) -> Path:
    """A source tree of ``ref`` (``.``: this checkout, as it is)."""
    if ref == ".":
        return REPO
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref, "streams", "entities", "models"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return into


def probe(
    tree: Path, bootstrap: str, topic: str, partitions: int, data: Path, profile: Path | None
) -> dict[str, Any]:
    """``bench/restore_probe.py`` over ``tree``: its JSON line."""
    cmd = python(str(PROBE), "--tree", str(tree), "--bootstrap", bootstrap, "--topic", topic)
    cmd += ["--partitions", str(partitions), "--data", str(data), "--spec", str(SPEC)]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the restore probe failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


async def worker_restore(
    tree: Path, bootstrap: str, app_id: str, partitions: int, model: Path, work: Path
) -> float:
    """Seconds from the worker's first "restoring partition" line to its last "assigned" one."""
    run = f"import sys; sys.path.insert(0, {str(tree)!r}); from streams.cli import main; main(sys.argv[1:])"
    cmd = python("-c", run, "worker", "--spec", str(SPEC), "--model", str(model), "--bootstrap", bootstrap)
    cmd += ["--data-dir", str(work / "data"), "--app-id", app_id, "--partitions", str(partitions)]
    cmd += ["--events-topic", f"{app_id}.events", "--scores-topic", f"{app_id}.scores"]
    cmd += ["--dlq-topic", f"{app_id}.dlq", "--http-port", str(free_port())]
    child = Child("worker", cmd, work / "worker.log")
    child.start()
    try:
        return round(await restore_seconds(child, partitions, deadline_s=300, poll_s=0.1), 3)
    finally:
        child.stop()


def _small_model() -> Path:
    from bench.model import model_artifact

    train = DATA / "fraudTrain.csv.gz"
    return model_artifact(SPEC, train if train.is_file() else SAMPLE, 20_000, trees=20)


# --- the table ------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """One row per tree: restore alone (wall, CPU) and the worker's; medians, rounds, MB/s of the best."""
    mb = results["changelog"]["bytes"] / 1e6
    lines = [
        f"changelog {results['changelog']['topic']}: {results['changelog']['messages']:,} messages, "
        f"{mb:,.1f} MB ({results['changelog']['method']})",
        "",
        "| tree | restore s (median; rounds) | restore MB/s (best) | restore CPU s (median) "
        "| worker restore s (median; rounds) | worker MB/s (best) |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results["runs"].items():
        cells = [f"{name} ({results['trees'][name]})"]
        for kind in ("restore", "cpu", "worker"):
            s = runs[kind]
            med = statistics.median(s) if s else None
            if med is None:
                cells += ["–"] if kind == "cpu" else ["–", "–"]
            elif kind == "cpu":
                cells.append(f"{med:.2f}")
            else:
                cells += [
                    f"{med:.2f}; {', '.join(f'{x:.2f}' for x in s)}",
                    f"{mb / med:,.0f} ({mb / min(s):,.0f})",
                ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
