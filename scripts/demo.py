"""`make demo`: the whole system on real Sparkov data, start to finish.

1. start the Kafka broker (scripts/kafka) unless one is already up;
2. train a model from a replay of fraudTrain if the registry has no champion;
3. backtest it on fraudTest with each card's history (`replay --warmup fraudTrain`);
4. `supernova bootstrap` the records from fraudTrain, so the worker starts warm;
5. start `supernova worker` on fresh topics, publish fraudTest transactions,
   show a live view (progress, events/s, fraud alerts), then stop everything.
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

SPEC = REPO / "examples" / "fraud" / "spec.py"
DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "examples" / "fraud" / "sample.csv.gz"
console = Console()


def main() -> int:
    """Run the demo."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, default=_default(DATA / "fraudTest.csv.gz"))
    ap.add_argument("--train-input", type=Path, default=_default(DATA / "fraudTrain.csv.gz"))
    ap.add_argument("--events", type=int, default=100_000, help="transactions to stream")
    ap.add_argument("--rate", type=float, default=None, help="events/s (default: as fast as possible)")
    ap.add_argument("--threshold", type=float, default=0.5, help="alert when score >= threshold")
    ap.add_argument("--registry", type=Path, default=REPO / "models" / "artifacts")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "demo")
    args = ap.parse_args()

    port = int(os.environ.get("KAFKA_PORT", "9092"))
    bootstrap = f"127.0.0.1:{port}"
    started_broker = _broker("status", port).returncode != 0
    if started_broker:
        console.print(f"[bold]starting Kafka[/] on {bootstrap} (scripts/kafka)")
        if _broker("start", port).returncode != 0:
            return 1
    worker = None
    try:
        model = ensure_model(args)
        report = ensure_backtest(args, model)
        run_id = time.strftime("demo-%Y%m%d-%H%M%S")
        data_dir = args.out / run_id
        http_port = _free_port()
        warm_start(args, bootstrap, run_id)
        cmd = [
            sys.executable, "-m", "streams.cli", "worker",
            "--spec", str(SPEC), "--registry", str(args.registry),
            "--bootstrap", bootstrap, "--data-dir", str(data_dir), "--app-id", run_id,
            "--events-topic", f"{run_id}.events", "--scores-topic", f"{run_id}.scores",
            "--dlq-topic", f"{run_id}.events.dlq", "--http-port", str(http_port),
        ]  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        log = open(args.out / f"{run_id}-worker.log", "wb")  # noqa: SIM115
        console.print(f"[bold]starting worker[/] {run_id} (log: {log.name}, http://127.0.0.1:{http_port})")
        worker = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _wait_ready(http_port, worker)
        asyncio.run(stream(args, bootstrap, run_id, model))
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


def ensure_model(args: argparse.Namespace) -> Path:
    """The registry's champion; trains, registers and promotes one if there is none."""
    from models.registry import Registry
    from models.train import train
    from streams.replay import replay

    reg = Registry(args.registry)
    champion = reg.champion()
    if champion is not None:
        console.print(f"[bold]model[/]: champion {champion.key} (registry {reg.root})")
        return champion.path
    features = args.out / "train-features.parquet"
    console.print(f"[bold]no champion model[/]: replaying {args.train_input} to train one (first run only)")
    console.print(replay(SPEC, args.train_input, features_out=features).line())
    artifact = train(load_spec(SPEC), features, args.out / f"model-{time.strftime('%Y%m%dT%H%M%S')}")
    metrics = artifact.manifest.metrics
    console.print(
        f"trained {artifact.name} {artifact.version}: validation ROC-AUC {metrics.get('roc_auc', 0):.4f}, "
        f"PR-AUC {metrics.get('pr_auc', 0):.4f}"
    )
    entry = reg.register(artifact.path)
    reg.promote(entry.key, spec=load_spec(SPEC))
    return entry.path


def ensure_backtest(args: argparse.Namespace, model: Path) -> Path:
    """A backtest report of the champion on the input period (made once per model)."""
    from models.backtest import backtest
    from streams.replay import replay

    out = args.out / "backtest-with-history" / model.name
    if (out / "report.html").exists():
        return out / "report.html"
    features = args.out / "test-features.parquet"
    warmup = _history(args)
    console.print(f"[bold]backtest[/]: replaying {args.input} after {warmup or 'no history'}")
    console.print(replay(SPEC, args.input, features_out=features, warmup=warmup).line())
    result = backtest(model, features, out, spec=load_spec(SPEC), source_csv=args.input)
    overall = result.metrics["models"]["champion"]["overall"]
    console.print(
        f"backtest with each card's history on {overall['rows']:,} events: "
        f"ROC-AUC {overall['roc_auc']:.4f}, PR-AUC {overall['pr_auc']:.4f}"
    )
    return out / "report.html"


def _history(args: argparse.Namespace) -> list[Path]:
    """The history before the streamed input: fraudTrain (none when both fell back to the sample)."""
    return [args.train_input] if args.train_input.resolve() != args.input.resolve() else []


def warm_start(args: argparse.Namespace, bootstrap: str, run_id: str) -> None:
    """`supernova bootstrap` the worker's records from the history (docs/going-live.md)."""
    from streams.bootstrap import BootstrapConfig
    from streams.bootstrap import bootstrap as run_bootstrap
    from streams.worker import WorkerConfig

    history = _history(args)
    if not history:
        return
    console.print(f"[bold]bootstrap[/]: records of every card from {history[0]} (about a minute)")
    cfg = BootstrapConfig(WorkerConfig(bootstrap=bootstrap, app_id=run_id, events_topic=f"{run_id}.events"))
    console.print(run_bootstrap(SPEC, history, cfg).line())


async def stream(args: argparse.Namespace, bootstrap: str, run_id: str, model: Path) -> None:
    """Publish the input and show scores as they come back."""
    codec, events = file_events(SPEC, args.input, args.events)
    state = {"produced": 0, "scored": 0, "alerts": 0, "caught": 0, "frauds": 0}
    alerts: collections.deque[tuple[str, str, float, float, float]] = collections.deque(maxlen=8)
    labels: dict[str, float] = {}
    amounts: dict[str, float] = {}
    started = time.monotonic()
    expected = 0

    def tracked() -> Iterator[Event | Rejected]:
        nonlocal expected
        for event in events:
            if isinstance(event, Event) and event.type == "transaction":
                expected += 1
                labels[event.event_id] = event.label or 0.0
                amounts[event.event_id] = event.attrs.amt
            yield event

    def on_produced(n: int) -> None:
        state["produced"] += n

    def on_score(message: object) -> None:
        s = msgspec.json.decode(message.value, type=ScoreMessage)  # type: ignore[attr-defined]
        state["scored"] += 1
        label = labels.pop(s.event_id, 0.0)
        state["frauds"] += int(label)
        if s.score >= args.threshold:
            state["alerts"] += 1
            state["caught"] += int(label)
            alerts.appendleft((s.entity_id, s.event_id[:10], amounts.get(s.event_id, 0.0), s.score, label))

    def view() -> Table:
        elapsed = time.monotonic() - started
        t = Table(title=f"Supernova demo: {run_id}", expand=False)
        t.add_column("produced", justify="right")
        t.add_column("scored", justify="right")
        t.add_column("events/s", justify="right")
        t.add_column("alerts", justify="right")
        t.add_column("frauds caught", justify="right")
        t.add_row(
            f"{state['produced']:,}",
            f"{state['scored']:,}",
            f"{state['scored'] / elapsed:,.0f}" if elapsed else "-",
            f"{state['alerts']:,}",
            f"{state['caught']:,} / {state['frauds']:,}",
        )
        a = Table(title=f"latest alerts (score >= {args.threshold})")
        for col in ("card", "event", "amount", "score", "label"):
            a.add_column(col)
        for card, eid, amt, score, label in alerts:
            a.add_row(card, eid, f"{amt:,.2f}", f"{score:.3f}", "FRAUD" if label else "ok")
        outer = Table.grid()
        outer.add_row(t)
        outer.add_row(a)
        return outer

    with Live(view(), console=console, refresh_per_second=4) as live:
        tailer = asyncio.create_task(tail(bootstrap, f"{run_id}.scores", on_score, from_beginning=True))
        await produce(
            bootstrap, f"{run_id}.events", codec, tracked(), rate=args.rate, on_progress=on_produced
        )
        while state["scored"] < expected and time.monotonic() - started < 600:
            live.update(view())
            await asyncio.sleep(0.25)
        tailer.cancel()
        live.update(view())
    elapsed = time.monotonic() - started
    console.print(
        f"scored {state['scored']:,} of {expected:,} transactions in {elapsed:.1f} s "
        f"({state['scored'] / elapsed:,.0f} events/s end to end, producer included); "
        f"{state['alerts']:,} alerts caught {state['caught']:,} of {state['frauds']:,} frauds"
    )


def _default(path: Path) -> Path:
    return path if path.exists() else SAMPLE


def _broker(cmd: str, port: int) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(port + 1)}
    env.setdefault("KAFKA_DATA_DIR", str(REPO / ".kafka"))
    return subprocess.run([str(REPO / "scripts" / "kafka"), cmd], env=env, check=False)


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
