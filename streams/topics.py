"""The topics an app id needs, checked before the worker consumes anything.

An app id needs four topics of its own: the events topic (any partition count, fixed for the
life of the app id), the scores topic and the DLQ (any partition count: messages are
keyed by entity id and partitioned by murmur2 of the key, as the Java client does),
and the compacted ``<app>-records-changelog`` with exactly as many partitions as the
events topic (an entity's record lives with the events partition its key hashes to);
and faust's one-partition assignor topic, which faust may not create itself
(streams.app): that would need the Create right at every start.

:func:`check_topics` creates what is missing (when allowed) and refuses what cannot
work, with a :class:`TopicError` of one line: the topic, what was found, what is
needed and the command that fixes it. ``supernova topics`` prints the same needs,
with the minimal ACLs per principal (:func:`worker_acls` and the others, which the
tests grant too), and creates the topics as an admin.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAuthorizationFailedError, for_code

from streams.kafka_io import CHANGELOG_CONFIG

if TYPE_CHECKING:  # streams.worker imports this module
    from streams.worker import WorkerConfig

log = logging.getLogger(__name__)
UNKNOWN_TOPIC = 3
TOPIC_EXISTS = 36
# How often the worker's consumer refreshes metadata: partitions added to the events
# topic are seen (and the worker stops) within this, well inside the 60 s promised.
METADATA_MAX_AGE_MS = 30_000


class TopicError(Exception):
    """A topic is missing or cannot work as it is: one line with the fix."""


@dataclass(frozen=True)
class TopicNeed:
    """One topic of an app id: its role, name, partitions and configs."""

    role: str
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class TopicLayout:
    """Partition counts of an app id's topics, as found (or created)."""

    events: int
    scores: int
    dlq: int
    changelog: int


def topic_needs(cfg: WorkerConfig, partitions: int) -> list[TopicNeed]:
    """The topics of ``cfg``'s app id for an events topic of ``partitions`` partitions."""
    return [
        TopicNeed(
            "events", cfg.events_topic, partitions, note="keyed by entity id, murmur2; fixed for the app id"
        ),
        TopicNeed("scores", cfg.scores_topic, partitions, note="any partition count: keyed by entity id"),
        TopicNeed("dlq", cfg.dlq_topic, partitions, note="any partition count: keyed by entity id"),
        TopicNeed(
            "changelog",
            cfg.changelog_topic,
            partitions,
            dict(CHANGELOG_CONFIG),
            note="as many partitions as events; compacted: the latest record of each entity is kept "
            "for ever (no time or size retention)",
        ),
        TopicNeed("faust", faust_leader_topic(cfg), 1, note="faust's assignor topic (faust creates none)"),
    ]


def faust_leader_topic(cfg: WorkerConfig) -> str:
    """The topic faust's leader assignor subscribes to (streams.app lets faust create no topics)."""
    return f"{cfg.app_id}-__assignor-__leader"


@dataclass(frozen=True)
class Acl:
    """One grant to a principal: ``operations`` on the named resources of one type."""

    operations: tuple[str, ...]
    resource: str  # "topic", "group" or "transactional-id", as kafka-acls.sh spells them
    names: tuple[str, ...]
    prefixed: bool = False
    note: str = ""  # why the grant is there, when that is not obvious

    def resource_args(self) -> list[str]:
        """The resources as ``kafka-acls.sh`` arguments (``--topic a --topic b``)."""
        return [arg for name in self.names for arg in (f"--{self.resource}", name)]

    def args(self) -> list[str]:
        """The grant as ``kafka-acls.sh`` arguments after ``--allow-principal P``."""
        ops = [arg for op in self.operations for arg in ("--operation", op)]
        return ops + self.resource_args() + ["--resource-pattern-type", "prefixed"] * self.prefixed


def worker_acls(cfg: WorkerConfig) -> list[Acl]:
    """The minimal rights of ``cfg``'s workers once the topics exist: no Create, nothing on the cluster.

    The worker's topic check needs Describe (and DescribeConfigs on the changelog to see
    that it is compacted); Write on a topic suffices for idempotent and transactional producers.
    """
    return [
        Acl(("Read", "Describe"), "topic", (cfg.events_topic,)),
        Acl(("Write", "Describe"), "topic", (cfg.scores_topic, cfg.dlq_topic)),
        Acl(("Read", "Write", "Describe", "DescribeConfigs"), "topic", (cfg.changelog_topic,)),
        Acl(("Read", "Describe"), "group", (cfg.group_id, cfg.app_id)),
        Acl(
            ("Read", "Describe"),
            "topic",
            (faust_leader_topic(cfg),),
            note="faust's assignor topic (faust consumes it; it creates no topics: no Create right needed)",
        ),
        Acl(
            ("Write", "Describe"),
            "transactional-id",
            (f"{cfg.app_id}-",),
            prefixed=True,
            note="--exactly-once only: the worker's transactional ids",
        ),
    ]


def producer_acls(cfg: WorkerConfig) -> list[Acl]:
    """The rights of a producer of events."""
    return [Acl(("Write", "Describe"), "topic", (cfg.events_topic,))]


def reader_acls(cfg: WorkerConfig, group: str) -> list[Acl]:
    """The rights of a reader of scores in consumer group ``group``."""
    return [Acl(("Read", "Describe"), "topic", (cfg.scores_topic,)), Acl(("Read",), "group", (group,))]


def topics_command(cfg: WorkerConfig, partitions: int | None = None) -> str:
    """The ``supernova topics ... --create`` line that creates ``cfg``'s topics."""
    words = ["supernova", "topics", "--bootstrap", cfg.bootstrap, "--app-id", cfg.app_id]
    for flag, value, default in (
        ("--events-topic", cfg.events_topic, "events"),
        ("--scores-topic", cfg.scores_topic, "scores"),
        ("--dlq-topic", cfg.dlq_topic, "events.dlq"),
    ):
        if value != default:
            words += [flag, value]
    if partitions is not None:
        words += ["--partitions", str(partitions)]
    return shlex.join([*words, "--create"])


async def check_topics(cfg: WorkerConfig, create: bool = True) -> TopicLayout:
    """Check (and, with ``create``, create what is missing of) the topics of ``cfg``.

    Raises TopicError when a topic is missing and cannot be created, when the
    changelog's partition count differs from the events topic's, or when the
    changelog is not compacted.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap, **cfg.kafka)
    await admin.start()
    try:
        found = await _partition_counts(admin, cfg)
        events = found.get(cfg.events_topic, cfg.partitions)
        missing = [t for t in topic_needs(cfg, events) if t.name not in found]
        if missing:
            if not create:
                raise TopicError(_missing_line(cfg, missing[0], events, "the worker creates no topics"))
            await _create(admin, cfg, missing, events)
            found = await _wait_for(admin, cfg, [t.name for t in missing])
            # An events topic made meanwhile (or not yet in the metadata) has the count that
            # counts: the changelog is checked against it, not against the guess made above.
            events = found[cfg.events_topic]
        changelog = found[cfg.changelog_topic]
        if changelog != events:
            raise TopicError(_split_line(cfg, events, changelog))
        policy = await _cleanup_policy(admin, cfg.changelog_topic)
        if policy is not None and "compact" not in policy.split(","):
            raise TopicError(
                f"topic {cfg.changelog_topic}: cleanup.policy is {policy!r}, needs 'compact' "
                "(otherwise retention deletes records that have no newer version): "
                f"kafka-configs.sh --bootstrap-server {cfg.bootstrap} --alter --entity-type topics "
                f"--entity-name {cfg.changelog_topic} --add-config cleanup.policy=compact"
            )
        return TopicLayout(events, found[cfg.scores_topic], found[cfg.dlq_topic], changelog)
    finally:
        await admin.close()


def partitions_changed_line(cfg: WorkerConfig, before: int, now: int) -> str:
    """Why the worker stops when the events topic's partition count changed while it ran."""
    return (
        f"topic {cfg.events_topic} went from {before} to {now} partitions while the worker ran: "
        f"entities whose key now hashes to another partition would be split from their history "
        f"(their records stay on the {before} partitions of {cfg.changelog_topic}), so the worker "
        "stops before scoring any of them. To go on, rebuild the records for the new partition count "
        "under a new app id from history files that hold every event up to a cut, with the group "
        "NEW-worker's offsets set to that cut: `supernova bootstrap --app-id NEW --force --events-topic "
        f"{cfg.events_topic} --spec S --input HISTORY ...`, then start the workers with --app-id NEW "
        "(docs/operations.md#topics-and-acls)"
    )


def _split_line(cfg: WorkerConfig, events: int, changelog: int) -> str:
    return (
        f"topic {cfg.changelog_topic} has {changelog} partitions, needs {events} (as many as "
        f"{cfg.events_topic}): records would be split from their entities' events. Rebuild them under a "
        f"new app id: `supernova bootstrap --app-id NEW --events-topic {cfg.events_topic} --spec S "
        "--input HISTORY ...` (docs/going-live.md); or, if the changelog holds nothing yet, delete it: "
        f"kafka-topics.sh --bootstrap-server {cfg.bootstrap} --delete --topic {cfg.changelog_topic}"
    )


def _missing_line(cfg: WorkerConfig, need: TopicNeed, events: int, why: str) -> str:
    return (
        f"topic {need.name} does not exist ({why}); needs {need.partitions} partition"
        + "s" * (need.partitions != 1)
        + (f" with {_configs(need.configs)}" if need.configs else "")
        + f": create the app's topics as an admin with `{topics_command(cfg, events)}`"
    )


def _configs(configs: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in configs.items())


async def _partition_counts(admin: AIOKafkaAdminClient, cfg: WorkerConfig) -> dict[str, int]:
    """Partition counts of the app's topics that exist."""
    names = [cfg.events_topic, cfg.scores_topic, cfg.dlq_topic, cfg.changelog_topic, faust_leader_topic(cfg)]
    described = await admin.describe_topics(names)
    found = {}
    for t in described:
        if t["error_code"] == 0 and t["partitions"]:
            found[t["topic"]] = len(t["partitions"])
        elif t["error_code"] not in (0, UNKNOWN_TOPIC):
            error = for_code(t["error_code"])
            # Kafka answers so for a topic that does not exist too, when one may not know.
            raise TopicError(
                f"topic {t['topic']}: cannot describe it ({error.__name__}): grant Describe on it; "
                f"if it does not exist yet, an admin (Create and Describe rights) creates the "
                f"app's topics with `{topics_command(cfg)}`"
            )
    return found


async def _create(
    admin: AIOKafkaAdminClient, cfg: WorkerConfig, missing: list[TopicNeed], events: int
) -> None:
    response = await admin.create_topics(
        [NewTopic(t.name, t.partitions, cfg.replication_factor, topic_configs=t.configs) for t in missing]
    )
    # A concurrent creator is fine (the check follows). Of several refusals, name the first
    # topic in the app's order, not the broker's, so the line is the same at every start.
    failed = {name: (code, message) for name, code, message in response.topic_errors}
    for need in missing:
        code, message = failed.get(need.name, (0, None))
        if code not in (0, TOPIC_EXISTS):
            why = f"creating it failed: {for_code(code).__name__}" + (f", {message}" if message else "")
            raise TopicError(_missing_line(cfg, need, events, why))
    for t in missing:
        log.info(
            "created topic %s (%d partitions%s)",
            t.name,
            t.partitions,
            f", {_configs(t.configs)}" * bool(t.configs),
        )


async def _wait_for(admin: AIOKafkaAdminClient, cfg: WorkerConfig, names: list[str]) -> dict[str, int]:
    """Partition counts once the metadata shows the created topics."""
    for _ in range(50):
        found = await _partition_counts(admin, cfg)
        if all(n in found for n in names):
            return found
        await asyncio.sleep(0.1)
    raise TopicError(f"topics {', '.join(names)} were created but do not show in the metadata after 5 s")


async def _cleanup_policy(admin: AIOKafkaAdminClient, topic: str) -> str | None:
    """The topic's cleanup.policy; None (and a warning) for a principal without DescribeConfigs."""
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"cleanup.policy": None})
    responses: list[Any] = await admin.describe_configs([resource])
    for response in responses:
        for code, _message, _type, name, entries in response.resources:
            if name != topic:
                continue
            if code == TopicAuthorizationFailedError.errno:
                log.warning("cannot check that %s is compacted: grant DescribeConfigs on it", topic)
                return None
            if code:
                raise TopicError(f"topic {topic}: cannot read its configs ({for_code(code).__name__})")
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    return str(entry[1])
    return "delete"  # Kafka's default
