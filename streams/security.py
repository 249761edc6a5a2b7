"""What the worker shows and to whom: personal data, the HTTP token, Kafka secrets.

- :func:`shown_fixed`: an entity's fixed attributes as ``/entities`` shows them,
  without the fields the spec marks ``pii`` (unless the worker runs ``--expose-pii``).
- :func:`http_token` / :func:`check_bind` / :func:`authorized`: ``/entities`` needs a
  bearer token off loopback; a worker bound elsewhere without one refuses to start.
- :func:`load_kafka_config`: the ``--kafka-config`` JSON, refused if anyone may read
  it, with secrets taken from the environment or from files rather than written in it.
- :func:`check_login` / :func:`check_reads` / :func:`refusal`: a refused login,
  group, topic Read or other ACL becomes one line that names the right to grant.

Every refusal is a :class:`SecurityError` whose message names the setting and what
to do; it never carries a secret's value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class SecurityError(ValueError):
    """A setting refused for safety: the message says which and what to do."""


# --- personal data -------------------------------------------------------------------


def shown_fixed(fixed: Mapping[str, Any], pii: Collection[str]) -> dict[str, Any]:
    """``fixed`` (JSON-able values) without the ``pii`` fields, and the names withheld if any."""
    shown = {k: v if isinstance(v, int | float) else str(v) for k, v in fixed.items() if k not in pii}
    withheld = sorted(k for k in fixed if k in pii)
    return {"fixed": shown, **({"withheld_pii": withheld} if withheld else {})}


# --- HTTP ----------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def http_token(path: Path | None) -> str | None:
    """The bearer token in ``path`` (its first line), refused if empty or world-readable."""
    if path is None:
        return None
    _refuse_world_readable(path, "--http-token-file")
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise SecurityError(f"--http-token-file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise SecurityError(f"--http-token-file {path}: the token must be at least 16 characters")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve ``/entities`` beyond loopback without a token."""
    if token is None and not is_loopback(host):
        raise SecurityError(
            f"--http-host {host} is not a loopback address: /entities would show records to anyone "
            "who reaches the port; give --http-token-file FILE (or bind 127.0.0.1)"
        )


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries the bearer token (always, without a token)."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


# --- Kafka client settings -----------------------------------------------------------


def secured(kafka: Mapping[str, Any]) -> bool:
    """Whether Kafka client settings connect by anything but PLAINTEXT."""
    return kafka.get("security_protocol", "PLAINTEXT") != "PLAINTEXT"


def load_kafka_config(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``--kafka-config`` JSON object, secrets resolved.

    A value may be ``{"env": "NAME"}`` (the environment variable NAME) or
    ``{"file": "/run/secrets/x"}`` (that file's content, trailing newline removed),
    so that the file itself need hold no password. The file is refused if anyone
    but its owner and group may read it, and so is a secret file.
    """
    env = os.environ if environ is None else environ
    _refuse_world_readable(path, "--kafka-config")
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise SecurityError(f"--kafka-config {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SecurityError(f"--kafka-config {path}: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise SecurityError(f"--kafka-config {path}: expected a JSON object of client settings")
    unknown = sorted(set(config) - kafka_settings())
    if unknown:
        raise SecurityError(
            f"--kafka-config {path}: unknown setting {unknown[0]!r}: the settings are aiokafka's "
            "keyword arguments (security_protocol, sasl_mechanism, sasl_plain_username, "
            "sasl_plain_password, ssl_cafile, ...), not Java client properties"
        )
    return {key: _resolve(key, value, env) for key, value in config.items()}


def kafka_settings() -> set[str]:
    """What ``--kafka-config`` may set: the producer's and consumer's keyword arguments, and CA files."""
    import inspect

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    names = {"ssl_cafile", "ssl_certfile", "ssl_keyfile"}  # made into ssl_context
    for client in (AIOKafkaProducer, AIOKafkaConsumer):
        names |= {
            p.name
            for p in inspect.signature(client).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        }
    return names - {"loop", "bootstrap_servers"}


def _resolve(key: str, value: Any, env: Mapping[str, str]) -> Any:
    if not isinstance(value, dict):
        return value
    if set(value) == {"env"}:
        name = value["env"]
        if name not in env:
            raise SecurityError(
                f"--kafka-config: {key} refers to the environment variable {name}, which is not set"
            )
        return env[name]
    if set(value) == {"file"}:
        secret = Path(value["file"])
        _refuse_world_readable(secret, f"--kafka-config: {key}'s file")
        try:
            return secret.read_text().rstrip("\r\n")
        except OSError as exc:
            raise SecurityError(f"--kafka-config: {key}'s file {secret}: {exc.strerror}") from None
    raise SecurityError(f'--kafka-config: {key} must be a value, {{"env": NAME}} or {{"file": PATH}}')


def _refuse_world_readable(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise SecurityError(f"{what} {path}: {exc.strerror}") from None
    if mode & stat.S_IROTH:
        raise SecurityError(f"{what} {path} is readable by every user: chmod o-r {path} (it holds secrets)")


# --- Kafka refusals ------------------------------------------------------------------

# aiokafka says why a login failed only in an ERROR log line; the exception says
# "Unable to bootstrap". These words in that line name the reason.
_LOGIN_REASONS = {
    "SaslAuthenticationFailed": "the broker refused the SASL login (wrong user name or password)",
    "CERTIFICATE_VERIFY_FAILED": "the broker's certificate is not signed by a CA this client trusts "
    "(ssl_cafile)",
    "IP address mismatch": "the broker's certificate does not name the address connected to",
    "Hostname mismatch": "the broker's certificate does not name the host connected to",
}


class _ErrorLines(logging.Handler):
    """Keeps the ERROR lines aiokafka logs while a login is tried."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def check_login(bootstrap: str, kafka: Mapping[str, Any]) -> None:
    """Connect once with ``kafka`` settings; a refused login or TLS handshake is a SecurityError.

    Run before anything else starts, so that a wrong password or an unknown CA ends
    the command with one line that says which, instead of a traceback from deep in
    a client.
    """
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaConnectionError

    errors = _ErrorLines()
    aiokafka_log = logging.getLogger("aiokafka")
    aiokafka_log.addHandler(errors)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **kafka)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        said = " ".join(errors.lines)
        reason = next((why for key, why in _LOGIN_REASONS.items() if key in said), None)
        user = kafka.get("sasl_plain_username")
        who = f" as user {user!r}" if user else ""
        if reason is None:  # no refusal seen: nobody answered, or not in this protocol
            raise SecurityError(
                f"could not connect to Kafka at {bootstrap}{who}: {exc} (is the address right, and "
                "are security_protocol and sasl_mechanism those of that listener?)"
            ) from None
        raise SecurityError(f"Kafka at {bootstrap} refused the connection{who}: {reason}") from None
    finally:
        aiokafka_log.removeHandler(errors)
        with contextlib.suppress(Exception):
            await admin.close()


# A commit no group can accept (no member has this generation): Kafka checks Read on the
# group before anything else, so the answer says whether the right is there and nothing
# is committed either way.
_PROBE_GENERATION = 2**31 - 1
_PROBE_MEMBER = "supernova-acl-probe"


async def check_reads(
    bootstrap: str, kafka: Mapping[str, Any], groups: Collection[str], topics: Collection[str], events: str
) -> None:
    """Raise the refusal of Read on the first of ``groups``, else on any of ``topics``.

    ``events``: the topic of the groups' offsets (a probe commit on it commits nothing).

    Run before faust starts, with one client: faust's consumer meets a refused group
    while it joins, and its fetcher a refused topic (its assignor topic, the events)
    after it starts; either way it logs and then waits for ever, SIGTERM included.
    ``GroupAuthorizationFailedError`` names the group; ``TopicAuthorizationFailedError``
    the set of refused topics.
    """
    from aiokafka.errors import TopicAuthorizationFailedError

    from streams.changelog_reader import ChangelogReader  # it imports this module

    refused = set()
    async with ChangelogReader(bootstrap, kafka) as reader:
        for group in groups:
            await _check_group_read(reader.client, group, events)
        for topic in topics:
            try:
                await reader.check_read(topic)
            except TopicAuthorizationFailedError:
                refused.add(topic)
    if refused:
        raise TopicAuthorizationFailedError(refused)


async def _check_group_read(client: Any, group: str, topic: str) -> None:
    """Raise ``GroupAuthorizationFailedError`` if Kafka refuses Read on ``group``."""
    from aiokafka.client import ConnectionGroup
    from aiokafka.errors import GroupAuthorizationFailedError
    from aiokafka.protocol.commit import OffsetCommitRequest

    node = await _coordinator(client, group)
    request = OffsetCommitRequest(group, _PROBE_GENERATION, _PROBE_MEMBER, -1, [(topic, [(0, 0, "")])])
    response = await client.send(node, request, group=ConnectionGroup.COORDINATION)
    codes = {code for _, partitions in response.topics for _, code in partitions}
    if GroupAuthorizationFailedError.errno in codes:
        raise GroupAuthorizationFailedError(group)


async def _coordinator(client: Any, group: str, tries: int = 60) -> int:
    """The group's coordinator node; a broker that just started has none for a few seconds."""
    from aiokafka.client import CoordinationType
    from aiokafka.errors import GroupAuthorizationFailedError, KafkaError

    for attempt in range(tries):
        try:
            return int(await client.coordinator_lookup(CoordinationType.GROUP, group))
        except GroupAuthorizationFailedError:  # not even Describe on the group
            raise GroupAuthorizationFailedError(group) from None
        except KafkaError as exc:
            if not exc.retriable or attempt == tries - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def client_settings(kafka: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``kafka`` that the low-level client takes (producer or consumer ones dropped)."""
    keep = {
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "sasl_oauth_token_provider",
        "client_id",
        "request_timeout_ms",
        "connections_max_idle_ms",
        "api_version",
    }
    return {k: v for k, v in kafka.items() if k in keep}


def refusal(exc: BaseException, topics: Mapping[str, str] | None = None) -> str | None:
    """One line naming what Kafka refused (an ACL), or None if ``exc`` is no refusal.

    ``topics``: what right each topic needs (``{"events.dlq": "Write on the DLQ topic"}``),
    so that a refused topic is named with the right to grant.
    """
    from aiokafka.errors import (
        ClusterAuthorizationFailedError,
        GroupAuthorizationFailedError,
        TopicAuthorizationFailedError,
        TransactionalIdAuthorizationFailed,
    )

    what = {
        TopicAuthorizationFailedError: "access to a topic (Read on the events topic, or Write on scores, "
        "DLQ or changelog)",
        GroupAuthorizationFailedError: "access to the consumer group (Read on groups prefixed "
        "with the app id)",
        TransactionalIdAuthorizationFailed: "the transactional id (Write on transactional ids prefixed "
        "with the app id)",
        ClusterAuthorizationFailedError: "a cluster operation (idempotent writes need Write on the topics)",
    }
    if isinstance(exc, TopicAuthorizationFailedError) and topics:
        refused = exc.args[0] if exc.args else None  # a topic, or a set of them
        names = sorted(refused) if isinstance(refused, set | list | tuple) else [refused]
        named = [f"{topics[name]} {name}" for name in map(str, names) if name in topics]
        if named:
            what[TopicAuthorizationFailedError] = " and ".join(named)
    if isinstance(exc, GroupAuthorizationFailedError) and exc.args and isinstance(exc.args[0], str):
        what[GroupAuthorizationFailedError] = f"Read on the consumer group {exc.args[0]}"
    for kind, needs in what.items():
        if isinstance(exc, kind):
            return f"Kafka refused {needs}: {exc}; grant it (docs/operations.md#security) and restart"
    return None
