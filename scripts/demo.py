"""`make demo`: the whole system on one example, start to finish.

``--example fraud`` (the default): real Sparkov card transactions; ``--example shop``
(`make demo EXAMPLE=shop`): generated signups, logins and orders, two scored types.

1. start the Kafka broker (scripts/kafka) unless one is already up;
2. (shop) generate a training history and a later test period (examples/shop/generate.py);
3. train a model per scored type from a replay of the training file if the registry
   has no champion of that type;
4. backtest each champion on the test file, with each entity's history
   (`replay --warmup <training file>`, fraud);
5. `supernova bootstrap` the records from the training file, so the worker starts
   warm (fraud; the shop's test period has other users);
6. start `supernova worker` on fresh topics, publish the test events, show a live view
   (progress, events/s, alerts), then stop everything.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from rich.console import Console
from rich.live import Live
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from entities.events import Event  # noqa: E402
from entities.spec import load_spec  # noqa: E402
from streams.messages import ScoreMessage  # noqa: E402
from streams.produce import file_events, produce, tail  # noqa: E402
from streams.sources import Rejected  # noqa: E402

DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "examples" / "fraud" / "sample.csv.gz"
console = Console()


@dataclass(frozen=True)
class Example:
    """What the demo runs on: a spec, its input files, and how to show its events."""

    spec: Path
    adapter: Path | None  # None: JSON lines of wire events
    slice_by: dict[str, list[str]]  # scored type -> backtest slice columns
    amount: dict[str, str] = field(default_factory=dict)  # scored type -> attrs field shown as amount
    generate: list[tuple[str, list[str]]] = field(default_factory=list)  # (file name, generator args)
    warm: bool = True  # the training file is the history of the test period's entities


EXAMPLES = {
    "fraud": Example(
        spec=REPO / "examples" / "fraud" / "spec.py",
        adapter=REPO / "examples" / "fraud" / "sparkov.py",  # Sparkov CSV rows -> events
        slice_by={"transaction": ["category", "state"]},  # Sparkov columns the adapter reads
        amount={"transaction": "amt"},
    ),
    "shop": Example(
        spec=REPO / "examples" / "shop" / "spec.py",
        adapter=None,
        slice_by={"order": ["attrs.category", "attrs.ship_country"], "login": ["attrs.success"]},
        amount={"order": "amount"},
        # Different users in the test period: the backtest scores behaviour, not memory.
        generate=[
            ("train.jsonl.gz", ["--users", "2000", "--days", "60", "--seed", "7"]),
            ("test.jsonl.gz", ["--users", "1000", "--days", "30", "--seed", "8"]),
        ],
        warm=False,
    ),
}


def main() -> int:
    """Run the demo."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", choices=sorted(EXAMPLES), default="fraud")
    ap.add_argument("--input", type=Path, help="test period (fraud default: fraudTest, else the sample)")
    ap.add_argument("--train-input", type=Path, help="training history (fraud default: fraudTrain)")
    ap.add_argument("--events", type=int, default=100_000, help="input rows to stream")
    ap.add_argument("--rate", type=float, default=None, help="events/s (default: as fast as possible)")
    ap.add_argument("--threshold", type=float, default=0.5, help="alert when score >= threshold")
    ap.add_argument("--registry", type=Path, default=REPO / "models" / "artifacts")
    ap.add_argument("--out", type=Path, help="work directory (default out/demo, out/demo-shop)")
    args = ap.parse_args()
    example = EXAMPLES[args.example]
    args.out = args.out or REPO / "out" / ("demo" if args.example == "fraud" else f"demo-{args.example}")
    _inputs(args, example)

    port = int(os.environ.get("KAFKA_PORT", "9092"))
    bootstrap = f"127.0.0.1:{port}"
    started_broker = _broker("status", port, quiet=True).returncode != 0
    if started_broker:
        console.print(f"[bold]starting Kafka[/] on {bootstrap} (scripts/kafka)")
        if _broker("start", port).returncode != 0:
            return 1
    worker = None
    try:
        models = ensure_models(args, example)
        reports = [ensure_backtest(args, example, model) for model in models.values()]
        run_id = time.strftime("demo-%Y%m%d-%H%M%S")
        data_dir = args.out / run_id
        http_port = _free_port()
        warm_start(args, example, bootstrap, run_id)
        cmd = [
            sys.executable, "-m", "streams.cli", "worker",
            "--spec", str(example.spec), "--registry", str(args.registry),
            "--bootstrap", bootstrap, "--data-dir", str(data_dir), "--app-id", run_id,
            "--events-topic", f"{run_id}.events", "--scores-topic", f"{run_id}.scores",
            "--dlq-topic", f"{run_id}.events.dlq", "--http-port", str(http_port),
        ]  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        log = open(args.out / f"{run_id}-worker.log", "wb")  # noqa: SIM115
        console.print(f"[bold]starting worker[/] {run_id} (log: {log.name}, http://127.0.0.1:{http_port})")
        worker = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _wait_ready(http_port, worker)
        asyncio.run(stream(args, example, bootstrap, run_id))
        for report in reports:
            console.print(f"backtest report: {report}")
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
            console.print("worker stopped")
        if started_broker:
            _broker("stop", port)
            console.print("Kafka stopped")
    return 0


def ensure_models(args: argparse.Namespace, example: Example) -> dict[str, Path]:
    """The registry's champion of each scored type; trains, registers and promotes the missing ones."""
    from models.registry import Registry
    from models.train import train
    from streams.replay import output_paths, replay

    spec = load_spec(example.spec)
    reg = Registry(args.registry)
    missing = [t for t in spec.scored_types if reg.champion(t) is None]
    if missing:
        features = args.out / "train-features"  # a directory: one <event_type>.parquet per scored type
        console.print(
            f"[bold]no champion model of {missing}[/]: replaying {args.train_input} (first run only)"
        )
        console.print(
            replay(example.spec, args.train_input, features_out=features, adapter=example.adapter).line()
        )
        for event_type, path in output_paths(spec, features).items():
            if event_type not in missing:
                continue
            artifact = train(spec, path, args.out / f"model-{event_type}-{time.strftime('%Y%m%dT%H%M%S')}")
            metrics = artifact.manifest.metrics
            console.print(
                f"trained {artifact.name} {artifact.version}: validation ROC-AUC "
                f"{metrics.get('roc_auc', 0):.4f}, PR-AUC {metrics.get('pr_auc', 0):.4f}"
            )
            reg.promote(reg.register(artifact.path).key, spec=spec)
    champions: dict[str, Path] = {}
    for event_type in spec.scored_types:
        entry = reg.champion(event_type)
        assert entry is not None
        console.print(f"[bold]model[/] of {event_type}: champion {entry.key} (registry {reg.root})")
        champions[event_type] = entry.path
    return champions


def ensure_backtest(args: argparse.Namespace, example: Example, model: Path) -> Path:
    """A backtest report of a champion on the test period (made once per model)."""
    from models.artifact import read_manifest
    from models.backtest import Slices, backtest
    from streams.replay import output_paths, replay
    from streams.sources import slice_columns

    warmup = _history(args, example)
    out = args.out / ("backtest-with-history" if warmup else "backtest") / model.name
    if (out / "report.html").exists():
        return out / "report.html"
    spec = load_spec(example.spec)
    features_dir = args.out / "test-features"
    event_type = read_manifest(model).event_type
    if not getattr(args, "test_replayed", False):  # once per run: every scored type's rows at once
        args.test_replayed = True
        after = ", ".join(map(str, warmup)) or "no history"
        console.print(f"[bold]backtest[/]: replaying {args.input} after {after}")
        replayed = replay(
            example.spec, args.input, features_out=features_dir, adapter=example.adapter, warmup=warmup
        )
        console.print(replayed.line())
    features = output_paths(spec, features_dir)[event_type]
    columns = slice_columns(args.input, spec, example.slice_by.get(event_type, []), example.adapter)
    slices = Slices(str(args.input), columns.pop("event_id"), columns)
    result = backtest(model, features, out, spec=spec, slices=slices)
    overall = result.metrics["models"]["champion"]["overall"]
    history = "with each entity's history" if warmup else "without history"
    console.print(
        f"backtest of {event_type} {history} on {overall['rows']:,} events: "
        f"ROC-AUC {overall['roc_auc']:.4f}, PR-AUC {overall['pr_auc']:.4f}"
    )
    return out / "report.html"


def _history(args: argparse.Namespace, example: Example) -> list[Path]:
    """The history before the streamed input: the training file, when it holds the same entities."""
    if not example.warm or args.train_input.resolve() == args.input.resolve():
        return []
    return [args.train_input]


def warm_start(args: argparse.Namespace, example: Example, bootstrap: str, run_id: str) -> None:
    """`supernova bootstrap` the worker's records from the history (docs/going-live.md)."""
    from streams.bootstrap import BootstrapConfig
    from streams.bootstrap import bootstrap as run_bootstrap
    from streams.worker import WorkerConfig

    history = _history(args, example)
    if not history:
        return
    console.print(f"[bold]bootstrap[/]: records of every entity from {history[0]} (about a minute)")
    cfg = BootstrapConfig(WorkerConfig(bootstrap=bootstrap, app_id=run_id, events_topic=f"{run_id}.events"))
    console.print(run_bootstrap(example.spec, history, cfg, adapter=example.adapter).line())


async def stream(args: argparse.Namespace, example: Example, bootstrap: str, run_id: str) -> None:
    """Publish the test events and show scores as they come back."""
    spec = load_spec(example.spec)
    scored_types = set(spec.scored_types)
    codec, events = file_events(example.spec, args.input, args.events, adapter=example.adapter)
    state = {"produced": 0, "scored": 0, "alerts": 0, "caught": 0, "frauds": 0}
    by_type: collections.Counter[str] = collections.Counter()
    alerts: collections.deque[tuple[str, str, str, str, float, float]] = collections.deque(maxlen=8)
    labels: dict[str, float] = {}
    amounts: dict[str, float] = {}
    started = time.monotonic()
    expected: set[str] = set()  # event ids: a duplicate (same id again) gets no second score

    def tracked() -> Iterator[Event | Rejected]:
        for event in events:
            if isinstance(event, Event) and event.type in scored_types:
                expected.add(event.event_id)
                labels[event.event_id] = event.label or 0.0
                amount = example.amount.get(event.type)
                if amount is not None:
                    amounts[event.event_id] = getattr(event.attrs, amount)
            yield event

    def on_produced(n: int) -> None:
        state["produced"] += n

    def on_score(message: object) -> None:
        s = msgspec.json.decode(message.value, type=ScoreMessage)  # type: ignore[attr-defined]
        state["scored"] += 1
        by_type[s.event_type] += 1
        label = labels.pop(s.event_id, 0.0)
        state["frauds"] += int(label)
        if s.score >= args.threshold:
            state["alerts"] += 1
            state["caught"] += int(label)
            amount = amounts.get(s.event_id)
            shown = "" if amount is None else f"{amount:,.2f}"
            alerts.appendleft((s.entity_id, s.event_type, s.event_id[:10], shown, s.score, label))

    def view() -> Table:
        elapsed = time.monotonic() - started
        t = Table(title=f"Supernova demo: {run_id}", expand=False)
        for col in ("produced", "scored", "events/s", "alerts", "frauds caught"):
            t.add_column(col, justify="right")
        t.add_row(
            f"{state['produced']:,}",
            " / ".join(f"{n:,} {k}" for k, n in sorted(by_type.items())) or "0",
            f"{state['scored'] / elapsed:,.0f}" if elapsed else "-",
            f"{state['alerts']:,}",
            f"{state['caught']:,} / {state['frauds']:,}",
        )
        a = Table(title=f"latest alerts (score >= {args.threshold})")
        for col in ("entity", "type", "event", "amount", "score", "label"):
            a.add_column(col)
        for entity, event_type, eid, amount, score, label in alerts:
            a.add_row(entity, event_type, eid, amount, f"{score:.3f}", "FRAUD" if label else "ok")
        outer = Table.grid()
        outer.add_row(t)
        outer.add_row(a)
        return outer

    with Live(view(), console=console, refresh_per_second=4) as live:
        tailer = asyncio.create_task(tail(bootstrap, f"{run_id}.scores", on_score, from_beginning=True))
        events_topic = f"{run_id}.events"
        await produce(bootstrap, events_topic, codec, tracked(), rate=args.rate, on_progress=on_produced)
        while state["scored"] < len(expected) and time.monotonic() - started < 600:
            live.update(view())
            await asyncio.sleep(0.25)
        tailer.cancel()
        live.update(view())
    elapsed = time.monotonic() - started
    per_type = ", ".join(f"{n:,} {k}" for k, n in sorted(by_type.items()))
    console.print(
        f"scored {state['scored']:,} of {len(expected):,} events ({per_type}) in {elapsed:.1f} s "
        f"({state['scored'] / elapsed:,.0f} events/s end to end, producer included); "
        f"{state['alerts']:,} alerts caught {state['caught']:,} of {state['frauds']:,} frauds"
    )


def _inputs(args: argparse.Namespace, example: Example) -> None:
    """Fill in the training and test files: the example's defaults, generated if need be."""
    if example.generate:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, generator_args in example.generate:
            path = args.out / name
            if not path.exists():
                console.print(f"[bold]generating[/] {path} ({' '.join(generator_args)})")
                generator = [
                    sys.executable,
                    "-m",
                    "examples.shop.generate",
                    *generator_args,
                    "--out",
                    str(path),
                ]
                subprocess.run(generator, cwd=REPO, check=True)
        args.train_input = args.train_input or args.out / example.generate[0][0]
        args.input = args.input or args.out / example.generate[-1][0]
        return
    args.train_input = args.train_input or _default(DATA / "fraudTrain.csv.gz")
    args.input = args.input or _default(DATA / "fraudTest.csv.gz")


def _default(path: Path) -> Path:
    return path if path.exists() else SAMPLE


def _broker(cmd: str, port: int, quiet: bool = False) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(port + 1)}
    env.setdefault("KAFKA_DATA_DIR", str(REPO / ".kafka"))
    out = subprocess.DEVNULL if quiet else None  # `status` before a start: its "not running" says nothing
    return subprocess.run([str(REPO / "scripts" / "kafka"), cmd], env=env, check=False, stdout=out)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with console.status("waiting for the worker to join its group..."):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
    raise SystemExit("worker did not become ready")


if __name__ == "__main__":
    sys.exit(main())
