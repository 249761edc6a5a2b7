"""A real Apache Kafka broker on this machine for tests and benchmarks, driven through ``scripts/kafka``.

The shell script is the one source of truth for how the broker is fetched,
configured, started and stopped; this class only picks ports and a data
directory and calls it with ``KAFKA_PORT``, ``KAFKA_CONTROLLER_PORT`` and
``KAFKA_DATA_DIR``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_DIR / "scripts" / "kafka"

# The first start may download ~55 MB of jars with Maven; later starts take ~5 s.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


def free_port() -> int:
    """A port that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    # Once the script exits the broker is not our child, so when it dies it
    # may linger as a zombie until init reaps it. A zombie JVM whose other
    # threads are still exiting still holds its ports: it is only dead once
    # the zombie leader is the last task left.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


class KafkaBroker:
    """A single-node KRaft broker on 127.0.0.1 with its data in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        env: dict[str, str] | None = None,
    ):
        self.workdir = Path(workdir).resolve()
        self.env = env or {}  # more scripts/kafka settings, e.g. KAFKA_INITIAL_REBALANCE_DELAY_MS
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    def _run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            KAFKA_PORT=str(self.port),
            KAFKA_CONTROLLER_PORT=str(self.controller_port),
            KAFKA_DATA_DIR=str(self.workdir),
            **self.env,
        )
        return subprocess.run(
            [str(KAFKA_SCRIPT), command],
            env=env,
            cwd=REPO_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> None:
        result = self._run("start", START_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(
                f"scripts/kafka start failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def stop(self) -> None:
        result = self._run("stop", STOP_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(
                f"scripts/kafka stop failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def is_running(self) -> bool:
        return self._run("status", 30).returncode == 0

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def kill(self) -> None:
        """SIGKILL the broker: a crash, for fault tests (no controlled shutdown).

        A restart after this takes ~10 s longer than usual: the controller waits
        for the dead incarnation's session (broker.session.timeout.ms) to expire.
        """
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker pid {pid} survived SIGKILL")
            time.sleep(0.05)

    def restart(self) -> None:
        """Stop (gracefully; a no-op after kill()) and start again on the same ports and data."""
        self.stop()
        self.start()

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KafkaBroker(bootstrap={self.bootstrap!r}, workdir={str(self.workdir)!r})"
