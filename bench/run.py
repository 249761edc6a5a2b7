"""The benchmark: raw ceiling, naive faust, naive Quix, supernova worker (2 processes, 1), latency, replay.

One broker (started here on free ports with a temporary data directory, or an
existing one with ``--bootstrap``), one input topic preloaded once with the first
N events of the Sparkov test file, then one system after the other, each reading
that topic with a fresh consumer group into its own LogAppendTime output topic:

1. raw ceiling: ``bench/raw_passthrough.py``, aiokafka consume -> produce, bytes unchanged;
2. naive faust: ``bench/naive_faust.py``, the per-event agent a typical user writes;
3. naive Quix (phase ``quix``): ``bench/naive_quix.py``, the same per-event work as a
   Quix Streams app (StreamingDataFrame, per-key state);
4. supernova worker, ``--processes`` (2) processes in one consumer group;
5. supernova worker: ``supernova worker`` with a 200-tree model, one process;
6. latency: that worker, fed at 50% of its measured rate (after a warm-up at that rate),
   then at lower loads (``--latency-curve``): up to which load p99 stays within 25 ms;
7. replay: ``supernova replay`` over the whole file (no broker involved).

The input topic has 4 partitions: the worker's default (``WorkerConfig.partitions``),
so its scores co-partition with the events, and room for four worker processes.
The broker started here keeps Kafka's ``group.initial.rebalance.delay.ms`` of 3 s,
so processes started together join one group before it assigns partitions (with 0,
the first one took all four and started, and the rebalance came mid-run).

    python -m bench                  # default: 200,000 events, writes bench/results/
    python -m bench --smoke          # 2,000 events: correctness of every system only
    python -m bench --bootstrap 127.0.0.1:9092 --events 50000 --only worker,latency
    python -m bench --only workers,worker,latency --latency-rate 17500 --workers-latency-rate 17500

``--workers-latency-rate`` also measures the latency of the worker processes, on
their own copy of the input topic (their latency phase appends to it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from bench import report
from bench.harness import REPO, Child, Run, create_topics, measure, python
from bench.latency import Latency, continuation, measure_latency
from bench.model import model_artifact
from bench.procstat import machine
from entities.events import Event
from streams.local_kafka import KafkaBroker, free_port
from streams.produce import file_events, produce
from streams.sources import Rejected

log = logging.getLogger("bench")
SPEC = REPO / "examples" / "fraud" / "spec.py"
ADAPTER = REPO / "examples" / "fraud" / "sparkov.py"  # Sparkov CSV rows -> events
SAMPLE = REPO / "examples" / "fraud" / "sample.csv.gz"
DATA = REPO.parent / "shared" / "data"
PHASES = ("raw", "naive", "quix", "workers", "worker", "latency", "replay")
SMOKE_EVENTS = 2_000
SMOKE_LATENCY_S = 3.0
SMOKE_MAX_RATE = 500.0
TREES = 200
SCORE_TOLERANCE = 1e-6


class _Score(msgspec.Struct):
    event_id: str
    score: float


decode_score = msgspec.json.Decoder(_Score).decode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, help="events to preload (default 200,000; smoke 2,000)")
    p.add_argument("--smoke", action="store_true", help="few events, short latency phase: correctness only")
    p.add_argument("--bootstrap", help="use this broker instead of starting one")
    p.add_argument("--input", type=Path, help="Sparkov CSV (default: ../shared/data/fraudTest.csv.gz)")
    p.add_argument("--train", type=Path, help="file to train the model on (default: fraudTrain)")
    p.add_argument("--train-rows", type=int, default=300_000)
    p.add_argument("--model", type=Path, help="use this model artifact instead of training one")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--latency-seconds", type=float, help="length of the latency phase (default 60)")
    p.add_argument(
        "--latency-warmup", type=float, help="seconds at the same rate before the measured phase (default 20)"
    )
    p.add_argument("--latency-load", type=float, default=0.5, help="fraction of the worker's rate")
    p.add_argument(
        "--latency-curve",
        help="after the latency phase, these fractions of the worker's rate too, comma-separated "
        "(default 0.3,0.4; smoke: 0.25; '' for none)",
    )
    p.add_argument(
        "--curve-seconds", type=float, help="length of each --latency-curve phase (default 20; smoke 3)"
    )
    p.add_argument(
        "--latency-rate", type=float, help="events/s of the latency phase instead (to compare two builds)"
    )
    p.add_argument(
        "--processes", type=int, default=2, help="worker processes in one group, in the workers phase"
    )
    p.add_argument(
        "--workers-latency-rate",
        type=float,
        help="also measure the latency of the worker processes at this rate (events/s)",
    )
    p.add_argument("--only", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--naive-tuned", action="store_true", help="also run naive faust with a 16 MB fetch size")
    p.add_argument(
        "--naive-max-seconds",
        type=float,
        default=300.0,
        help="stop each naive run (faust, Quix) this long after its first score (0: no cap; smoke: none)",
    )
    p.add_argument("--replay-model", action="store_true", help="also replay with the model (scores)")
    p.add_argument("--profile", type=Path, help="run the worker under cProfile, stats to this file")
    p.add_argument("--timing", type=Path, help="time the worker's batch steps, JSON to this file")
    p.add_argument("--worker-args", default="", help="extra `supernova worker` options, e.g. '--no-features'")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="latest.json/png go here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, state) for a look")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if "latency" in args.phases and "worker" not in args.phases:
        p.error("the latency phase needs the worker phase")
    args.events = args.events or (SMOKE_EVENTS if args.smoke else 200_000)
    if args.smoke or not args.naive_max_seconds:
        args.naive_max_seconds = None
    if args.latency_seconds is None:
        args.latency_seconds = SMOKE_LATENCY_S if args.smoke else 60.0
    if args.latency_warmup is None:
        args.latency_warmup = 0.0 if args.smoke else 20.0
    if args.latency_curve is None:
        args.latency_curve = "0.25" if args.smoke else "0.3,0.4"
    try:
        args.curve_loads = [float(x) for x in args.latency_curve.split(",") if x.strip()]
    except ValueError:
        p.error(f"--latency-curve: fractions like 0.25,0.35, not {args.latency_curve!r}")
    if args.curve_seconds is None:
        args.curve_seconds = SMOKE_LATENCY_S if args.smoke else 20.0
    return default_files(args)


def default_files(args: argparse.Namespace) -> argparse.Namespace:
    """``--input`` and ``--train`` where not given: the shared Sparkov files, else the sample."""
    default_input = DATA / "fraudTest.csv.gz"
    args.input = args.input or (default_input if default_input.is_file() else SAMPLE)
    default_train = DATA / "fraudTrain.csv.gz"
    if args.train is None:
        args.train = SAMPLE if args.smoke or not default_train.is_file() else default_train
    if args.train == SAMPLE:
        args.train_rows = min(args.train_rows, 20_000)
    return args


def setup_logging(verbose: bool) -> None:
    """The bench's log lines on stderr; the Kafka clients' only from warnings on."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every system scored every event (targets don't change it)."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    started = time.monotonic()
    with work_dir("supernova-bench-", args.keep) as work, local_broker(args.bootstrap, work) as bootstrap:
        results = asyncio.run(run_all(args, bootstrap, work))
    results["total_s"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    results["targets"] = report.targets(results)
    report.write_json(results, args.out / "latest.json")
    report.write_chart(results, args.out / "latest.png")
    report.print_table(results)
    log.info(
        "wrote %s and %s in %.0f s", args.out / "latest.json", args.out / "latest.png", results["total_s"]
    )
    return 0 if results["checks"]["ok"] else 1


@contextlib.contextmanager
def work_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary directory for logs, state and the broker; removed after unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            log.info("work directory kept: %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def local_broker(bootstrap: str | None, work: Path) -> Iterator[str]:
    """An existing broker, or one of our own that is stopped whatever happens."""
    if bootstrap:
        yield bootstrap
        return
    # Kafka's default group.initial.rebalance.delay.ms (3 s; scripts/kafka sets 0 for the
    # tests): worker processes started together join one group before it assigns.
    broker = KafkaBroker(work / "kafka", env={"KAFKA_INITIAL_REBALANCE_DELAY_MS": "3000"})
    log.info("starting a Kafka broker on %s", broker.bootstrap)
    try:
        broker.start()
        yield broker.bootstrap
    finally:
        log.info("stopping the Kafka broker")
        broker.stop()


async def run_all(args: argparse.Namespace, bootstrap: str, work: Path) -> dict[str, Any]:
    """Every phase, in order; the result document."""
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {
            "events": args.events,
            "input": str(args.input),
            "partitions": args.partitions,
            "trees": TREES,
            "smoke": args.smoke,
            "latency_seconds": args.latency_seconds,
            "latency_warmup_seconds": args.latency_warmup,
            "latency_load": args.latency_load,
            "latency_curve": args.curve_loads,
            "curve_seconds": args.curve_seconds,
            "latency_rate": args.latency_rate,
            "processes": args.processes,
            "workers_latency_rate": args.workers_latency_rate,
            "phases": args.phases,
            "worker_args": args.worker_args,
            "naive_faust_settings": "faust defaults (1 MB consumer fetch), rocksdict table store",
            "naive_quix_settings": "Quix Streams defaults (RocksDB state with changelog, at-least-once)",
            "naive_max_seconds": args.naive_max_seconds,
        },
        "method": {
            "events_per_s": "input events / s between the first and the last output LogAppendTime "
            "(start-up and the first batch before the first output are excluded)",
            "cpu": "user+system of the process from /proc/<pid>/stat; µs/event between first and last output",
            "rss": "VmRSS / VmHWM from /proc/<pid>/status when the outputs reached the given event counts",
            "latency": "score LogAppendTime - event CreateTime (stamped by the producer at append)",
        },
        "runs": {},
    }
    model = args.model or model_artifact(SPEC, args.train, args.train_rows, TREES)
    results["config"]["model"] = str(model)

    t = time.monotonic()
    codec, base = _read_events(args)
    n = min(args.events, len(base))
    preload = base[:n]
    txn_ids = {e.event_id for e in preload if e.type == "transaction"}
    log.info(
        "read %s events in %.1f s; preloading %s (%s transactions)",
        f"{len(base):,}",
        time.monotonic() - t,
        f"{n:,}",
        f"{len(txn_ids):,}",
    )
    results["config"]["events"] = n

    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    topic = f"{run_id}.events"
    out = {
        k: f"{run_id}.{k}.out"
        for k in ("raw", "naive_faust", "naive_faust_tuned", "naive_quix", "worker", "workers")
    }
    await create_topics(bootstrap, [topic], args.partitions)
    await create_topics(bootstrap, out.values(), args.partitions, log_append_time=True)
    t = time.monotonic()
    sent = await produce(bootstrap, topic, codec, iter(preload), partitions=args.partitions)
    seconds = time.monotonic() - t
    results["preload"] = {"events": sent, "seconds": round(seconds, 2), "events_per_s": round(sent / seconds)}
    log.info("preloaded %s events into %s in %.1f s", f"{sent:,}", topic, seconds)

    runs: dict[str, Run] = {}
    common = {"bootstrap": bootstrap, "partitions": args.partitions, "events": n}
    if "raw" in args.phases:
        child = Child(
            "raw",
            python(
                "-m",
                "bench.raw_passthrough",
                "--bootstrap",
                bootstrap,
                "--input",
                topic,
                "--output",
                out["raw"],
                "--group",
                f"{run_id}-raw",
            ),
            work / "raw.log",
        )
        runs["raw"] = await run_one(child, out["raw"], expected=n, **common)
    naive: list[tuple[str, str, list[str]]] = []  # (run key, module, extra arguments)
    if "naive" in args.phases:
        naive.append(("naive_faust", "bench.naive_faust", ["--partitions", str(args.partitions)]))
        if args.naive_tuned:
            naive.append(
                ("naive_faust_tuned", "bench.naive_faust", ["--partitions", str(args.partitions), "--tuned"])
            )
    if "quix" in args.phases:
        naive.append(("naive_quix", "bench.naive_quix", []))
    for key, module, extra in naive:
        child = Child(
            key,
            python(
                "-m", module, "--bootstrap", bootstrap, "--input", topic, "--output", out[key],
                "--model", str(model), "--app-id", f"{run_id}-{key}", "--data-dir", str(work / key), *extra,
            ),
            work / f"{key}.log",
        )  # fmt: skip
        runs[key] = await run_one(
            child,
            out[key],
            expected=len(txn_ids),
            decode=decode_score,
            max_seconds=args.naive_max_seconds,
            **common,
        )
    if "workers" in args.phases:  # before the latency phase adds events to the topic
        name = f"workers{args.processes}"
        workers_topic = topic
        if args.workers_latency_rate:  # its latency phase must not add events to the shared topic
            workers_topic = f"{topic}.{name}"
            await create_topics(bootstrap, [workers_topic], args.partitions)
            await produce(bootstrap, workers_topic, codec, iter(preload), partitions=args.partitions)
        children = [
            Child(
                name if k == 0 else f"{name}-{k}",
                python(
                    "-m",
                    "bench.worker_entry",
                    "--",
                    *worker_command(
                        args,
                        model,
                        bootstrap,
                        workers_topic,
                        out["workers"],
                        work / f"{name}-{k}",
                        f"{run_id}-sn{args.processes}",
                    ),
                ),
                work / f"{name}-{k}.log",
            )
            for k in range(args.processes)
        ]
        try:
            runs["workers"] = await run_one(
                children[0],
                out["workers"],
                expected=len(txn_ids),
                decode=decode_score,
                others=children[1:],
                marks=(0.5, 1.0),
                stop=False,
                **common,
            )
            if args.workers_latency_rate:
                feed = Feed(
                    bootstrap,
                    workers_topic,
                    out["workers"],
                    args.partitions,
                    codec,
                    continuation(base, n),
                    [c.pid for c in children],
                )
                results["latency_workers"] = await _latency(args, feed, args.workers_latency_rate)
        finally:
            for c in children:
                c.stop()
    if "worker" in args.phases:
        worker_args = worker_command(
            args, model, bootstrap, topic, out["worker"], work / "worker", f"{run_id}-sn"
        )
        profile = ["--profile", str(args.profile.resolve())] if args.profile else []
        if args.timing:
            profile += ["--timing", str(args.timing.resolve())]
        cmd = python("-m", "bench.worker_entry", *profile, "--", *worker_args)
        child = Child("worker", cmd, work / "worker.log")
        try:
            runs["worker"] = await run_one(
                child,
                out["worker"],
                expected=len(txn_ids),
                decode=decode_score,
                stop=False,
                marks=(0.1, 0.25, 0.5, 0.75, 1.0),
                **common,
            )
            if "latency" in args.phases:
                if args.timing:  # the worker's step timers: a file per phase
                    args.timing.with_name(args.timing.name + ".mark").write_text("throughput")
                rate = args.latency_rate or args.latency_load * runs["worker"].events_per_s
                if args.smoke:
                    rate = min(rate, SMOKE_MAX_RATE)
                stream = continuation(base, n)
                feed = Feed(bootstrap, topic, out["worker"], args.partitions, codec, stream, [child.pid])
                results["latency"] = await _latency(args, feed, rate)
                results["latency_curve"] = await _curve(args, feed, runs["worker"].events_per_s)
        finally:
            child.stop()
    for key, r in runs.items():
        results["runs"][key] = r.summary()
    if "replay" in args.phases:
        results["runs"].update(_replay(args, model, work))
    results["checks"] = _checks(runs, n, txn_ids, results)
    return results


@dataclass
class Feed:
    """A running worker's input and output topics, and the events that continue its input."""

    bootstrap: str
    topic: str
    out_topic: str
    partitions: int
    codec: Any
    stream: Iterator[Event]
    pids: list[int]

    async def measure(self, label: str, rate: float, seconds: float) -> Latency:
        """Publish the next ``seconds`` of events at ``rate``; their latency."""
        events = list(islice(self.stream, max(1, int(rate * seconds))))
        log.info("%s: %s events at %.0f events/s", label, f"{len(events):,}", rate)
        lat = await measure_latency(
            self.bootstrap, self.topic, self.out_topic, self.partitions, self.codec, events, rate, self.pids
        )
        log.info("%s: p50 %.0f ms, p99 %.0f ms", label, lat.p50_ms, lat.p99_ms)
        return lat


def _without_series(lat: Latency) -> dict[str, Any]:
    return {k: v for k, v in lat.__dict__.items() if k != "by_second"}


async def _latency(args: argparse.Namespace, feed: Feed, rate: float) -> dict[str, Any]:
    """A warm-up at ``rate`` (reported, not counted), then the measured latency phase."""
    warmup = None
    if args.latency_warmup > 0:
        # Not measured: the broker's JIT compiles the paths of this small-request load
        # during its first ~30 s (its C2 threads took 10-28% of a core).
        warm = await feed.measure("latency warm-up (not counted)", rate, args.latency_warmup)
        warmup = _without_series(warm)
    lat = await feed.measure("latency", rate, args.latency_seconds)
    return {**lat.__dict__, "warmup": warmup}


async def _curve(args: argparse.Namespace, feed: Feed, max_rate: float) -> list[dict[str, Any]]:
    """Latency at each ``--latency-curve`` load, highest first; no warm-up (the latency phase was one)."""
    points = []
    for load in sorted(args.curve_loads, reverse=True):
        rate = min(load * max_rate, SMOKE_MAX_RATE) if args.smoke else load * max_rate
        lat = await feed.measure(f"latency at {100 * load:.0f}% load", rate, args.curve_seconds)
        points.append({"load": load, **_without_series(lat)})
    return points


def worker_command(
    args: argparse.Namespace, model: Path, bootstrap: str, topic: str, out: str, data_dir: Path, app_id: str
) -> list[str]:
    """``supernova worker`` arguments for one worker process of the bench."""
    return [
        "worker", "--spec", str(SPEC), "--model", str(model), "--bootstrap", bootstrap,
        "--data-dir", str(data_dir), "--app-id", app_id,
        "--partitions", str(args.partitions),
        "--events-topic", topic, "--scores-topic", out, "--dlq-topic", f"{app_id}.dlq",
        "--http-port", str(free_port()),
        *args.worker_args.split(),
    ]  # fmt: skip


async def run_one(child: Child, out_topic: str, stop: bool = True, **kw: Any) -> Run:
    """``harness.measure`` of one system, logged; the child is stopped after unless ``stop=False``."""
    log.info("%s: running", child.name)
    try:
        run = await measure(child, out_topic=out_topic, **kw)
    except BaseException:
        child.stop(timeout=10)
        raise
    if stop:
        child.stop()
    log.info(
        "%s: %s events/s (%s outputs in %.1f s), %.1f CPU µs/event, peak RSS %.0f MB",
        child.name,
        f"{run.events_per_s:,.0f}",
        f"{run.outputs:,}",
        run.span_s,
        run.cpu_us_per_event,
        run.peak_rss_mb,
    )
    return run


def _read_events(args: argparse.Namespace) -> tuple[Any, list[Event]]:
    """Events of the input file in arrival order (the whole file; in smoke mode just enough)."""
    limit = None
    if args.smoke:
        limit = args.events + int(SMOKE_MAX_RATE * args.latency_seconds) + 100
    codec, items = file_events(SPEC, args.input, limit, adapter=ADAPTER)
    events = [e for e in items if not isinstance(e, Rejected)]
    return codec, events


def _replay(args: argparse.Namespace, model: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Replay over the input file: features only (as ``make demo``); optionally also with scores."""
    limit = args.events if args.smoke else None
    out = {"replay": replay_timed(args.input, limit) or _replay_cli(_replay_args(args, work, limit))}
    if args.replay_model:
        extra = ["--model", str(model), "--scores-out", str(work / "s.parquet")]
        out["replay_model"] = _replay_cli(_replay_args(args, work, limit) + extra)
    return out


def _replay_args(args: argparse.Namespace, work: Path, limit: int | None) -> list[str]:
    rows = ["--limit", str(limit)] if limit else []
    features = str(work / f"f-{time.time_ns()}.parquet")
    return ["--input", str(args.input), "--adapter", str(ADAPTER), "--features-out", features, *rows]


_REPLAY_MODULE = """
import json, os, sys
from pathlib import Path
from bench.procstat import sample
from bench.replay import _replay, _timed
limit = int(sys.argv[3]) or None
events, wall, cpu = _timed(lambda: _replay(Path(sys.argv[1]), Path(sys.argv[2]), limit))
peak = sample(os.getpid()).hwm  # VmHWM: ru_maxrss keeps the parent's peak across fork and exec
print(json.dumps({"events": events, "seconds": wall, "cpu_s": cpu, "peak_rss": peak}))
"""


def replay_timed(input_path: Path, limit: int | None) -> dict[str, Any] | None:
    """bench/replay.py's timing of ``streams.replay.replay`` (wall and CPU), in a fresh process.

    That module is maintained separately and its helpers are private: when they are
    missing or fail, the caller falls back to the ``supernova replay`` command line.
    """
    if not (REPO / "bench" / "replay.py").is_file():
        return None
    cmd = python("-c", _REPLAY_MODULE, str(SPEC), str(input_path), str(limit or 0))
    log.info("replay: bench/replay.py timing of streams.replay.replay over %s", input_path)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    try:
        got = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        log.warning("bench/replay.py could not be used (%s); running the replay CLI", done.stderr[-500:])
        return None
    return {
        "events": got["events"],
        "seconds": round(got["seconds"], 2),
        "events_per_s": round(got["events"] / got["seconds"], 1),
        "cpu_s": round(got["cpu_s"], 2),
        "cpu_us_per_event": round(got["cpu_s"] / got["events"] * 1e6, 2),
        "peak_rss_mb": round(got["peak_rss"] / 2**20, 1),
        "via": "bench/replay.py (_timed(_replay)): streams.replay.replay writing features to Parquet",
    }


def _replay_cli(extra: list[str]) -> dict[str, Any]:
    cmd = python("-m", "streams.cli", "replay", "--spec", str(SPEC), *extra)
    log.info("replay: %s", " ".join(cmd[3:]))
    t = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t
    m = re.search(r"replayed ([\d,]+) events .*?([\d.]+) s, ([\d,]+) events/s", done.stdout)
    if done.returncode != 0 or m is None:
        raise RuntimeError(f"replay failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return {
        "events": int(m.group(1).replace(",", "")),
        "seconds": float(m.group(2)),
        "events_per_s": float(m.group(3).replace(",", "")),
        "wall_s": round(wall, 2),
        "via": "supernova replay",
        "summary": m.group(0),
    }


def _checks(runs: dict[str, Run], n: int, txn_ids: set[str], results: dict[str, Any]) -> dict[str, Any]:
    """Every event through every system, exactly once; naive and worker scores agree."""
    lines: list[str] = []
    ok = True
    if "raw" in runs:
        good = runs["raw"].outputs == n
        ok &= good
        lines.append(
            f"raw: {runs['raw'].outputs:,} copies of {n:,} events" + ("" if good else "  [MISMATCH]")
        )
    scores: dict[str, dict[str, float]] = {}
    for key in ("naive_faust", "naive_faust_tuned", "naive_quix", "worker", "workers"):
        if key not in runs:
            continue
        run = runs[key]
        got = [m.value for m in run.values]
        ids = [s.event_id for s in got]
        unique = set(ids)
        missing, extra, dups = len(txn_ids - unique), len(unique - txn_ids), len(ids) - len(unique)
        if run.capped:  # stopped at its time cap: what it scored must still be right
            good = not (extra or dups)
            note = f"time cap: stopped after {len(ids):,} of {len(txn_ids):,} transactions"
        else:
            good = not (missing or extra or dups)
            note = f"{len(ids):,} scores for {len(txn_ids):,} transactions"
        ok &= good
        lines.append(
            f"{key}: {note} (missing {missing}, unexpected {extra}, duplicates {dups})"
            + ("" if good else "  [MISMATCH]")
        )
        scores[key] = {s.event_id: s.score for s in got}
    if "naive_faust" in scores and "worker" in scores:
        a, b = scores["naive_faust"], scores["worker"]
        diffs = [abs(a[k] - b[k]) for k in a.keys() & b.keys()]
        worst = max(diffs, default=0.0)
        differ = sum(1 for d in diffs if d > SCORE_TOLERANCE)
        lines.append(
            f"naive faust vs worker scores: max |Δ| {worst:.2e}, {differ} of {len(diffs):,} differ by "
            f"> {SCORE_TOLERANCE:g} (float summation order in std/means can move a tree split)"
        )
    # The same per-event code (naive faust and Quix), the same features (one worker and
    # several): the same scores.
    for x, y in (("naive_faust", "naive_quix"), ("worker", "workers")):
        if x in scores and y in scores:
            a, b = scores[x], scores[y]
            worst = max((abs(a[k] - b[k]) for k in a.keys() & b.keys()), default=0.0)
            good = worst <= 1e-12
            ok &= good
            lines.append(f"{x} vs {runs[y].name}: max |Δ| {worst:.2e}" + ("" if good else "  [MISMATCH]"))
    phases = [(key, results.get(key)) for key in ("latency", "latency_workers")]
    phases += [(f"latency at {100 * p['load']:.0f}% load", p) for p in results.get("latency_curve", [])]
    for key, lat in phases:
        if lat is not None:
            expected = lat["expected_scores"]
            good = lat["scores"] == expected
            ok &= good
            lines.append(
                f"{key}: {lat['scores']:,} scores for {expected:,} transactions"
                + ("" if good else "  [MISMATCH: the worker fell behind; percentiles are lower bounds]")
            )
    return {"ok": bool(ok), "lines": lines}


if __name__ == "__main__":
    sys.exit(main())
