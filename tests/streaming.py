"""Helpers for tests against the real broker: a worker subprocess, a small model, reading topics."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from entities.spec import Spec
from models.artifact import Manifest, save
from models.dataset import features_event_type
from streams.local_kafka import free_port

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples" / "fraud" / "spec.py"
SAMPLE = REPO / "examples" / "fraud" / "sample.csv.gz"
ADAPTER = REPO / "examples" / "fraud" / "sparkov.py"  # Sparkov CSV rows -> events


def train_small_model(spec: Spec, features: Path, out: Path, trees: int = 30, version: str = "v1") -> Path:
    """A real LightGBM model on replayed features (small: tests need a model, not a good one)."""
    event_type = features_event_type(features, spec)
    names = spec.feature_names_of(event_type)
    table = pq.read_table(features).to_pandas()
    data = lgb.Dataset(table[names].to_numpy(), table["label"].to_numpy(), feature_name=names)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "seed": 7, "deterministic": True}
    booster = lgb.train(params, data, num_boost_round=trees)
    manifest = Manifest(
        name=spec.name,
        version=version,
        feature_names=names,
        spec_hash=spec.hash(),
        event_type=event_type,
        lightgbm_version=lgb.__version__,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    return save(out, booster, manifest)


@dataclass
class WorkerProcess:
    """``supernova worker`` as a child process with its own topics, data dir and port."""

    bootstrap: str
    model: Path | None
    data_dir: Path
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    partitions: int = 4
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    spec: Path = SPEC
    options: list[str] = field(default_factory=list)  # before the command, e.g. ["-v"]
    env: dict[str, str] = field(default_factory=dict)  # added to the child's environment

    @property
    def topics(self) -> dict[str, str]:
        """Topic names of this worker."""
        return {
            "events": f"{self.prefix}.events",
            "scores": f"{self.prefix}.scores",
            "dlq": f"{self.prefix}.events.dlq",
            "changelog": f"{self.prefix}-records-changelog",
        }

    def start(self, timeout: float = 90, ready: Callable[[Any], bool] | None = None) -> None:
        """Start and wait until ``ready(health)`` (default: every partition assigned here)."""
        self.log_path = self.data_dir.parent / f"{self.prefix}-worker-{time.time_ns()}.log"
        cmd = [
            sys.executable, "-m", "streams.cli", *self.options, "worker",
            "--spec", str(self.spec), *(["--model", str(self.model)] if self.model else []),
            "--bootstrap", self.bootstrap, "--data-dir", str(self.data_dir),
            "--app-id", self.prefix, "--partitions", str(self.partitions),
            "--events-topic", self.topics["events"], "--scores-topic", self.topics["scores"],
            "--dlq-topic", self.topics["dlq"], "--http-port", str(self.port), *self.extra,
        ]  # fmt: skip
        if "--exactly-once" not in self.extra and "--commit-interval" not in self.extra:
            # Checkpoints every second, not every 5 s: the fault tests kill the worker
            # after 1-4 s and must find checkpoints and changelog entries to recover from.
            cmd += ["--commit-interval", "1"]
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            health = self.get("/health")
            if ready is not None and ready(health):
                return
            if ready is None and health and len(health.get("partitions", [])) == self.partitions:
                return
            time.sleep(0.5)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log_tail()}")

    def get(self, path: str) -> Any:
        """GET a JSON (or text) path of the worker's HTTP server; None if unreachable."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                body = r.read().decode()
        except (OSError, ValueError):
            return None
        try:
            return json.loads(body)
        except ValueError:
            return body

    def stop(self, timeout: float = 60) -> None:
        """Graceful stop (SIGTERM), as an operator would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def log_tail(self, n: int = 60) -> str:
        """The last lines of the worker's log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines[-n:] if "cluster metadata" not in line)


def read_topic(
    bootstrap: str,
    topic: str,
    expect: int,
    timeout: float = 120,
    unique: Callable[[Any], Any] | None = None,
    committed: bool = False,
    kafka: dict[str, Any] | None = None,
) -> list[Any]:
    """Every message of a topic from the beginning, until ``expect`` arrived (or timeout).

    With ``unique``, waits for ``expect`` distinct ``unique(message)`` values instead
    (duplicates do not count towards it). With ``committed``, reads as a
    read_committed consumer (what exactly-once promises to). ``kafka``: client
    settings (SASL/SSL) for a secured broker.
    """

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if committed else "read_uncommitted",
            **(kafka or {}),
        )
        await consumer.start()
        try:
            parts = await _partitions(consumer, topic)
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            out: list[Any] = []
            seen: set[Any] = set()
            deadline = time.monotonic() + timeout

            def enough() -> bool:
                return (len(seen) if unique else len(out)) >= expect

            while not enough() and time.monotonic() < deadline:
                got = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for records in got.values():
                    out.extend(records)
                    if unique:
                        seen.update(unique(r) for r in records)
            # Anything beyond `expect` (duplicates) that is already there counts too.
            got = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            for records in got.values():
                out.extend(records)
            return out
        finally:
            await consumer.stop()

    return asyncio.run(run())


def send_raw(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes]],
    kafka: dict[str, Any] | None = None,
) -> None:
    """(key, value) byte strings as they are, Kafka's default partitioner: what any client may send."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **(kafka or {}))
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key) for key, value in messages]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        await consumer._client.force_metadata_update()  # topic may be brand new
        await asyncio.sleep(0.1)
    raise TimeoutError(f"topic {topic} has no partitions")


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) in /metrics text."""
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def chunks(it: Iterator[Any], n: int) -> list[Any]:
    """The next n items of an iterator."""
    out = []
    for item in it:
        out.append(item)
        if len(out) >= n:
            break
    return out
