"""The worker, ``produce`` and ``tail`` on a SASL_SSL broker with ACLs (issue 20).

Each client logs in as its own least-privileged user (docs/operations.md lists
the grants); passwords reach them by reference (``{"file": ...}``) and must never
appear in their output.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest
from aiokafka.admin import NewTopic
from secure_kafka import SecureBroker, grant_worker
from streaming import ADAPTER, REPO, SAMPLE, SPEC, WorkerProcess, read_topic, send_raw, train_small_model

from entities.events import Event
from entities.spec import Spec
from streams.kafka_io import ensure_topics
from streams.messages import ScoreMessage
from streams.produce import file_events, produce
from streams.replay import replay
from streams.topics import topic_needs
from streams.worker import WorkerConfig

pytestmark = pytest.mark.kafka
N_ROWS = 5_000


def create_topics(broker: SecureBroker, worker: WorkerProcess) -> None:
    """As the operator (admin) would: the worker's principal may not create topics."""
    t = worker.topics
    cfg = WorkerConfig(
        app_id=worker.prefix, events_topic=t["events"], scores_topic=t["scores"], dlq_topic=t["dlq"]
    )
    topics = [
        NewTopic(n.name, n.partitions, 1, topic_configs=n.configs)
        for n in topic_needs(cfg, worker.partitions)
    ]
    asyncio.run(ensure_topics(broker.bootstrap, topics, broker.settings("admin")))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``supernova ARGS`` as a child process."""
    cmd = [sys.executable, "-m", "streams.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def passwords(broker: SecureBroker) -> list[str]:
    return [broker.secret(u).read_text().strip() for u in ("admin", "worker", "producer", "reader")]


def test_worker_produce_and_tail_on_sasl_ssl_with_acls_score_as_replay(
    secure_kafka: SecureBroker, spec: Spec, sample_features: Path, tmp_path: Path
) -> None:
    model = train_small_model(spec, sample_features, tmp_path / "model")
    replay(
        SPEC,
        SAMPLE,
        adapter=ADAPTER,
        limit=N_ROWS,
        models=[model],
        features_out=tmp_path / "features.parquet",
        scores_out=tmp_path / "scores.parquet",
    )
    want = pq.read_table(tmp_path / "scores.parquet").to_pandas().set_index("event_id")["score"]

    b = secure_kafka
    worker_config = b.config_file("worker", tmp_path / "worker.json")
    worker = WorkerProcess(
        b.bootstrap, model, tmp_path / "data", extra=["--kafka-config", str(worker_config)]
    )
    t = worker.topics
    create_topics(b, worker)
    grant_worker(b, worker.prefix, t)
    b.allow("producer", ["Write", "Describe"], ["--topic", t["events"]])
    b.allow("reader", ["Read", "Describe"], ["--topic", t["scores"]])

    worker.start()
    try:
        produced = cli(
            "produce", "--spec", str(SPEC), "--input", str(SAMPLE), "--adapter", str(ADAPTER),
            "--limit", str(N_ROWS), "--topic", t["events"], "--bootstrap", b.bootstrap,
            "--kafka-config", str(b.config_file("producer", tmp_path / "producer.json")),
        )  # fmt: skip
        assert produced.returncode == 0, produced.stderr
        assert produced.stdout.startswith("produced "), produced.stdout
        messages = read_topic(b.bootstrap, t["scores"], expect=N_ROWS, kafka=b.settings("reader"))
        tailed = cli(
            "tail", t["scores"], "--from-beginning", "--limit", "5", "--bootstrap", b.bootstrap,
            "--kafka-config", str(b.config_file("reader", tmp_path / "reader.json")),
        )  # fmt: skip
    finally:
        worker.stop()

    scores = [msgspec.json.decode(m.value, type=ScoreMessage) for m in messages]
    assert len({s.event_id for s in scores}) == len(scores) == N_ROWS
    worst = max(abs(s.score - want[s.event_id]) for s in scores)
    assert worst <= 1e-12, worst

    assert tailed.returncode == 0, tailed.stderr
    tailed_scores = [msgspec.json.decode(line, type=ScoreMessage) for line in tailed.stdout.splitlines()]
    assert len(tailed_scores) == 5

    assert worker.log_path is not None
    said = worker.log_path.read_text() + produced.stdout + produced.stderr + tailed.stderr
    assert not [p for p in passwords(b) if p in said], "a password was logged"


def test_limits_hold_on_the_secured_listener(
    secure_kafka: SecureBroker, spec: Spec, sample_features: Path, tmp_path: Path
) -> None:
    """10,000 random byte strings and oversized messages go to the DLQ; the worker keeps scoring."""
    b = secure_kafka
    model = train_small_model(spec, sample_features, tmp_path / "model")
    config = b.config_file("worker", tmp_path / "worker.json")
    worker = WorkerProcess(b.bootstrap, model, tmp_path / "data", extra=["--kafka-config", str(config)])
    t = worker.topics
    create_topics(b, worker)
    grant_worker(b, worker.prefix, t)
    b.allow("producer", ["Write", "Describe"], ["--topic", t["events"]])
    b.allow("reader", ["Read", "Describe"], ["--topic", t["scores"], "--topic", t["dlq"]])
    rng = random.Random(20)
    bad = [rng.randbytes(rng.randint(0, 300)) for _ in range(10_000)]
    bad += [b'{"event_id": "big", "pad": "' + b"x" * 100_000 + b'"}'] * 3  # over max_event_bytes (64 KiB)
    codec, items = file_events(SPEC, SAMPLE, 2_000, adapter=ADAPTER)
    good = [e for e in items if isinstance(e, Event)]

    worker.start()
    try:
        send_raw(
            b.bootstrap, t["events"], [(rng.randbytes(8), value) for value in bad], b.settings("producer")
        )
        kafka = b.settings("producer")
        asyncio.run(produce(b.bootstrap, t["events"], codec, iter(good), partitions=4, kafka=kafka))
        scored = {e.event_id for e in good if e.type == "transaction"}
        reader = b.settings("reader")
        scores = read_topic(b.bootstrap, t["scores"], expect=len(scored), kafka=reader)
        dead = read_topic(b.bootstrap, t["dlq"], expect=len(bad), kafka=reader)
        health = worker.get("/health")
    finally:
        worker.stop()
    assert health is not None and health["status"] == "ok"
    assert sorted(json.loads(m.value)["event_id"] for m in scores) == sorted(scored)
    assert len(dead) == len(bad)
    assert sorted(m.value for m in dead) == sorted(bad)
