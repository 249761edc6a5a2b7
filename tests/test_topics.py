"""Topics as operators run them, on the real broker (auto.create.topics.enable=false, scripts/kafka).

Pre-created topics with their own partition counts, a changelog that cannot work as it
is, a missing topic with creation switched off, ``supernova topics --create``, and
partitions added to the events topic while the worker runs. On the secured broker
(SASL_SSL, ACLs, auto-create off): a worker principal with exactly the ACLs that
``supernova topics`` prints.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from secure_kafka import SecureBroker
from streaming import ADAPTER, SAMPLE, SPEC, WorkerProcess, read_topic, train_small_model
from test_bootstrap import _assert_equal_to_replay, _live_events, _oracle
from test_bootstrap import _scores as _bootstrap_scores
from test_history import sample_lines, write_csv

from entities.events import Event
from entities.spec import load_spec
from streams.cli import main
from streams.kafka_io import CHANGELOG_CONFIG
from streams.messages import ScoreMessage
from streams.produce import file_events, produce
from streams.replay import replay

pytestmark = pytest.mark.kafka
N_ROWS = 4_000


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The first rows of the sample: a model trained on them, replay's features and scores."""
    d = tmp_path_factory.mktemp("topics")
    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=d / "train.parquet", limit=N_ROWS)
    model = train_small_model(load_spec(SPEC), d / "train.parquet", d / "model")
    features, scores = d / "features.parquet", d / "scores.parquet"
    replay(
        SPEC, SAMPLE, adapter=ADAPTER, limit=N_ROWS, features_out=features, models=[model], scores_out=scores
    )
    return {"model": model, "features": features, "scores": scores}


def _all_scored(worker: WorkerProcess, rows: int) -> None:
    """Start the worker, publish the first ``rows`` sample rows, and see each transaction scored."""
    events = _events(rows)
    n = sum(e.type == "transaction" for e in events)
    worker.start()
    try:
        _publish(worker.bootstrap, worker.topics["events"], events)
        scores = _scores(worker.bootstrap, worker.topics["scores"], n)
    finally:
        worker.stop()
    assert len({msgspec.json.decode(m.value, type=ScoreMessage).event_id for m in scores}) == n


def _events(limit: int = N_ROWS) -> list[Event]:
    _, items = file_events(SPEC, SAMPLE, limit, adapter=ADAPTER)
    return [e for e in items if isinstance(e, Event)]


def _publish(
    bootstrap: str,
    topic: str,
    events: list[Event],
    partitions: int | None = None,
    kafka: dict[str, Any] | None = None,
) -> None:
    codec, _ = file_events(SPEC, SAMPLE, 1, adapter=ADAPTER)
    asyncio.run(produce(bootstrap, topic, codec, iter(events), partitions=partitions, kafka=kafka))


async def _admin(bootstrap: str, *calls: tuple[str, Any]) -> list[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return [await getattr(admin, name)(arg) for name, arg in calls]
    finally:
        await admin.close()


def _create(bootstrap: str, *topics: NewTopic) -> None:
    """Create topics and wait until the broker's metadata shows them (creation is asynchronous)."""
    (response,) = asyncio.run(_admin(bootstrap, ("create_topics", list(topics))))
    assert all(code == 0 for _, code, _ in response.topic_errors), response
    names = [t.name for t in topics]
    for _ in range(100):
        (described,) = asyncio.run(_admin(bootstrap, ("describe_topics", names)))
        if all(t["error_code"] == 0 and t["partitions"] for t in described):
            return
        time.sleep(0.1)
    raise AssertionError(f"topics {names} never showed in the metadata")


def _describe(bootstrap: str, worker: WorkerProcess) -> tuple[dict[str, int], str]:
    """Partition counts of the worker's topics, and the changelog's cleanup.policy."""
    resource = ConfigResource(ConfigResourceType.TOPIC, worker.topics["changelog"], {"cleanup.policy": None})
    described, configs = asyncio.run(
        _admin(bootstrap, ("describe_topics", list(worker.topics.values())), ("describe_configs", [resource]))
    )
    counts = {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}
    policy = configs[0].resources[0][4][0][1]
    return counts, policy


def _scores(bootstrap: str, topic: str, expect: int, kafka: dict[str, Any] | None = None) -> list[Any]:
    def event_id(m: Any) -> str:
        return msgspec.json.decode(m.value, type=ScoreMessage).event_id

    return read_topic(bootstrap, topic, expect, timeout=120, unique=event_id, kafka=kafka)


def _refused(worker: WorkerProcess) -> str:
    """The worker's output when it must refuse to start (exit code 2)."""
    with pytest.raises(RuntimeError, match="worker exited with 2") as refused:
        worker.start(timeout=60)
    return str(refused.value)


def test_one_partition_scores_topic_next_to_four_events_partitions_scores_equal_replay(
    kafka_broker, replayed: dict[str, Path], tmp_path: Path
) -> None:
    """Scores and dead letters are partitioned by key with their topic's own count; per-entity order holds."""
    bs = kafka_broker.bootstrap
    worker = WorkerProcess(bs, replayed["model"], tmp_path / "data")
    t = worker.topics
    _create(bs, NewTopic(t["events"], 4, 1), NewTopic(t["scores"], 1, 1), NewTopic(t["dlq"], 3, 1))
    events = _events()
    n = sum(e.type == "transaction" for e in events)
    worker.start()
    try:
        _publish(bs, t["events"], events)
        messages = _scores(bs, t["scores"], n)
    finally:
        worker.stop()
    scores = [msgspec.json.decode(m.value, type=ScoreMessage) for m in messages]
    _assert_equal_to_replay(scores, replayed, SPEC, n)
    assert all(m.key == s.entity_id.encode() for m, s in zip(messages, scores, strict=True))
    # Per entity, the scores on the one partition follow the events' order on theirs.
    last: dict[str, int] = {}
    for s in scores:
        assert s.source.offset > last.get(s.entity_id, -1), s
        last[s.entity_id] = s.source.offset
    counts, policy = _describe(bs, worker)
    assert counts == {t["events"]: 4, t["scores"]: 1, t["dlq"]: 3, t["changelog"]: 4}
    assert policy == "compact"


def test_changelog_that_is_not_compacted_is_refused_in_one_line(
    kafka_broker,
    replayed: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bs = kafka_broker.bootstrap
    worker = WorkerProcess(bs, replayed["model"], tmp_path / "data")
    t = worker.topics
    _create(bs, NewTopic(t["events"], 4, 1), NewTopic(t["changelog"], 4, 1))
    out = _refused(worker)
    line = f"error: topic {t['changelog']}: cleanup.policy is 'delete', needs 'compact'"
    assert line in out, out
    assert f"--entity-name {t['changelog']} --add-config cleanup.policy=compact" in out
    assert "Traceback" not in out
    # -v: the same line, and the traceback in the log.
    caplog.set_level(logging.DEBUG)
    argv = ["-v", "worker", "--spec", str(SPEC), "--model", str(replayed["model"]), "--bootstrap", bs]
    argv += ["--app-id", worker.prefix, "--data-dir", str(tmp_path / "v")]
    argv += ["--events-topic", t["events"], "--scores-topic", t["scores"], "--dlq-topic", t["dlq"]]
    assert main(argv) == 2
    assert line in capsys.readouterr().err
    assert any(r.exc_info for r in caplog.records)

    # Fixed as the line says (the same change, through the admin API): every event scored.
    compact = ConfigResource(ConfigResourceType.TOPIC, t["changelog"], {"cleanup.policy": "compact"})
    asyncio.run(_admin(bs, ("alter_configs", [compact])))
    _all_scored(worker, 1_000)


def test_changelog_with_another_partition_count_than_events_is_refused(
    kafka_broker, replayed: dict[str, Path], tmp_path: Path
) -> None:
    bs = kafka_broker.bootstrap
    worker = WorkerProcess(bs, replayed["model"], tmp_path / "data")
    t = worker.topics
    _create(bs, NewTopic(t["events"], 4, 1), NewTopic(t["changelog"], 2, 1, topic_configs=CHANGELOG_CONFIG))
    out = _refused(worker)
    assert f"error: topic {t['changelog']} has 2 partitions, needs 4 (as many as {t['events']})" in out
    assert "supernova bootstrap --app-id NEW" in out
    assert "Traceback" not in out


def test_missing_topic_without_create_rights_then_supernova_topics_create_then_all_scored(
    kafka_broker, replayed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """auto.create.topics.enable=false and --no-create-topics: the worker names the command; it works."""
    bs = kafka_broker.bootstrap
    worker = WorkerProcess(bs, replayed["model"], tmp_path / "data", extra=["--no-create-topics"])
    t = worker.topics
    _create(bs, NewTopic(t["events"], 3, 1))
    out = _refused(worker)
    assert (
        f"error: topic {t['scores']} does not exist (the worker creates no topics); needs 3 partitions" in out
    )
    command = out.split("`")[1]
    assert command.startswith(f"supernova topics --bootstrap {bs} --app-id {worker.prefix} --events-topic")
    assert "Traceback" not in out

    # The command it names, run as the admin, creates the rest: co-partitioned, compacted.
    assert main(command.split()[1:]) == 0
    printed = capsys.readouterr().out
    assert f"{t['changelog']}\tpartitions=3\tcleanup.policy=compact" in printed
    assert f"--operation Read --operation Describe --topic {worker.prefix}-__assignor-__leader" in printed
    assert "--operation Create" not in printed
    counts, policy = _describe(bs, worker)
    assert counts == {t["events"]: 3, t["scores"]: 3, t["dlq"]: 3, t["changelog"]: 3}
    assert policy == "compact"

    worker.partitions = 3
    _all_scored(worker, 1_500)


def test_supernova_topics_acls_are_all_a_least_privilege_worker_needs_on_the_secured_broker(
    secure_kafka: SecureBroker, replayed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SASL_SSL, ACLs, auto-create off: each principal gets exactly the ACLs ``supernova topics`` prints.

    Before the topics exist the worker stops with one line naming ``supernova topics ... --create``
    (whether it may try to create them or not); that command, run as the admin, creates them;
    then the worker (which may not create anything) scores every transaction once, equal to replay.
    """
    b = secure_kafka
    config = str(b.config_file("worker", tmp_path / "worker.json"))
    worker = WorkerProcess(
        b.bootstrap, replayed["model"], tmp_path / "data", extra=["--kafka-config", config]
    )
    t = worker.topics
    app = ["--bootstrap", b.bootstrap, "--app-id", worker.prefix, "--events-topic", t["events"]]
    app += ["--scores-topic", t["scores"], "--dlq-topic", t["dlq"]]
    principals = ["--worker-principal", "User:worker", "--producer-principal", "User:producer"]
    principals += ["--reader-principal", "User:reader"]
    assert main(["topics", *app, *principals]) == 0
    acls = _acl_lines(capsys.readouterr().out, b.bootstrap)
    assert {words[5] for words in acls} == {"User:worker", "User:producer", "User:reader"}
    assert not [words for words in acls if "Create" in words or "--cluster" in words]
    for words in acls:
        b.acl(*words[3:])  # `--add --allow-principal ...`, exactly as printed

    # No topics yet: the worker names the command that creates them, tried to create or not.
    command = ""
    for extra, why in (
        ([], "creating it failed: TopicAuthorizationFailedError"),
        (["--no-create-topics"], "the worker creates no topics"),
    ):
        worker.extra = ["--kafka-config", config, *extra]
        out = _refused(worker)
        (line,) = [x for x in out.splitlines() if x.startswith("error:")]
        assert line.startswith(f"error: topic {t['events']} does not exist ({why}"), line
        command = line.split("`")[1]
        assert command == shlex.join(["supernova", "topics", *app, "--partitions", "4", "--create"]), line
        assert "Traceback" not in out

    # Run by a principal that may not even see the topics, it says an admin must run it.
    reader = str(b.config_file("reader", tmp_path / "reader.json"))
    capsys.readouterr()
    assert main([*shlex.split(command)[1:], "--kafka-config", reader]) != 0
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot describe it" in said and "an admin (Create and Describe rights) creates" in said, said

    # The command it names, as the admin: it creates the topics and prints the same ACLs.
    admin = str(b.config_file("admin", tmp_path / "admin.json"))
    assert main([*shlex.split(command)[1:], "--kafka-config", admin, *principals]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"# topics of app id {worker.prefix} (exist, checked)")
    assert f"{t['changelog']}\tpartitions=4\tcleanup.policy=compact" in printed
    assert _acl_lines(printed, b.bootstrap) == acls

    worker.extra = ["--kafka-config", config]  # may create topics: it needs to create none
    events = _events()
    n = sum(e.type == "transaction" for e in events)
    worker.start()
    try:
        _publish(b.bootstrap, t["events"], events, kafka=b.settings("producer"))
        messages = _scores(b.bootstrap, t["scores"], n, kafka=b.settings("reader"))
    finally:
        worker.stop()
    _assert_equal_to_replay(
        [msgspec.json.decode(m.value, type=ScoreMessage) for m in messages], replayed, SPEC, n
    )


def _acl_lines(printed: str, bootstrap: str) -> list[list[str]]:
    """The ``kafka-acls.sh`` lines of ``supernova topics``' output, split into words."""
    lines = [shlex.split(x) for x in printed.splitlines() if x.startswith("kafka-acls.sh ")]
    assert lines and all(
        w[1:5] == ["--bootstrap-server", bootstrap, "--add", "--allow-principal"] for w in lines
    )
    return lines


def test_partitions_added_while_running_stop_the_worker_then_a_new_app_id_scores_like_replay(
    kafka_broker, tmp_path: Path
) -> None:
    """4 -> 8 partitions: a stop within 60 s, in one line; then the documented way on.

    The way on (docs/operations.md): history files holding every event up to a cut (here
    the first 3,000 rows, all on the topic), the new app id's group set to the cut, then
    ``supernova bootstrap --force`` into the new app id and workers on it. The live events
    after the cut (the next 1,500 rows) must be scored once each, equal to
    ``replay --warmup <history> --input <live>``.
    """
    bs = kafka_broker.bootstrap
    header, lines = sample_lines(n=4_500)
    history = write_csv(tmp_path / "history.csv.gz", header, lines[:3_000])
    live = write_csv(tmp_path / "live.csv.gz", header, lines[3_000:])
    oracle = _oracle(SPEC, history, live, tmp_path / "oracle")
    old = WorkerProcess(bs, oracle["model"], tmp_path / "old")
    t = old.topics
    events = _live_events(history)
    first, second = events[:1_500], events[1_500:]
    old.start()
    try:
        _publish(bs, t["events"], first, partitions=4)
        _scores(bs, t["scores"], sum(e.type == "transaction" for e in first))
        asyncio.run(_admin(bs, ("create_partitions", {t["events"]: NewPartitions(8)})))
        added = time.monotonic()
        _publish(bs, t["events"], second)  # a fresh producer: over 8 partitions
        assert old.proc is not None
        rc = old.proc.wait(timeout=90)
        took = time.monotonic() - added
    finally:
        old.stop()
    out = old.log_tail(200)
    print(f"\nstopped {took:.1f} s after the partitions were added")
    assert rc == 2, out
    assert took < 60, took
    assert f"error: topic {t['events']} went from 4 to 8 partitions while the worker ran" in out, out
    assert "supernova bootstrap --app-id NEW" in out
    assert "Traceback" not in out
    scores = [msgspec.json.decode(m.value, type=ScoreMessage) for m in read_topic(bs, t["scores"], 10**9, 5)]
    assert all(s.source.partition < 4 for s in scores)  # nothing of the new partitions was scored
    # A restart on the same app id is refused the same way (its changelog has 4 partitions).
    assert f"error: topic {t['changelog']} has 4 partitions, needs 8" in _refused(old)

    # The way on: the new app id's group at the cut, the history bootstrapped, workers on it.
    new = f"{old.prefix}n"
    asyncio.run(_commit_end_offsets(bs, f"{new}-worker", t["events"]))
    argv = ["bootstrap", "--spec", str(SPEC), "--input", str(history), "--adapter", str(ADAPTER)]
    assert main([*argv, "--bootstrap", bs, "--app-id", new, "--events-topic", t["events"], "--force"]) == 0
    worker = WorkerProcess(bs, oracle["model"], tmp_path / "new", prefix=old.prefix, partitions=8)
    worker.extra = ["--app-id", new, "--scores-topic", f"{new}.scores", "--dlq-topic", f"{new}.events.dlq"]
    live_events = _live_events(live)
    n = sum(e.type == "transaction" for e in live_events)
    worker.start()
    try:
        _publish(bs, t["events"], live_events)
        after = _bootstrap_scores(bs, f"{new}.scores", n)
    finally:
        worker.stop()
    _assert_equal_to_replay(after, oracle, SPEC, n)


async def _commit_end_offsets(bootstrap: str, group: str, topic: str) -> None:
    """Set ``group``'s committed offsets to the end of every partition of ``topic`` (the cut)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # the partitions just added
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert len(tps) == 8
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        await consumer.commit({tp: end[tp] for tp in tps})
    finally:
        await consumer.stop()


def test_topics_create_asks_for_the_replication_factor_given(
    kafka_broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """A single broker cannot hold 2 replicas: the refusal proves the factor reached Kafka, in one line."""
    app = f"rf{uuid.uuid4().hex[:8]}"
    args = [*_topics_args(kafka_broker.bootstrap, app), "--create"]
    assert main([*args, "--replication-factor", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: topic {app}.events does not exist"), err
    assert "creating it failed: InvalidReplicationFactorError" in err[0], err
    assert main([*args, "--replication-factor", "1"]) == 0


def test_topics_create_prints_the_partitions_the_topics_have(
    kafka_broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scores and dead letters may have any count: what --create checked is printed, not the plan."""
    app = f"pc{uuid.uuid4().hex[:8]}"
    _create(kafka_broker.bootstrap, NewTopic(f"{app}.events", 8, 1), NewTopic(f"{app}.scores", 3, 1))
    args = _topics_args(kafka_broker.bootstrap, app)
    assert main(args) == 0  # no broker asked: the plan for 4 partitions
    assert f"{app}.events\tpartitions=4\t" in capsys.readouterr().out
    assert main([*args, "--create"]) == 0
    printed = capsys.readouterr().out
    counts = dict(line.split("\t")[:2] for line in printed.splitlines() if line.startswith(f"{app}"))
    assert counts == {
        f"{app}.events": "partitions=8",
        f"{app}.scores": "partitions=3",  # was there, with 3
        f"{app}.dlq": "partitions=8",  # made like events
        f"{app}-records-changelog": "partitions=8",
        f"{app}-__assignor-__leader": "partitions=1",
    }


def _topics_args(bootstrap: str, app: str) -> list[str]:
    """``supernova topics`` for app id ``app``, its topics named after it."""
    names = [
        "--events-topic",
        f"{app}.events",
        "--scores-topic",
        f"{app}.scores",
        "--dlq-topic",
        f"{app}.dlq",
    ]
    return ["topics", "--bootstrap", bootstrap, "--app-id", app, *names]


def test_an_events_topic_the_first_look_missed_is_the_count_the_changelog_is_checked_against(
    kafka_broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata that lags (or a concurrent creator): the creation of events finds it exists.

    The changelog, made with the guessed 4 partitions, must then be checked against the
    events topic's real 8, and refused, not reported as matching the guess.
    """
    from streams import topics
    from streams.worker import WorkerConfig

    app = f"lag{uuid.uuid4().hex[:8]}"
    _create(kafka_broker.bootstrap, NewTopic(f"{app}.events", 8, 1))
    real = topics._partition_counts
    looks = []

    async def first_look_misses(admin: Any, cfg: Any) -> dict[str, int]:
        looks.append(1)
        return {} if len(looks) == 1 else await real(admin, cfg)

    monkeypatch.setattr(topics, "_partition_counts", first_look_misses)
    cfg = WorkerConfig(
        bootstrap=kafka_broker.bootstrap,
        app_id=app,
        events_topic=f"{app}.events",
        scores_topic=f"{app}.scores",
        dlq_topic=f"{app}.dlq",
        partitions=4,
    )
    with pytest.raises(topics.TopicError, match=f"{app}-records-changelog has 4 partitions, needs 8"):
        asyncio.run(topics.check_topics(cfg, create=True))
