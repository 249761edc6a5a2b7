"""Population scale: what grows with the number of entities (``make bench-scale``).

Populations are made from a slice of the Sparkov test file (its last ``--days`` days)
by cloning its cards under new card numbers (``cc_num``) and new event ids
(``bench.latency.clone_event_id``: 32 hex digits, as Sparkov's), interleaved row by row so time order holds:

- ``1×``, ``8×``, ``64×`` (``--factors``): every card of the slice ``k`` times, each
  clone with the card's whole slice history;
- ``thin``: each card's history cut into runs of ``--thin-txns`` transactions, each run
  a card of its own, cloned until there are ``--thin-entities`` (≥ 1,000,000) cards.

Every card gets one profile event from the Sparkov adapter before its first
transaction. For each population, in a temporary directory:

1. **replay**: ``bench/replay.py``'s timing of ``streams.replay.replay`` over the whole
   file (the one ``make bench`` uses), in a fresh process: events/s and peak RSS;
2. **worker**: the first ``--worker-events`` events preloaded into a 4-partition topic,
   then ``supernova worker`` from an empty data directory until every transaction
   among them is scored (``harness.measure``: rate between the first and the last
   score's LogAppendTime; peak RSS). ``--cache-mb`` is passed only when the worker
   has that option: ``--cache-fraction`` (a tenth) of what the records of those
   events take in memory by the cache's own estimate (``streams/cache.py``). For the
   populations of ``--all-cached`` (8× and 64×) the same events go through a second
   worker with a cache big enough for all its records, in the same run: the ratio of
   the two rates is the cost of a cache of a tenth;
3. **records**: after the worker's graceful stop, the sum of the record values in its
   RocksDB stores (metadata keys left out), per entity it holds;
4. **changelog**: the changelog topic is created here beforehand with
   ``min.compaction.lag.ms`` of an hour, so no compaction runs during the bench and
   its log segments hold every record version the worker wrote; bytes = the size of
   the ``.log`` segment files in the broker's data directory (with ``--bootstrap``:
   end offsets × the mean size of the last messages of each partition);
5. **restore**: the worker's data directory wiped, the worker started again: the time
   from its first "restoring partition" log line to its last "assigned" line, and the
   changelog megabytes per second of that;
6. **p99**: that restored worker fed the events after the preloaded ones at 50% of its
   measured rate (``bench.latency.measure_latency``, as ``make bench``), after a short
   warm-up at that rate.

Memory per entity is the slope of peak RSS against entities from the row above
(replay: the population's entities; worker: the entities in its stores). Each
population's cost is estimated from the ones before it: one that would not fit in
``--budget`` seconds is scaled down, and the table says so.

    python -m bench.scale [--input F] [--days 8] [--factors 1,8,64] [--thin-entities 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rocksdict import AccessType, Options, Rdict

from bench.harness import REPO, Child, Offsets, create_topics, python, read_range
from bench.latency import MIX, clone_event_id, looped
from bench.model import model_artifact
from bench.procstat import machine
from bench.run import (
    ADAPTER,
    SMOKE_MAX_RATE,
    SPEC,
    TREES,
    Feed,
    default_files,
    local_broker,
    replay_timed,
    run_one,
    setup_logging,
    work_dir,
    worker_command,
)
from entities.events import Event, EventCodec
from entities.record import SEGMENT_PREFIX
from entities.spec import load_spec
from streams.cache import MB, RECORD_BYTES, item_bytes
from streams.kafka_io import CHANGELOG_CONFIG
from streams.produce import produce
from streams.sources import Rejected, read_events

log = logging.getLogger("bench.scale")
CARD_BASE = 7_000_000_000_000_000  # clone card numbers: CARD_BASE + k * cards + card (fits int64)
LOG_TIME = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]? ")  # faust's and logging's
READ_BACK_S = 20e-6  # the harness reading a score back after the run, per event
ALL_CACHED_MARGIN = 2.0  # the all-cached worker's --cache-mb: this times its records' estimate


@dataclass
class Population:
    """One generated input file and what it holds."""

    name: str
    path: Path
    rows: int  # transactions
    entities: int
    first_ts: int  # ms
    last_ts: int
    note: str = ""
    seconds: float = 0.0  # to generate it

    @property
    def events(self) -> int:
        """Transactions plus one profile event per card (the adapter's first sight of it)."""
        return self.rows + self.entities


@dataclass
class Row:
    """What was measured of one population (None: not measured)."""

    population: str
    entities: int
    events: int
    note: str = ""
    replay_events_per_s: float | None = None
    replay_peak_rss_mb: float | None = None
    worker_events: int = 0
    worker_entities: int = 0
    worker_events_per_s: float | None = None
    worker_peak_rss_mb: float | None = None
    cache_mb: float | None = None
    all_cached_events_per_s: float | None = None  # the same events, a cache big enough for all
    all_cached_peak_rss_mb: float | None = None
    all_cached_mb: float | None = None
    all_cached_skipped: str = ""  # why an --all-cached population has no all-cached run
    record_bytes: int = 0
    changelog_messages: int = 0
    changelog_bytes: int = 0
    changelog_method: str = ""
    restore_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_rate: float | None = None
    latency_complete: bool = True
    seconds: dict[str, float] = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", type=Path, help="Sparkov CSV (default: ../shared/data/fraudTest.csv.gz)")
    p.add_argument("--days", type=float, default=8.0, help="the slice: the input's last N days")
    p.add_argument("--factors", default="1,8,64", help="clone factors, comma-separated")
    p.add_argument(
        "--thin-entities", type=int, default=1_000_000, help="cards of the thin population (0: none)"
    )
    p.add_argument("--thin-txns", type=int, default=2, help="transactions per card of the thin population")
    p.add_argument(
        "--worker-events",
        type=int,
        default=600_000,
        help="events the worker processes per population (at most)",
    )
    p.add_argument(
        "--cache-fraction", type=float, default=0.1, help="worker --cache-mb, of its records' size in memory"
    )
    p.add_argument(
        "--all-cached",
        default="8,64",
        help="clone factors whose worker also runs all-cached (comma-separated; empty: none)",
    )
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--latency-warmup", type=float, default=5.0)
    p.add_argument("--latency-load", type=float, default=0.5, help="fraction of the worker's rate")
    p.add_argument(
        "--budget", type=float, default=800.0, help="seconds for everything; populations shrink to fit"
    )
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--train", type=Path, help="file to train the model on (default: fraudTrain)")
    p.add_argument("--train-rows", type=int, default=300_000)
    p.add_argument("--model", type=Path, help="use this model artifact instead of training one")
    p.add_argument("--worker-args", default="", help="extra `supernova worker` options")
    p.add_argument("--bootstrap", help="use this broker instead of starting one")
    p.add_argument("--smoke", action="store_true", help="tiny populations: the machinery only")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.factor_list = [int(x) for x in args.factors.split(",") if x.strip()]
    args.all_cached_list = [f"{int(x)}×" for x in args.all_cached.split(",") if x.strip()]
    if args.smoke:
        args.factor_list, args.thin_entities, args.worker_events = [1, 2], 5_000, 3_000
        args.all_cached_list = ["2×"]
        args.days, args.latency_seconds, args.latency_warmup = 2.0, 3.0, 0.0
    return default_files(args)


def main(argv: list[str] | None = None) -> int:
    """Build the populations one at a time, measure each, print the table."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    with work_dir("supernova-scale-", args.keep) as work, local_broker(args.bootstrap, work) as bootstrap:
        kafka_data = None if args.bootstrap else work / "kafka" / "data"
        rows = asyncio.run(_run_all(args, bootstrap, kafka_data, work, started))
    results["total_s"] = round(time.monotonic() - started, 1)
    results["rows"] = [asdict(r) for r in rows]
    results["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(markdown(results, rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


async def _run_all(
    args: argparse.Namespace, bootstrap: str, kafka_data: Path | None, work: Path, started: float
) -> list[Row]:
    model = args.model or model_artifact(SPEC, args.train, args.train_rows, TREES)
    slice_ = read_slice(args.input, args.days)
    cache_flag = _has_cache_option()
    log.info(
        "slice: the last %.0f days of %s: %s transactions of %s cards; worker --cache-mb %s",
        args.days,
        args.input.name,
        f"{slice_.num_rows:,}",
        f"{len(pc.unique(slice_['cc_num'])):,}",
        "present" if cache_flag else "absent (n/a)",
    )
    plans: list[tuple[str, int, int | None]] = [(f"{k}×", k, None) for k in args.factor_list]
    if args.thin_entities:
        plans.append(("thin", 0, args.thin_txns))
    rows: list[Row] = []
    cost = _Cost()
    for name, factor, per_card in plans:
        remaining = args.budget - (time.monotonic() - started)
        pop = _fit(slice_, name, factor, per_card, args, cost, remaining, work)
        if pop is None:
            log.warning("%s: skipped, %.0f s left of the budget", name, remaining)
            rows.append(Row(name, 0, 0, note=f"skipped: {remaining:.0f} s left of the budget"))
            continue
        deadline = started + args.budget
        row = await _measure(pop, args, model, bootstrap, kafka_data, work, cache_flag, cost, deadline)
        rows.append(row)
        pop.path.unlink(missing_ok=True)
    return rows


# --- populations ---------------------------------------------------------------------------


def read_slice(path: Path, days: float) -> pa.Table:
    """The rows of the input's last ``days`` days (types as pyarrow reads them; written back alike)."""
    table = pacsv.read_csv(path)
    ts = table["trans_date_trans_time"]
    last = pc.max(ts).as_py()
    since = pa.scalar(last - dt.timedelta(days=days), ts.type)
    return table.filter(pc.greater(ts, since))


def clone(slice_: pa.Table, name: str, factor: int, per_card: int | None, path: Path) -> Population:
    """``factor`` copies of the slice under new card numbers and event ids, written as a CSV.

    With ``per_card``, each card's history is first cut into runs of that many
    transactions, each run a card of its own. Copies are interleaved row by row
    (row i of every copy, then row i + 1), so the file stays in time order.
    """
    card = np.asarray(pc.dictionary_encode(slice_["cc_num"]).combine_chunks().indices, dtype=np.int64)
    if per_card:
        order = np.argsort(card, kind="stable")
        starts = np.r_[0, np.flatnonzero(np.diff(card[order])) + 1]
        position = np.empty_like(card)
        position[order] = np.arange(len(card)) - np.repeat(starts, np.diff(np.r_[starts, len(card)]))
        _, card = np.unique(card * (len(card) + 1) + position // per_card, return_inverse=True)
    cards = int(card.max()) + 1
    n = slice_.num_rows
    take = np.repeat(np.arange(n), factor)
    copy = np.tile(np.arange(factor), n)
    out = slice_.take(pa.array(take))
    cc = CARD_BASE + copy * cards + card[take]
    out = out.set_column(out.schema.get_field_index("cc_num"), "cc_num", pa.array(cc, pa.int64()))
    ids = _clone_ids(slice_["trans_num"], take, copy)
    out = out.set_column(out.schema.get_field_index("trans_num"), "trans_num", ids)
    pacsv.write_csv(out, path, pacsv.WriteOptions(quoting_style="needed"))
    ts = slice_["trans_date_trans_time"]
    first, last = (int(pc.cast(x, pa.int64()).as_py()) * 1000 for x in (pc.min(ts), pc.max(ts)))
    return Population(name, path, n * factor, factor * cards, first, last)


def _clone_ids(trans_num: pa.ChunkedArray, take: np.ndarray, copy: np.ndarray) -> pa.Array:
    """``clone_event_id(trans_num[take[i]], copy[i])`` for every row, at numpy speed when all are hex."""
    ids = trans_num.to_pylist()
    try:
        raw = np.frombuffer(bytes.fromhex("".join(ids)), dtype=">u8").reshape(-1, 2)
    except ValueError:
        raw = None
    if raw is None or raw.shape[0] != len(ids):
        return pa.array([clone_event_id(ids[t], int(c)) for t, c in zip(take, copy, strict=True)])
    out = raw[take].copy()
    out[:, 0] ^= copy.astype(np.uint64) * np.uint64(MIX)  # wraps mod 2**64, as clone_event_id
    text = out.tobytes().hex()
    return pa.array([text[i : i + 32] for i in range(0, len(text), 32)])


def _cards_per_copy(slice_: pa.Table, per_card: int | None) -> int:
    """Cards one copy of the slice makes (runs of ``per_card`` transactions each, if given)."""
    counts = pc.value_counts(slice_["cc_num"]).field("counts").to_numpy()
    return int(counts.size if not per_card else np.ceil(counts / per_card).sum())


@dataclass
class _Cost:
    """Seconds per event of the steps that grow with a population, as measured last (for the budget)."""

    replay: float = 1 / 15_000  # per file event: generation and replay
    worker: float = 1 / 4_000  # per worker event: preload, processing, read-back, restore
    fixed: float = 60.0  # per population: worker starts and stops, checks

    def estimate(self, events: int, worker_events: int, latency_s: float, all_cached: bool = False) -> float:
        extra = worker_events * self.worker + self.fixed / 2 if all_cached else 0.0
        return events * self.replay + worker_events * self.worker + self.fixed + latency_s + extra

    def learn(self, row: Row, pop: Population) -> None:
        """Per-event costs from a measured population (its fixed costs left out where known)."""
        self.replay = (pop.seconds + row.seconds["replay"]) / pop.events
        span = row.seconds["worker_span"] + READ_BACK_S * row.worker_events
        self.worker = (row.seconds["preload"] + span + (row.restore_s or 0.0)) / row.worker_events


def _fit(
    slice_: pa.Table,
    name: str,
    factor: int,
    per_card: int | None,
    args: argparse.Namespace,
    cost: _Cost,
    remaining: float,
    work: Path,
) -> Population | None:
    """The population as asked, or scaled down to fit the time left, written out.

    A thin population first drops to one transaction per card (keeping its cards),
    then any population halves its copies until it fits.
    """
    latency = args.latency_seconds + args.latency_warmup
    extra = name in args.all_cached_list
    asked = per_card
    choices = [per_card] if not per_card or per_card == 1 else [per_card, 1]
    for per_card in choices:
        per_copy = _cards_per_copy(slice_, per_card)
        if per_card:
            factor = math.ceil(args.thin_entities / per_copy)
        events = factor * (slice_.num_rows + per_copy)
        if cost.estimate(events, min(events, args.worker_events), latency, extra) <= remaining:
            break
    wanted = factor * per_copy
    while factor >= 1:
        events = factor * (slice_.num_rows + per_copy)
        if cost.estimate(events, min(events, args.worker_events), latency, extra) <= remaining:
            break
        factor //= 2
    if factor < 1:
        return None
    t = time.monotonic()
    pop = clone(slice_, name, factor, per_card, work / f"{name.replace('×', 'x')}.csv")
    pop.seconds = time.monotonic() - t
    notes = []
    if per_card != asked:
        notes.append(f"{per_card} transaction per card instead of {asked}")
    if pop.entities < wanted:
        notes.append(f"{pop.entities:,} entities instead of {wanted:,}")
    if notes:
        pop.note = "scaled down to fit the budget: " + ", ".join(notes)
        log.warning("%s: %s", name, pop.note)
    log.info("%s: %s entities, %s events in %s", name, f"{pop.entities:,}", f"{pop.events:,}", pop.path)
    return pop


# --- one population ---------------------------------------------------------------------------


async def _measure(
    pop: Population,
    args: argparse.Namespace,
    model: Path,
    bootstrap: str,
    kafka_data: Path | None,
    work: Path,
    cache_flag: bool,
    cost: _Cost,
    deadline: float,
) -> Row:
    row = Row(pop.name, pop.entities, pop.events, note=pop.note)
    t = time.monotonic()
    replay = replay_timed(pop.path, None)
    if replay is None:
        raise RuntimeError("bench/replay.py could not time the replay")
    row.replay_events_per_s, row.replay_peak_rss_mb = replay["events_per_s"], replay["peak_rss_mb"]
    row.seconds["replay"] = round(time.monotonic() - t, 1)
    log.info(
        "%s: replay %s events/s, peak RSS %.0f MB",
        pop.name,
        f"{replay['events_per_s']:,.0f}",
        row.replay_peak_rss_mb,
    )

    t = time.monotonic()
    codec = EventCodec(load_spec(SPEC))
    run_id = f"scale-{uuid.uuid4().hex[:8]}"
    topic, out, app_id = f"{run_id}.events", f"{run_id}.scores", f"{run_id}-sn"
    changelog = f"{app_id}-records-changelog"
    await create_topics(bootstrap, [topic], args.partitions)
    await create_topics(bootstrap, [out], args.partitions, log_append_time=True)
    await _create_changelog(bootstrap, changelog, args.partitions)
    types: Counter[str] = Counter()
    seen: set[str] = set()

    def counted(events: Iterator[Event]) -> Iterator[Event]:
        for e in events:
            types[e.type] += 1
            seen.add(e.entity_id)
            yield e

    preload = counted(islice(_events(pop.path, codec), args.worker_events))
    row.worker_events = await produce(bootstrap, topic, codec, preload, partitions=args.partitions)
    txns = types["transaction"]
    row.seconds["preload"] = round(time.monotonic() - t, 1)

    data_dir = work / f"{run_id}-data"
    extra: list[str] = []
    if cache_flag:
        row.cache_mb = _cache_mb(args, len(seen), txns)
        extra = ["--cache-mb", str(row.cache_mb)]

    def worker(name: str) -> Child:
        cmd = worker_command(args, model, bootstrap, topic, out, data_dir, app_id) + extra
        return Child(name, python("-m", "bench.worker_entry", "--", *cmd), work / f"{run_id}-{name}.log")

    if pop.name in args.all_cached_list and cache_flag:
        # Before the run with a tenth (both read the topic the preload just wrote, from the
        # page cache); skipped when the budget has not room for both.
        left = deadline - time.monotonic()
        need = cost.estimate(pop.events, row.worker_events, args.latency_seconds + args.latency_warmup, True)
        if need <= left:
            t = time.monotonic()
            await _all_cached(row, args, model, bootstrap, topic, work, run_id, txns, len(seen))
            row.seconds["all_cached"] = round(time.monotonic() - t, 1)
        else:
            row.all_cached_skipped = f"{left:.0f} s left of the budget, {need:.0f} s needed"
            log.warning("%s: no all-cached run: %s", pop.name, row.all_cached_skipped)

    t = time.monotonic()
    run = await run_one(
        worker("worker"),
        out,
        bootstrap=bootstrap,
        partitions=args.partitions,
        events=row.worker_events,
        expected=txns,
        decode=lambda _: None,  # only the timestamps count here
    )
    row.worker_events_per_s, row.worker_peak_rss_mb = run.events_per_s, run.peak_rss_mb
    row.seconds["worker"] = round(time.monotonic() - t, 1)
    row.seconds["worker_span"] = run.span_s

    row.worker_entities, row.record_bytes = stored_records(data_dir)
    row.changelog_messages, row.changelog_bytes, row.changelog_method = await changelog_size(
        bootstrap, changelog, args.partitions, kafka_data
    )

    t = time.monotonic()
    shutil.rmtree(data_dir)
    restored = worker("restored")
    restored.start()
    try:
        # at least 2 MB/s, or it is stuck
        deadline_s = 120 + row.changelog_bytes / 2e6
        row.restore_s = round(await restore_seconds(restored, args.partitions, deadline_s), 2)
        log.info(
            "%s: restored %s MB of changelog in %.1f s",
            pop.name,
            f"{row.changelog_bytes / 1e6:,.1f}",
            row.restore_s,
        )
        row.seconds["restore"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        await _latency(row, pop, args, codec, bootstrap, topic, out, restored.pid)
        row.seconds["latency"] = round(time.monotonic() - t, 1)
    finally:
        restored.stop()
    cost.learn(row, pop)
    return row


async def _all_cached(
    row: Row,
    args: argparse.Namespace,
    model: Path,
    bootstrap: str,
    topic: str,
    work: Path,
    run_id: str,
    txns: int,
    entities: int,
) -> None:
    """The preloaded events through a worker whose cache holds all their records (its own group)."""
    app_id, out = f"{run_id}-all", f"{run_id}.scores-all"
    await create_topics(bootstrap, [out], args.partitions, log_append_time=True)
    row.all_cached_mb = round(ALL_CACHED_MARGIN * _cache_mb(args, entities, txns) / args.cache_fraction, 1)
    data_dir = work / f"{app_id}-data"
    cmd = worker_command(args, model, bootstrap, topic, out, data_dir, app_id)
    cmd += ["--cache-mb", str(row.all_cached_mb)]
    child = Child("all-cached", python("-m", "bench.worker_entry", "--", *cmd), work / f"{app_id}.log")
    run = await run_one(
        child,
        out,
        bootstrap=bootstrap,
        partitions=args.partitions,
        events=row.worker_events,
        expected=txns,
        decode=lambda _: None,
    )
    row.all_cached_events_per_s, row.all_cached_peak_rss_mb = run.events_per_s, run.peak_rss_mb
    shutil.rmtree(data_dir, ignore_errors=True)


def _events(path: Path, codec: EventCodec) -> Iterator[Event]:
    """A population's events in file order (it is written in time order: no sort, no whole read)."""
    return (e for e in read_events(path, codec, ADAPTER) if not isinstance(e, Rejected))


async def _create_changelog(bootstrap: str, topic: str, partitions: int) -> None:
    """The worker's changelog, as it would create it, but left uncompacted for an hour."""
    configs = {**CHANGELOG_CONFIG, "min.compaction.lag.ms": str(3_600_000)}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


def _cache_mb(args: argparse.Namespace, entities: int, transactions: int) -> float:
    """``--cache-fraction`` of what these records take in memory, by the cache's estimate."""
    per_item = item_bytes(load_spec(SPEC))["transactions"]  # retention (31 days) keeps the whole slice
    return round(args.cache_fraction * (entities * RECORD_BYTES + transactions * per_item) / MB, 1)


def _has_cache_option() -> bool:
    """Whether ``supernova worker`` takes ``--cache-mb`` (the lead is adding it)."""
    done = subprocess.run(
        python("-m", "streams.cli", "worker", "--help"), cwd=REPO, capture_output=True, text=True, check=False
    )
    return "--cache-mb" in done.stdout


def stored_records(data_dir: Path) -> tuple[int, int]:
    """(records, bytes of their heads and segments) in the worker's RocksDB stores; metadata left out."""
    records = size = 0
    for path in sorted(p for p in data_dir.iterdir() if p.is_dir() and (p / "CURRENT").is_file()):
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for value in db.values(from_key=b"\x01"):  # heads (metadata keys are NUL-led)
                records += 1
                size += len(value)
            for key, value in db.items(from_key=SEGMENT_PREFIX):
                if not bytes(key).startswith(SEGMENT_PREFIX):  # type: ignore[arg-type]  # raw mode: bytes
                    break
                size += len(value)
        finally:
            db.close()
    return records, size


async def changelog_size(
    bootstrap: str, topic: str, partitions: int, kafka_data: Path | None
) -> tuple[int, int, str]:
    """(messages, bytes, method) of the changelog topic."""
    async with Offsets(bootstrap, topic, partitions) as offsets:
        ends = await offsets.end()
    messages = sum(ends.values())
    if kafka_data is not None:
        size = sum(
            f.stat().st_size for p in range(partitions) for f in (kafka_data / f"{topic}-{p}").glob("*.log")
        )
        return messages, size, "log segment files on the broker's data dir"
    starts = {p: max(0, e - 1000) for p, e in ends.items()}
    sample = await read_range(bootstrap, topic, starts, ends)
    # ~70 B: record and batch headers; a tombstone (a deleted segment) has no value
    mean = sum(len(m.value or b"") + 70 for m in sample) / max(1, len(sample))
    return (
        messages,
        round(messages * mean),
        "end offsets × mean size of the last 1,000 messages per partition",
    )


async def restore_seconds(child: Child, partitions: int, deadline_s: float, poll_s: float = 0.2) -> float:
    """From the worker's first "restoring partition" log line to its last "assigned" one.

    Waits until ``partitions`` are assigned; TimeoutError after ``deadline_s``.
    """
    deadline = time.monotonic() + deadline_s
    while True:
        child.check_alive()
        lines = child.log_path.read_text(errors="replace").splitlines()
        assigned = [ln for ln in lines if " assigned " in ln and ", resuming at " in ln]
        if len(assigned) >= partitions:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name}: not restored in time:\n{child.log_tail()}")
        await asyncio.sleep(poll_s)
    restoring = [ln for ln in lines if " restoring partition " in ln]
    if not restoring:
        return 0.0
    return _log_time(assigned[-1]) - _log_time(restoring[0])


def _log_time(line: str) -> float:
    m = LOG_TIME.match(line)
    if m is None:
        raise ValueError(f"no time at the start of the worker's log line {line!r}")
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def _latency(
    row: Row,
    pop: Population,
    args: argparse.Namespace,
    codec: EventCodec,
    bootstrap: str,
    topic: str,
    out: str,
    pid: int,
) -> None:
    """p50/p99 of the restored worker fed the events after the preloaded ones at a share of its rate."""
    assert row.worker_events_per_s
    rate = args.latency_load * row.worker_events_per_s
    if args.smoke:  # a few hundred events make no rate worth the name
        rate = min(rate, SMOKE_MAX_RATE)
    stream = looped(lambda: _events(pop.path, codec), row.worker_events, pop.last_ts - pop.first_ts)
    feed = Feed(bootstrap, topic, out, args.partitions, codec, stream, [pid])
    if args.latency_warmup > 0:
        await feed.measure(f"{pop.name} latency warm-up (not counted)", rate, args.latency_warmup)
    lat = await feed.measure(f"{pop.name} latency", rate, args.latency_seconds)
    row.p50_ms, row.p99_ms, row.latency_rate = lat.p50_ms, lat.p99_ms, lat.achieved_rate
    row.latency_complete = lat.scores == lat.expected_scores


# --- the table ---------------------------------------------------------------------------------


def _slope(rows: list[Row], i: int, rss: str, entities: str) -> str:
    """kB of peak RSS per entity between row ``i - 1`` and row ``i``."""
    if i == 0:
        return "–"
    a, b = rows[i - 1], rows[i]
    ra, rb, ea, eb = getattr(a, rss), getattr(b, rss), getattr(a, entities), getattr(b, entities)
    if None in (ra, rb) or eb == ea:
        return "–"
    return f"{(rb - ra) * 2**20 / (eb - ea) / 1000:,.2f}"


def _ratio_cell(r: Row) -> str:
    """The all-cached rate and the ratio of the rate with a tenth to it."""
    if r.all_cached_events_per_s is None:
        return "–"
    ratio = f"{r.worker_events_per_s / r.all_cached_events_per_s:.2f}×" if r.worker_events_per_s else "–"
    return f"{r.all_cached_events_per_s:,.0f} ({ratio})"


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def markdown(results: dict[str, Any], rows: list[Row]) -> str:
    """The table, with date, machine and the notes."""
    m = results["machine"]
    measured = sorted((r for r in rows if r.entities), key=lambda r: r.entities)
    head = (
        "| population | entities | events | replay ev/s | worker ev/s (events, cache) "
        "| all-cached ev/s (ratio) "
        "| peak RSS replay / worker | kB per entity replay / worker | record B/entity "
        "| changelog B/event | restore s (MB/s) | p99 at 50% |"
    )
    lines = [
        ("SMOKE (the machinery only, figures meaningless) " if results["config"].get("smoke") else "")
        + f"Supernova bench-scale, {results['date']}: {m['nproc']} cores ({m['cpu_model']}), "
        f"{m['mem_total_gb']} GB RAM, Python {m['python']}; load average "
        f"{m['loadavg_at_start'][0]:.1f} at the start (a shared machine: rates are noisy); "
        f"{results.get('total_s', 0):.0f} s in all",
        "",
        head,
        "|" + "---|" * head.count(" | ") + "---|",
    ]
    notes = []
    for i, r in enumerate(measured):
        cache = "n/a" if r.cache_mb is None else f"{r.cache_mb:,} MB"
        restore = "–"
        if r.restore_s:
            restore = f"{r.restore_s:.1f} ({r.changelog_bytes / 1e6 / r.restore_s:,.1f})"
        p99 = "–" if r.p99_ms is None else f"{r.p99_ms:,.0f} ms" + ("" if r.latency_complete else " (behind)")
        lines.append(
            "| "
            + " | ".join(
                [
                    r.population + (" *" if r.note else ""),
                    f"{r.entities:,}",
                    f"{r.events:,}",
                    _num(r.replay_events_per_s),
                    f"{_num(r.worker_events_per_s)} ({r.worker_events:,}, {cache})",
                    _ratio_cell(r),
                    f"{_num(r.replay_peak_rss_mb)} / {_num(r.worker_peak_rss_mb)} MB",
                    f"{_slope(measured, i, 'replay_peak_rss_mb', 'entities')} / "
                    f"{_slope(measured, i, 'worker_peak_rss_mb', 'worker_entities')}",
                    _num(r.record_bytes / r.worker_entities if r.worker_entities else None),
                    _num(r.changelog_bytes / r.worker_events if r.worker_events else None),
                    restore,
                    p99,
                ]
            )
            + " |"
        )
        if r.note:
            notes.append(f"* {r.population}: {r.note}")
        if r.all_cached_skipped:
            notes.append(f"{r.population}: no all-cached run ({r.all_cached_skipped})")
        if r.all_cached_mb is not None:
            notes.append(
                f"{r.population}: all-cached worker --cache-mb {r.all_cached_mb:,} "
                f"(peak RSS {_num(r.all_cached_peak_rss_mb)} MB); ratio: worker ev/s with a tenth / this"
            )
        if r.worker_events < r.events:
            notes.append(
                f"{r.population}: the worker processed the first {r.worker_events:,} of {r.events:,} events "
                f"({r.worker_entities:,} entities; --worker-events)"
            )
    notes += [f"{r.population}: {r.note}" for r in rows if not r.entities]
    method = next((r.changelog_method for r in measured if r.changelog_method), "")
    lines += ["", *notes, f"changelog bytes: {method}; uncompacted (min.compaction.lag.ms 1 h)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
