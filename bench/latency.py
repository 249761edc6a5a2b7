"""Latency under load: events at a steady rate into a running worker, score time minus event time.

Events are published with ``streams.produce.produce`` at a fixed rate (it paces
in steps of 1/100 s); the producer stamps each event with CreateTime when it
appends it. The worker's scores go to a LogAppendTime topic. A score names its
event's partition and offset, so latency = score LogAppendTime - event CreateTime,
in milliseconds (both clocks are this machine's: broker and producer share it).

The events continue the file after the preloaded ones; once the file is used up it
starts over, shifted forward in time by its own span plus a day and with new event
ids, so every card's history stays in order and nothing is a duplicate.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import msgspec
import numpy as np

from bench.harness import Offsets, read_range
from bench.procstat import sample_many
from entities.events import Event, EventCodec
from streams.produce import produce

DAY_MS = 86_400_000
# Odd, so k -> k * MIX mod 2**64 is one-to-one: copies of an id never collide.
MIX = 0x9E3779B97F4A7C15
_HEX = frozenset("0123456789abcdef")


def clone_event_id(event_id: str, k: int) -> str:
    """A new id for copy ``k`` of an event: still 32 hex digits if ``event_id`` is, like Sparkov's.

    Ids of another form get a ``~k`` suffix. Keeping the form matters: records hold
    32-digit hex ids in 16 bytes and any other id as text (``entities/items.py``).
    """
    if len(event_id) == 32 and _HEX.issuperset(event_id):
        return f"{int(event_id[:16], 16) ^ (k * MIX) % 2**64:016x}{event_id[16:]}"
    return f"{event_id}~{k}"


class _Source(msgspec.Struct):
    partition: int
    offset: int


class _Score(msgspec.Struct):
    event_id: str
    source: _Source
    scored_at: int = 0  # worker clock, ms: splits the latency into "until scored" and "publish"


_decode_score = msgspec.json.Decoder(_Score).decode


def continuation(base: list[Event], start: int) -> Iterator[Event]:
    """``base[start:]``, then ``base`` again and again, each pass later in time, with new ids."""
    if not base:
        return iter(())
    return looped(lambda: base, start, base[-1].ts - base[0].ts)


def looped(read: Callable[[], Iterable[Event]], start: int, span_ms: int) -> Iterator[Event]:
    """The events of ``read()`` from the ``start``-th on, then all of them again and again.

    Each pass is shifted forward in time by ``span_ms`` (last ts - first ts) plus a day
    and gets new event ids, so ``read`` may stream a file instead of holding a list.
    """
    yield from itertools.islice(read(), start, None)
    shift_by = span_ms + DAY_MS
    for k in itertools.count(1):
        shift = k * shift_by
        for ev in read():
            yield Event(
                clone_event_id(ev.event_id, k), ev.entity_id, ev.type, ev.ts + shift, ev.attrs, ev.label
            )


@dataclass
class Latency:
    """Percentiles of score time - event time, and what the load was."""

    target_rate: float
    achieved_rate: float
    seconds: float
    events: int
    expected_scores: int
    scores: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    to_scored_p50_ms: float  # event CreateTime -> scored_at (poll, decode, features, predict)
    to_scored_p99_ms: float
    publish_p50_ms: float  # scored_at -> score LogAppendTime (encode, send, broker append)
    publish_p99_ms: float
    worker_cpu_percent: float  # of one core, during the phase (all the worker processes)
    worker_rss_mb: float
    # Per second of event CreateTime: [p50, p99, max] ms. Shows whether the tail is
    # spread out or comes in bursts (e.g. once per commit interval).
    by_second: list[list[float]] = field(default_factory=list)


async def measure_latency(
    bootstrap: str,
    in_topic: str,
    out_topic: str,
    partitions: int,
    codec: EventCodec,
    events: list[Event],
    rate: float,
    worker_pids: list[int],
    drain_timeout: float = 60,
) -> Latency:
    """Publish ``events`` at ``rate``; wait for their scores; percentiles of the latencies."""
    expected = sum(1 for e in events if e.type == "transaction")
    async with (
        Offsets(bootstrap, in_topic, partitions) as ins,
        Offsets(bootstrap, out_topic, partitions) as outs,
    ):
        in_start, out_start = await ins.end(), await outs.end()
        cpu0, t0 = sample_many(worker_pids).cpu_s, time.monotonic()
        sent = await produce(bootstrap, in_topic, codec, iter(events), rate=rate, partitions=partitions)
        produced_s = time.monotonic() - t0
        deadline = time.monotonic() + drain_timeout
        while sum((await outs.end()).values()) - sum(out_start.values()) < expected:
            if time.monotonic() > deadline:  # fell behind: report what came, flagged incomplete
                break
            await asyncio.sleep(0.05)
        after = sample_many(worker_pids)
        busy_s = time.monotonic() - t0
        in_end, out_end = await ins.end(), await outs.end()
    created = {
        (m.partition, m.offset): m.timestamp for m in await read_range(bootstrap, in_topic, in_start, in_end)
    }
    scores = await read_range(bootstrap, out_topic, out_start, out_end, _decode_score)
    born = np.array(
        [created[(m.value.source.partition, m.value.source.offset)] for m in scores], dtype=np.float64
    )
    scored = np.array([m.value.scored_at for m in scores], dtype=np.float64)
    appended = np.array([m.timestamp for m in scores], dtype=np.float64)
    lat = appended - born
    p50, p95, p99 = _percentiles(lat, 50, 95, 99)
    s50, s99 = _percentiles(scored - born, 50, 99)
    b50, b99 = _percentiles(appended - scored, 50, 99)
    return Latency(
        target_rate=round(rate, 1),
        achieved_rate=round(sent / produced_s, 1),
        seconds=round(produced_s, 2),
        events=sent,
        expected_scores=expected,
        scores=len(scores),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        max_ms=float(lat.max()) if len(lat) else float("nan"),
        to_scored_p50_ms=s50,
        to_scored_p99_ms=s99,
        publish_p50_ms=b50,
        publish_p99_ms=b99,
        worker_cpu_percent=round(100 * (after.cpu_s - cpu0) / busy_s, 1),
        worker_rss_mb=round(after.rss / 2**20, 1),
        by_second=_by_second(born, lat),
    )


def _by_second(born: np.ndarray, lat: np.ndarray) -> list[list[float]]:
    """[p50, p99, max] of the latencies of the events created in each second."""
    if not len(lat):
        return []
    second = ((born - born.min()) // 1000).astype(np.int64)
    order = np.argsort(second, kind="stable")
    bounds = np.searchsorted(second[order], np.arange(second.max() + 2))
    out = []
    for lo, hi in itertools.pairwise(bounds):
        chunk = lat[order[lo:hi]]
        out.append([*_percentiles(chunk, 50, 99), float(chunk.max()) if len(chunk) else float("nan")])
    return out


def _percentiles(values: np.ndarray, *qs: float) -> list[float]:
    if not len(values):
        return [float("nan")] * len(qs)
    return [float(x) for x in np.percentile(values, qs)]
