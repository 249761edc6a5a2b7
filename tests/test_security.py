"""Personal data, the HTTP token and Kafka secrets, without a broker (issue 20).

The worker on the real broker (token, 401, PII absent from /entities and from
scores) is in ``test_security_worker.py``.
"""

from __future__ import annotations

import datetime as dt
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from streaming import REPO, SPEC

from entities.spec import Derived, Fixed, Repeated, Scored, Spec, SpecError, days
from streams.messages import ScoreMessage
from streams.security import (
    SecurityError,
    authorized,
    check_bind,
    http_token,
    is_loopback,
    load_kafka_config,
    refusal,
    shown_fixed,
)
from streams.worker import WorkerConfig

TOKEN = "s3cret-token-0123456789"


def _secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --- the spec ------------------------------------------------------------------------


def test_fraud_spec_marks_names_street_and_birth_date_as_pii(spec: Spec) -> None:
    assert spec.fixed.pii == {"first", "last", "street", "dob"}


def test_marking_pii_changes_neither_the_layout_nor_the_spec_hash(spec: Spec) -> None:
    # The values of main before the marking: stored records stay readable, models stay bound.
    assert spec.layout_hash() == "f75d7c08708fb19e"
    assert spec.hash() == "8a8785d6c24f8e91"


def test_pii_naming_a_field_that_does_not_exist_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"Fixed\('profile'\): pii names \['email'\], not fields of it"):
        Fixed("profile", {"first": str}, pii={"email"})


def test_pii_as_a_bare_string_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="pii must be a set of field names"):
        Fixed("profile", {"dob": str}, pii="dob")


def test_fixed_without_pii_still_works_positionally() -> None:
    assert Fixed("signup", {"country": str}).pii == frozenset()


def test_shown_fixed_leaves_pii_out_and_names_what_it_withheld() -> None:
    fixed = {"first": "Tina", "city": "Miamisburg", "dob": dt.date(1973, 8, 7), "city_pop": 36784}
    assert shown_fixed(fixed, {"first", "last", "dob"}) == {
        "fixed": {"city": "Miamisburg", "city_pop": 36784},
        "withheld_pii": ["dob", "first"],
    }
    assert shown_fixed(fixed, set())["fixed"]["dob"] == "1973-08-07"


def test_score_messages_have_no_field_that_could_carry_fixed_attributes() -> None:
    # Scores carry ids, the model, the score, features and explanations: numbers only
    # beside the ids. A PII field could only leak through a str-valued field here.
    text_fields = {
        name
        for name, kind in ScoreMessage.__annotations__.items()
        if "str" in str(kind) and "dict" not in str(kind)
    }
    assert text_fields == {
        "event_id",
        "entity_id",
        "event_type",
        "model",
        "model_version",
        "spec_hash",
        "shadow_model",
        "shadow_model_version",
    }
    assert ScoreMessage.__annotations__["features"] == "dict[str, float | None] | None"
    assert ScoreMessage.__annotations__["explanation"] == "dict[str, float] | None"


def test_derived_features_that_read_a_pii_field_are_personal(spec: Spec) -> None:
    # age_years reads dob; is_male reads gender, which the spec does not mark.
    assert spec.personal_features("transaction") == {"age_years"}

    class Opaque:  # no code to read: counted as reading every field
        def __call__(self, event: Any, fixed: Any) -> float:
            return 0.0

    def nested(event: Any, fixed: Any) -> float:
        return float((lambda f: f.get("street") is None)(fixed))

    profile = Fixed("profile", {"street": str, "city": str}, pii={"street"})
    made = Spec(
        name="t",
        entity="card",
        key="k",
        fixed=profile,
        repeated={"txns": Repeated(event_type="txn", fields={"x": float}, retention=days(1))},
        scored=[
            Scored(
                "txn",
                features=[
                    Derived("nested", nested),
                    Derived("opaque", Opaque()),
                    Derived("city", lambda e, f: float(len(f.get("city") or ""))),
                ],
            )
        ],
    )
    assert made.personal_features("txn") == {"nested", "opaque"}


def test_score_messages_leave_personal_features_out_unless_exposed(spec: Spec) -> None:
    from types import SimpleNamespace

    from streams.emit import Emitter

    names = spec.feature_names_of("transaction")
    for expose, shown in ((False, [n for n in names if n != "age_years"]), (True, names)):
        unused: Any = SimpleNamespace()  # routing and metrics: not used to build messages
        emitter = Emitter(spec, {}, unused, unused, "s", "d", expose_pii=expose)
        assert emitter.withheld["transaction"] == (set() if expose else {"age_years"})
        row = [float(i) for i in range(len(names))]
        features = emitter._features["transaction"]
        pick = emitter._pick["transaction"]
        sent = msgspec.json.decode(msgspec.json.encode(features(*(row if pick is None else pick(row)))))
        assert list(sent) == shown and sent == {n: float(names.index(n)) for n in shown}


def test_a_closed_port_is_not_called_a_refused_login() -> None:
    import asyncio

    from aiokafka.helpers import create_ssl_context

    from streams.local_kafka import free_port
    from streams.security import check_login

    port = free_port()  # nothing listens there
    settings = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worker",
        "sasl_plain_password": "hunter22",
        "ssl_context": create_ssl_context(),
    }
    with pytest.raises(SecurityError) as err:
        asyncio.run(check_login(f"127.0.0.1:{port}", settings))
    said = str(err.value)
    assert said.startswith(f"could not connect to Kafka at 127.0.0.1:{port} as user 'worker': "), said
    assert "refused" not in said and "hunter22" not in said


def test_describe_lists_the_pii_fields() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "describe", "--spec", str(SPEC)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '"pii": [\n    "dob",\n    "first",\n    "last",\n    "street"\n  ]' in out


# --- HTTP ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("worker.example.com", False),
    ],
)
def test_loopback_is_recognised(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_needs_a_token() -> None:
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", TOKEN)
    with pytest.raises(SecurityError, match=r"--http-host 0\.0\.0\.0 is not a loopback address"):
        check_bind("0.0.0.0", None)


def test_only_the_right_bearer_token_is_authorized() -> None:
    assert authorized(f"Bearer {TOKEN}", TOKEN)
    assert authorized(f"bearer {TOKEN}", TOKEN)
    assert not authorized(None, TOKEN)
    assert not authorized("", TOKEN)
    assert not authorized("Bearer wrong", TOKEN)
    assert not authorized(f"Basic {TOKEN}", TOKEN)
    assert not authorized(f"Bearer {TOKEN}x", TOKEN)
    assert authorized(None, None)  # loopback without a token: open as before


def test_token_file_is_refused_if_world_readable_or_short(tmp_path: Path) -> None:
    assert http_token(_secret_file(tmp_path / "t", TOKEN + "\n")) == TOKEN
    with pytest.raises(SecurityError, match="readable by every user: chmod o-r"):
        http_token(_secret_file(tmp_path / "w", TOKEN, 0o644))
    with pytest.raises(SecurityError, match="at least 16 characters"):
        http_token(_secret_file(tmp_path / "s", "short"))


def _worker_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--spec", str(SPEC), "--model", "none", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


def test_worker_refuses_a_non_loopback_bind_without_a_token_in_one_line() -> None:
    done = _worker_cli("--http-host", "0.0.0.0")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: --http-host 0.0.0.0 is not a loopback address: /entities would show records to anyone "
        "who reaches the port; give --http-token-file FILE (or bind 127.0.0.1)"
    ]


# --- Kafka secrets -------------------------------------------------------------------


def test_kafka_config_takes_secrets_from_the_environment_and_from_files(tmp_path: Path) -> None:
    secret = _secret_file(tmp_path / "kafka-password", "pw-from-file\n")
    config = _secret_file(
        tmp_path / "kafka.json",
        '{"security_protocol": "SASL_SSL", "sasl_plain_username": {"env": "KAFKA_USER"},'
        f' "sasl_plain_password": {{"file": "{secret}"}}, "request_timeout_ms": 5000}}',
    )
    assert load_kafka_config(config, {"KAFKA_USER": "worker"}) == {
        "security_protocol": "SASL_SSL",
        "sasl_plain_username": "worker",
        "sasl_plain_password": "pw-from-file",
        "request_timeout_ms": 5000,
    }


def test_kafka_config_refusals_name_the_setting_and_never_the_secret(tmp_path: Path) -> None:
    config = _secret_file(tmp_path / "open.json", '{"sasl_plain_password": "hunter22"}', 0o644)
    with pytest.raises(SecurityError, match=r"open\.json is readable by every user") as err:
        load_kafka_config(config, {})
    assert "hunter22" not in str(err.value)

    config = _secret_file(tmp_path / "env.json", '{"sasl_plain_password": {"env": "KAFKA_PASSWORD"}}')
    with pytest.raises(SecurityError, match="sasl_plain_password refers to the environment variable"):
        load_kafka_config(config, {})

    secret = _secret_file(tmp_path / "pw", "hunter22", 0o644)
    config = _secret_file(tmp_path / "file.json", f'{{"sasl_plain_password": {{"file": "{secret}"}}}}')
    refused = r"sasl_plain_password's file .* is readable by every user"
    with pytest.raises(SecurityError, match=refused) as err:
        load_kafka_config(config, {})
    assert "hunter22" not in str(err.value)

    config = _secret_file(tmp_path / "bad.json", '{"sasl_plain_password": {"vault": "x"}}')
    with pytest.raises(SecurityError, match=r'must be a value, \{"env": NAME\} or \{"file": PATH\}'):
        load_kafka_config(config, {})

    # A misspelled or Java-style key is named, not passed on to crash a client later.
    for key in ("sasl_plain_pasword", "security.protocol"):
        config = _secret_file(tmp_path / "typo.json", f'{{"{key}": "hunter22"}}')
        with pytest.raises(
            SecurityError, match=f"unknown setting '{key}'.*not Java client properties"
        ) as err:
            load_kafka_config(config, {})
        assert "hunter22" not in str(err.value)


def test_produce_refuses_a_world_readable_kafka_config_in_one_line(tmp_path: Path) -> None:
    config = _secret_file(tmp_path / "kafka.json", '{"sasl_plain_password": "hunter22"}', 0o644)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "produce",
            "--kafka-config",
            str(config),
            "--input",
            "x.jsonl",
            "--spec",
            "s.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"error: --kafka-config {config} is readable by every user: chmod o-r {config} (it holds secrets)"
    ]


def test_a_refused_topic_or_group_is_named_with_the_right_to_grant() -> None:
    rights = WorkerConfig(app_id="fraud").topic_rights
    assert refusal(TopicAuthorizationFailedError("events.dlq"), rights) == (
        "Kafka refused Write on the DLQ topic events.dlq: [Error 29] TopicAuthorizationFailedError: "
        "events.dlq; grant it (docs/operations.md#security) and restart"
    )
    line = refusal(TopicAuthorizationFailedError({"scores", "fraud-records-changelog"}), rights)
    assert line is not None and line.startswith(
        "Kafka refused Read and Write on the changelog topic fraud-records-changelog "
        "and Write on the scores topic scores: "
    )
    line = refusal(GroupAuthorizationFailedError("fraud-worker"), rights)
    assert line is not None and line.startswith("Kafka refused Read on the consumer group fraud-worker: ")
    line = refusal(TopicAuthorizationFailedError("elsewhere"), rights)  # not one of the worker's
    assert line is not None and line.startswith("Kafka refused access to a topic (")
    assert refusal(ValueError("no refusal")) is None


def test_acl_lines_carry_the_admins_command_config_and_say_a_secured_cluster_needs_it() -> None:
    """kafka-acls.sh on a secured cluster needs the admin's client properties: each line ends with them."""
    from streams.cli_topics import acl_commands
    from streams.worker import WorkerConfig

    secured = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"}
    for kafka, command_config, hint in (
        ({}, None, False),
        (secured, None, True),
        (secured, "/etc/kafka/admin.properties", False),
    ):
        cfg = WorkerConfig(bootstrap="kafka1:9093", app_id="fraud", kafka=kafka)
        out = acl_commands(cfg, "User:w", "User:p", "User:r", "r", command_config)
        lines = [shlex.split(x) for x in out.splitlines() if x.startswith("kafka-acls.sh ")]
        assert len(lines) >= 6 and all(w[5] in ("User:w", "User:p", "User:r") for w in lines)
        if command_config:
            assert all(w[-2:] == ["--command-config", command_config] for w in lines)
        else:
            assert not any("--command-config" in w for w in lines)
        assert ("# a secured cluster: kafka-acls.sh needs" in out) is hint
