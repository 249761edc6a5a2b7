"""Going live on the SASL_SSL broker with ACLs, every command at debug level (issue 20).

``supernova bootstrap`` runs with the worker's ``--kafka-config`` and the worker's
rights only; a worker started afterwards scores live events as ``replay --warmup``
does. Passwords reach the commands by reference (the worker's from a file, the
producer's and the reader's from the environment) and appear in no output, no file
and no command line, though every command runs with ``-v``.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import pytest
from secure_kafka import SecureBroker, grant_worker
from streaming import ADAPTER, SPEC, WorkerProcess, read_topic
from test_bootstrap import _assert_equal_to_replay, _oracle
from test_history import sample_lines, write_csv
from test_secure_broker import cli, create_topics, passwords

from streams.messages import ScoreMessage

pytestmark = pytest.mark.kafka
HISTORY_ROWS, LIVE_ROWS = 3_000, 1_000


@contextmanager
def command_lines() -> Iterator[list[str]]:
    """Every process's command line (``ps -eo args``), sampled every 0.2 s while the block runs."""
    seen: list[str] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False)
            seen.append(ps.stdout)
            done.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def test_bootstrap_and_worker_on_sasl_ssl_score_as_replay_and_debug_logs_hold_no_password(
    secure_kafka: SecureBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = secure_kafka
    header, lines = sample_lines(n=HISTORY_ROWS + LIVE_ROWS)
    history = write_csv(tmp_path / "history.csv.gz", header, lines[:HISTORY_ROWS])
    live = write_csv(tmp_path / "live.csv.gz", header, lines[HISTORY_ROWS:])
    oracle = _oracle(SPEC, history, live, tmp_path)

    worker_config = b.config_file("worker", tmp_path / "worker.json")  # password from a file
    env = {"producer": "SUPERNOVA_TEST_PRODUCER_PASSWORD", "reader": "SUPERNOVA_TEST_READER_PASSWORD"}
    for user, name in env.items():  # passwords from the environment
        monkeypatch.setenv(name, b.secret(user).read_text().strip())
    producer_config, reader_config = (
        b.config_file(user, tmp_path / f"{user}.json", sasl_plain_password={"env": name})
        for user, name in env.items()
    )
    worker = WorkerProcess(
        b.bootstrap, oracle["model"], tmp_path / "data", extra=["--kafka-config", str(worker_config)]
    )
    worker.options = ["-v"]
    t = worker.topics
    create_topics(b, worker)  # as the operator; then only the rights of docs/operations.md
    grant_worker(b, worker.prefix, t)
    b.allow("producer", ["Write", "Describe"], ["--topic", t["events"]])
    b.allow("reader", ["Read", "Describe"], ["--topic", t["scores"]])

    with command_lines() as ps:
        booted = cli(
            "-v", "bootstrap", "--spec", str(SPEC), "--input", str(history), "--adapter", str(ADAPTER),
            "--bootstrap", b.bootstrap, "--app-id", worker.prefix, "--events-topic", t["events"],
            "--kafka-config", str(worker_config),
        )  # fmt: skip
        assert booted.returncode == 0, booted.stderr
        assert booted.stdout.startswith("bootstrapped "), booted.stdout
        worker.start()
        try:
            produced = cli(
                "-v", "produce", "--spec", str(SPEC), "--input", str(live), "--adapter", str(ADAPTER),
                "--topic", t["events"], "--bootstrap", b.bootstrap, "--kafka-config", str(producer_config),
            )  # fmt: skip
            assert produced.returncode == 0, produced.stderr
            messages = read_topic(
                b.bootstrap, t["scores"], expect=LIVE_ROWS, timeout=180, kafka=b.settings("reader")
            )
            tailed = cli(
                "-v", "tail", t["scores"], "--from-beginning", "--limit", "5", "--bootstrap", b.bootstrap,
                "--kafka-config", str(reader_config),
            )  # fmt: skip
        finally:
            worker.stop()

    scores = [msgspec.json.decode(m.value, type=ScoreMessage) for m in messages]
    _assert_equal_to_replay(scores, oracle, SPEC, LIVE_ROWS)
    assert tailed.returncode == 0, tailed.stderr
    assert len(tailed.stdout.splitlines()) == 5

    assert worker.log_path is not None
    said = {
        "worker": worker.log_path.read_text(),
        "bootstrap": booted.stdout + booted.stderr,
        "produce": produced.stdout + produced.stderr,
        "tail": tailed.stdout + tailed.stderr,
    }
    assert all("DEBUG" in text for text in said.values()), "a command did not log at debug level"
    files = {str(f): f.read_bytes().decode(errors="replace") for f in tmp_path.rglob("*") if f.is_file()}
    assert len(ps) > 5
    places = {**said, **files, **{f"ps at {i}": snapshot for i, snapshot in enumerate(ps)}}
    secrets = passwords(b)
    leaks = [(where, p) for where, text in places.items() for p in secrets if p in text]
    assert not leaks, f"a password in {[where for where, _ in leaks]}"
