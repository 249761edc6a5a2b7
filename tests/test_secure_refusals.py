"""What a refused login or a missing ACL does on the SASL_SSL broker (issue 20).

Each refusal ends the process with one line that names it and a non-zero exit;
after the right is granted and the worker restarted, every event gets its score.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import NewTopic
from secure_kafka import SecureBroker, worker_grants
from streaming import ADAPTER, SAMPLE, SPEC, WorkerProcess, read_topic, send_raw, train_small_model
from test_secure_broker import cli, create_topics

from entities.events import Event
from entities.spec import Spec
from streams.kafka_io import ensure_topics, partition_for
from streams.produce import file_events, produce

pytestmark = pytest.mark.kafka
N_ROWS = 3_000
PRODUCE = ["produce", "--spec", str(SPEC), "--input", str(SAMPLE), "--adapter", str(ADAPTER)]


@pytest.fixture(scope="module")
def model(spec: Spec, sample_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(spec, sample_features, tmp_path_factory.mktemp("model") / "model")


def other_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the broker's certificate."""
    key, pem = tmp_path / "other.key", tmp_path / "other.pem"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x"]
    subprocess.run(
        [*openssl, "-keyout", str(key), "-out", str(pem)],
        check=True,
        capture_output=True,
    )
    return pem


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong password", "the broker refused the SASL login (wrong user name or password)"),
        ("unknown CA", "the broker's certificate is not signed by a CA this client trusts (ssl_cafile)"),
        # no ssl_cafile: the system's CAs, which did not sign the test broker's certificate
        ("no CA file", "the broker's certificate is not signed by a CA this client trusts (ssl_cafile)"),
    ],
)
@pytest.mark.parametrize("command", ["worker", "produce", "tail"])
def test_a_refused_login_ends_the_command_with_one_line(
    secure_kafka: SecureBroker, model: Path, tmp_path: Path, case: str, reason: str, command: str
) -> None:
    b = secure_kafka
    secret = tmp_path / "password"
    secret.write_text("not-the-password")
    secret.chmod(0o600)
    overrides: dict[str, dict[str, Any]] = {
        "wrong password": {"sasl_plain_password": {"file": str(secret)}},
        "unknown CA": {"ssl_cafile": str(other_ca(tmp_path))},
        "no CA file": {"ssl_cafile": None},
    }
    override = overrides[case]
    config = b.config_file("worker", tmp_path / "kafka.json", **override)
    args = {
        "worker": ["worker", "--spec", str(SPEC), "--model", str(model), "--data-dir", str(tmp_path / "d")],
        "produce": [*PRODUCE, "--topic", "x"],
        "tail": ["tail", "scores"],
    }[command]
    done = cli(*args, "--bootstrap", b.bootstrap, "--kafka-config", str(config), timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: Kafka at {b.bootstrap} refused the connection as user 'worker': {reason}"
    )
    assert "Traceback" not in done.stderr
    assert "not-the-password" not in done.stdout + done.stderr


def test_produce_and_tail_without_their_right_end_with_one_line(
    secure_kafka: SecureBroker, tmp_path: Path
) -> None:
    b = secure_kafka
    topic = f"t{tmp_path.name[-8:]}.noacl"
    asyncio.run(ensure_topics(b.bootstrap, [NewTopic(topic, 1, 1)], b.settings("admin")))
    for user, args, says in (
        (
            "producer",
            [*PRODUCE, "--limit", "10"],
            "Write",
        ),
        ("reader", ["tail", topic, "--from-beginning", "--limit", "1"], "Read"),
    ):
        b.allow(user, ["Describe"], ["--topic", topic])  # it sees the topic, no more
        config = b.config_file(user, tmp_path / f"{user}.json")
        extra = ["--topic", topic] if args[0] == "produce" else []
        done = cli(*args, *extra, "--bootstrap", b.bootstrap, "--kafka-config", str(config), timeout=90)
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        print(f"\n{args[0]} without {says}: {last}")
        assert done.returncode != 0, done.stdout
        assert last.startswith("error: Kafka refused "), done.stderr[-2000:]
        assert "Traceback" not in done.stderr


# A message that goes to the DLQ (not JSON), among the good ones.
BAD = (b"4486494629", b'{"event_id": "not-json",')


def _publish(b: SecureBroker, worker: WorkerProcess) -> set[str]:
    """A bad message, then the first N_ROWS of the sample onto the events topic; the ids to score."""
    codec, items = file_events(SPEC, SAMPLE, N_ROWS, adapter=ADAPTER)
    events = [e for e in items if isinstance(e, Event)]
    b.allow("producer", ["Write", "Describe"], ["--topic", worker.topics["events"]])
    send_raw(b.bootstrap, worker.topics["events"], [BAD], b.settings("producer"))
    asyncio.run(
        produce(
            b.bootstrap,
            worker.topics["events"],
            codec,
            iter(events),
            partitions=4,
            kafka=b.settings("producer"),
        )
    )
    return {e.event_id for e in events if e.type == "transaction"}


def _committed(b: SecureBroker, group: str) -> dict[int, int]:
    """The committed offsets of a consumer group, by partition (those above 0)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=b.bootstrap, **b.settings("admin"))
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
            return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset > 0}
        finally:
            await admin.close()

    return asyncio.run(run())


Grant = tuple[list[str], list[str], bool]  # operations, resource, prefixed: as worker_grants gives them


def _all_but(worker: WorkerProcess, kind: str, refused: str) -> tuple[list[Grant], list[str]]:
    """A worker's grants but those on one topic or group (only Describe on it); that resource."""
    t = worker.topics
    if kind == "topic":  # its grants go to a name that is not the topic
        grants = worker_grants(worker.prefix, {**t, refused: f"{t[refused]}.not"})
        resource = ["--topic", t[refused]]
    else:  # the groups one by one instead of the prefix: all but the refused one
        group = refused.format(app=worker.prefix)
        grants = [g for g in worker_grants(worker.prefix, t) if g[1][0] != "--group"]
        grants += [
            (["Read", "Describe"], ["--group", other], False)
            for other in (worker.prefix, f"{worker.prefix}-worker")
            if other != group
        ]
        resource = ["--group", group]
    return [*grants, (["Describe"], resource, False)], resource


@pytest.mark.parametrize(
    ("missing", "kind", "refused", "says"),
    [
        ("Read", "topic", "events", "Read on the events topic {events}"),
        ("Write", "topic", "scores", "Write on the scores topic {scores}"),
        ("Write", "topic", "dlq", "Write on the DLQ topic {dlq}"),
        ("Read", "group", "{app}-worker", "Read on the consumer group {app}-worker"),  # the batch loop's
        ("Read", "group", "{app}", "Read on the consumer group {app}"),  # faust's
    ],
)
def test_a_missing_acl_stops_the_worker_and_nothing_is_lost_once_granted(
    secure_kafka: SecureBroker, model: Path, tmp_path: Path, missing: str, kind: str, refused: str, says: str
) -> None:
    b = secure_kafka
    config = b.config_file("worker", tmp_path / "kafka.json")
    worker = WorkerProcess(b.bootstrap, model, tmp_path / "data", extra=["--kafka-config", str(config)])
    t = worker.topics
    create_topics(b, worker)
    grants, resource = _all_but(worker, kind, refused)
    for operations, granted, prefixed in grants:
        b.allow("worker", operations, granted, prefixed)
    b.allow("reader", ["Read", "Describe"], ["--topic", t["scores"], "--topic", t["dlq"]])
    scored = _publish(b, worker)

    # Without Write on the DLQ only the bad message is left unhandled (it is first on its partition).
    unhandled = {partition_for(BAD[0], worker.partitions)} if refused == "dlq" else None
    last = _refused(b, worker, unhandled)
    print(f"\n{missing} on {kind} {refused}: {last}")
    assert last.startswith(f"error: Kafka refused {says.format(app=worker.prefix, **t)}: "), last

    b.allow("worker", [missing], resource)
    assert {_event_id(m) for m in _restarted(b, worker, len(scored))} == scored
    _assert_dead_letter(b, worker)


@pytest.mark.parametrize(
    ("refused", "says"),
    [
        ("{app}-__assignor-__leader", "Read on faust's assignor topic"),  # faust hung on it for ever
        ("{app}-records-changelog", "Read on the changelog topic"),  # the restore reads it
    ],
)
def test_a_missing_read_on_a_topic_faust_or_the_restore_reads_stops_the_worker(
    secure_kafka: SecureBroker, model: Path, tmp_path: Path, refused: str, says: str
) -> None:
    b = secure_kafka
    config = b.config_file("worker", tmp_path / "kafka.json")
    worker = WorkerProcess(b.bootstrap, model, tmp_path / "data", extra=["--kafka-config", str(config)])
    t = worker.topics
    topic = refused.format(app=worker.prefix)
    create_topics(b, worker)
    for operations, resource, prefixed in worker_grants(worker.prefix, t):
        if resource == ["--topic", topic]:  # every right on it but Read
            operations = [op for op in operations if op != "Read"]
        b.allow("worker", operations, resource, prefixed)
    b.allow("reader", ["Read", "Describe"], ["--topic", t["scores"], "--topic", t["dlq"]])
    scored = _publish(b, worker)

    last = _refused(b, worker)
    print(f"\nRead on {topic}: {last}")
    assert last.startswith(f"error: Kafka refused {says} {topic}: "), last

    b.allow("worker", ["Read"], ["--topic", topic])
    assert {_event_id(m) for m in _restarted(b, worker, len(scored))} == scored
    _assert_dead_letter(b, worker)


def _assert_dead_letter(b: SecureBroker, worker: WorkerProcess, committed: bool = False) -> None:
    """The bad message of :func:`_publish` is in the DLQ: once if ``committed`` (exactly-once).

    Else at least once: the refused run may have sent it before it stopped.
    """
    dead = read_topic(
        b.bootstrap, worker.topics["dlq"], expect=1, kafka=b.settings("reader"), committed=committed
    )
    letters = [(m.key, m.value) for m in dead]
    assert set(letters) == {BAD}
    assert len(letters) == 1 or not committed, letters


def _refused(b: SecureBroker, worker: WorkerProcess, unhandled: Collection[int] | None = None) -> str:
    """Start the worker, expect it to stop (exit 2); its last line.

    It must have committed no offset on the partitions that hold an event it could not
    handle (``unhandled``; all if None). It may on others: their events were done.
    """
    with pytest.raises(RuntimeError, match="worker exited with 2"):
        worker.start(timeout=90, ready=lambda health: False)
    committed = _committed(b, f"{worker.prefix}-worker")
    assert not [p for p in committed if unhandled is None or p in unhandled], committed
    assert worker.log_path is not None
    worker.proc = None
    return worker.log_path.read_text().strip().splitlines()[-1]


def _restarted(b: SecureBroker, worker: WorkerProcess, expect: int, committed: bool = False) -> list[Any]:
    """Start the worker again; the scores once ``expect`` distinct events have one."""
    worker.start()
    try:
        return read_topic(
            b.bootstrap,
            worker.topics["scores"],
            expect=expect,
            kafka=b.settings("reader"),
            unique=_event_id,
            committed=committed,
        )
    finally:
        worker.stop()


def _event_id(message: object) -> str:
    return str(json.loads(message.value)["event_id"])  # type: ignore[attr-defined]


def test_exactly_once_without_the_transactional_id_acl_stops_and_loses_nothing(
    secure_kafka: SecureBroker, model: Path, tmp_path: Path
) -> None:
    b = secure_kafka
    config = b.config_file("worker", tmp_path / "kafka.json")
    extra = ["--kafka-config", str(config), "--exactly-once"]
    worker = WorkerProcess(b.bootstrap, model, tmp_path / "data", extra=extra)
    t = worker.topics
    create_topics(b, worker)
    grants = worker_grants(worker.prefix, t)
    transactional = [g for g in grants if "--transactional-id" in g[1]]
    assert len(transactional) == 1
    for operations, resource, prefixed in grants:
        if (operations, resource, prefixed) not in transactional:
            b.allow("worker", operations, resource, prefixed)
    b.allow("reader", ["Read", "Describe"], ["--topic", t["scores"], "--topic", t["dlq"]])
    scored = _publish(b, worker)

    last = _refused(b, worker)
    print(f"\ntransactional id: {last}")
    assert last.startswith("error: Kafka refused the transactional id"), last

    b.allow("worker", *transactional[0])
    ids = [_event_id(m) for m in _restarted(b, worker, len(scored), committed=True)]
    assert len(ids) == len(set(ids)) and set(ids) == scored
    _assert_dead_letter(b, worker, committed=True)
