"""Measuring one system: a child process that turns an input topic into an output topic.

The system reads the preloaded input topic with a fresh consumer group and writes
to its own output topic, created with ``message.timestamp.type=LogAppendTime`` so
the broker stamps every output message when it is appended. While it runs, the
harness only polls the output topic's end offsets (cheap list-offsets requests)
and reads /proc of the child; the output is read back after the child is done,
so the harness takes next to no CPU from the system it measures.

Throughput = output messages per second between the first and the last output
LogAppendTime, converted to input events per second (profile events make no
score). It leaves out start-up (imports, model load, group join) and the first
batch before the first output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bench.procstat import ProcSample, sample_many

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.05
LOG_APPEND_TIME = 1  # aiokafka ConsumerRecord.timestamp_type


# --- topics -------------------------------------------------------------------------------


async def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int, log_append_time: bool = False
) -> None:
    """Create topics (LogAppendTime ones for outputs, whose timestamps are the clock)."""
    configs = {"message.timestamp.type": "LogAppendTime"} if log_append_time else {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(n, partitions, 1, topic_configs=configs) for n in names])
    finally:
        await admin.close()


class Offsets:
    """End offsets of a topic's partitions, polled with one plain (group-less) consumer."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    async def __aenter__(self) -> Offsets:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def end(self) -> dict[int, int]:
        """Next offset of each partition."""
        got = await self.consumer.end_offsets(self.tps)
        return {tp.partition: off for tp, off in got.items()}


@dataclass(frozen=True)
class Message:
    """What the harness keeps of a message it reads back."""

    partition: int
    offset: int
    timestamp: int  # ms; LogAppendTime on output topics, CreateTime on the input
    value: Any  # bytes, or what ``decode`` made of them


async def read_range(
    bootstrap: str,
    topic: str,
    start: dict[int, int],
    end: dict[int, int],
    decode: Callable[[bytes], Any] | None = None,
) -> list[Message]:
    """Messages of ``topic`` in [start, end) per partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    out: list[Message] = []
    try:
        tps = [TopicPartition(topic, p) for p, e in end.items() if e > start.get(p, 0)]
        if not tps:
            return out
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start.get(tp.partition, 0))
        remaining = {tp: end[tp.partition] for tp in tps}
        deadline = time.monotonic() + 120
        while remaining and time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, records in got.items():
                stop = remaining.get(tp)
                if stop is None:
                    continue
                for r in records:
                    if r.offset < stop:
                        value = decode(r.value) if decode is not None else r.value
                        out.append(Message(r.partition, r.offset, r.timestamp, value))
                if records and records[-1].offset + 1 >= stop:
                    del remaining[tp]
        if remaining:
            raise TimeoutError(f"{topic}: could not read back up to {end}")
        return out
    finally:
        await consumer.stop()


# --- child processes ---------------------------------------------------------------------


@dataclass
class Child:
    """A system under test as a child process; its output goes to a log file."""

    name: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> None:
        """Spawn (from the repository root, with this interpreter's environment)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise with the log's tail if the child has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (graceful), SIGKILL after ``timeout``; only this child's own pid."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing pid %d", self.name, timeout, proc.pid)
            proc.kill()
            proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the child's log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def python(*args: str) -> list[str]:
    """A command line running this interpreter."""
    return [sys.executable, *args]


# --- one measurement -----------------------------------------------------------------------


@dataclass
class Run:
    """What was measured of one system on the preloaded topic."""

    name: str
    events: int  # input events read
    outputs: int  # output messages (scores, or copies for the raw ceiling)
    events_per_s: float
    span_s: float  # first -> last output LogAppendTime
    wall_s: float  # spawn -> last output seen (start-up included)
    cpu_s: float  # user + system of the process when the last output was seen
    cpu_us_per_event: float  # CPU between the first and last output, per event in that span
    peak_rss_mb: float
    rss_mb_at: dict[str, float]  # events processed -> RSS
    capped: bool = False  # stopped at the time cap before every event was through
    values: list[Message] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The JSON-able part."""
        return {k: v for k, v in self.__dict__.items() if k != "values"}


async def measure(
    child: Child,
    bootstrap: str,
    out_topic: str,
    partitions: int,
    events: int,
    expected: int,
    decode: Callable[[bytes], Any] | None = None,
    marks: tuple[float, ...] = (0.5, 1.0),
    first_output_timeout: float = 180,
    stall_timeout: float = 60,
    max_seconds: float | None = None,
    others: Sequence[Child] = (),
) -> Run:
    """Start ``child`` and wait for ``expected`` outputs; the child keeps running afterwards.

    With ``max_seconds`` the wait ends that long after the first output even if not
    everything is out yet (``Run.capped``); the rate then covers what came out.
    ``others`` are more processes of the same system (one consumer group), started
    with ``child``: CPU and memory are those of all of them together.
    """
    group = [child, *others]
    for c in group:
        c.start()

    def sample() -> ProcSample:
        return sample_many([c.pid for c in group])

    pending = sorted(marks)
    first_at = 0.0
    rss_at: dict[str, float] = {}
    first: tuple[int, ProcSample] | None = None
    last_progress, seen = time.monotonic(), 0
    async with Offsets(bootstrap, out_topic, partitions) as offsets:
        while True:
            for c in group:
                c.check_alive()
            ends = await offsets.end()
            n = sum(ends.values())
            now = time.monotonic()
            if n != seen:
                seen, last_progress = n, now
            if n and first is None:
                first, first_at = (n, sample()), now
            while pending and n >= pending[0] * expected:
                s = sample()
                rss_at[f"{round(pending.pop(0) * events):d}"] = round(s.rss / 2**20, 1)
            capped = max_seconds is not None and first is not None and now - first_at > max_seconds
            if n >= expected or capped:
                end = sample()
                wall = now - child.started_at
                break
            limit = first_output_timeout if first is None else stall_timeout
            if now - last_progress > limit:
                raise TimeoutError(
                    f"{child.name}: {n:,} of {expected:,} outputs, no progress for {limit:.0f} s:\n"
                    f"{child.log_tail()}"
                )
            await asyncio.sleep(POLL_S)
    messages = await read_range(bootstrap, out_topic, {}, ends, decode)
    if len(messages) > expected:
        log.warning("%s: %d outputs for %d expected (duplicates?)", child.name, len(messages), expected)
    assert first is not None
    stamps = [m.timestamp for m in messages]
    t0, t1 = min(stamps), max(stamps)
    span = (t1 - t0) / 1000
    per_output = events / expected  # input events per output message
    if len(messages) < expected:
        log.warning(
            "%s: stopped after %.0f s with %d of %d outputs",
            child.name,
            max_seconds or 0,
            len(messages),
            expected,
        )
    # The first output's batch came "for free" before t0: count from the second output on.
    rate = (len(messages) - 1) / span * per_output if span > 0 else len(messages) * per_output / wall
    cpu_events = max(1.0, (len(messages) - first[0]) * per_output)
    return Run(
        name=child.name,
        events=events if len(messages) >= expected else round(len(messages) * per_output),
        outputs=len(messages),
        events_per_s=round(rate, 1),
        span_s=round(span, 3),
        wall_s=round(wall, 2),
        cpu_s=round(end.cpu_s, 2),
        cpu_us_per_event=round((end.cpu_s - first[1].cpu_s) / cpu_events * 1e6, 1),
        peak_rss_mb=round(end.hwm / 2**20, 1),
        rss_mb_at=rss_at,
        capped=len(messages) < expected,
        values=messages,
    )
