"""The secured broker of the tests: SASL_SSL (SCRAM-SHA-512) with ACLs, users and their rights.

``scripts/kafka`` with ``KAFKA_SECURITY=sasl_ssl`` makes the CA, the broker
certificate and the SCRAM users admin, worker, producer and reader; this module
writes each user's ``--kafka-config`` (the password by reference to its secret
file, never inline) and grants the minimal ACL sets that ``supernova topics`` prints.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from streams.local_kafka import KAFKA_SCRIPT, REPO_DIR, KafkaBroker
from streams.topics import worker_acls
from streams.worker import WorkerConfig

SECURITY = {"KAFKA_SECURITY": "sasl_ssl"}


class SecureBroker(KafkaBroker):
    """A broker that only speaks SASL_SSL, with ACLs; only admin has rights at first."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, env=dict(SECURITY))

    @property
    def ca(self) -> Path:
        """The test CA that signed the broker's certificate."""
        return self.workdir / "tls" / "ca.pem"

    def secret(self, user: str) -> Path:
        """The file that holds ``user``'s password (mode 600)."""
        return self.workdir / "secrets" / user

    def settings(self, user: str, password: str | None = None, cafile: Path | None = None) -> dict[str, Any]:
        """aiokafka keyword arguments for ``user`` (a wrong ``password`` or ``cafile`` if given)."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": user,
            "sasl_plain_password": password or self.secret(user).read_text().strip(),
            "ssl_context": create_ssl_context(cafile=str(cafile or self.ca)),
        }

    def config_file(self, user: str, path: Path, **override: Any) -> Path:
        """A ``--kafka-config`` for ``user``: its password by reference to its secret file (None: no key)."""
        config = {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": user,
            "sasl_plain_password": {"file": str(self.secret(user))},
            "ssl_cafile": str(self.ca),
            **override,
        }
        path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
        path.chmod(0o600)
        return path

    def acl(self, *args: str) -> None:
        """``scripts/kafka acl ARGS`` (Kafka's AclCommand, as admin)."""
        env = dict(
            os.environ,
            KAFKA_PORT=str(self.port),
            KAFKA_CONTROLLER_PORT=str(self.controller_port),
            KAFKA_DATA_DIR=str(self.workdir),
            **self.env,
        )
        done = subprocess.run(
            [str(KAFKA_SCRIPT), "acl", *args],
            env=env,
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"scripts/kafka acl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def allow(self, user: str, operations: list[str], resource: list[str], prefixed: bool = False) -> None:
        """Allow ``operations`` on a resource (e.g. ``["--topic", "events"]``) to ``user``."""
        ops = [arg for op in operations for arg in ("--operation", op)]
        pattern = ["--resource-pattern-type", "prefixed"] if prefixed else []
        self.acl("--add", "--allow-principal", f"User:{user}", *ops, *resource, *pattern)

    def deny_all(self, user: str, operations: list[str], resource: list[str], prefixed: bool = False) -> None:
        """Remove the grant that :meth:`allow` made with the same arguments."""
        ops = [arg for op in operations for arg in ("--operation", op)]
        pattern = ["--resource-pattern-type", "prefixed"] if prefixed else []
        self.acl("--remove", "--force", "--allow-principal", f"User:{user}", *ops, *resource, *pattern)


def worker_grants(app_id: str, topics: dict[str, str]) -> list[tuple[list[str], list[str], bool]]:
    """The rights ``supernova topics`` prints for a worker: (operations, resource, prefixed) each.

    Taken from the same code (streams.topics.worker_acls), so the tests grant what the
    operators are told to grant: no Create (the topics exist), nothing on the cluster.
    """
    cfg = WorkerConfig(
        app_id=app_id, events_topic=topics["events"], scores_topic=topics["scores"], dlq_topic=topics["dlq"]
    )
    return [(list(acl.operations), acl.resource_args(), acl.prefixed) for acl in worker_acls(cfg)]


def grant_worker(broker: SecureBroker, app_id: str, topics: dict[str, str], user: str = "worker") -> None:
    """Grant ``user`` the rights of a worker of ``app_id`` on ``topics``."""
    for operations, resource, prefixed in worker_grants(app_id, topics):
        broker.allow(user, operations, resource, prefixed)
