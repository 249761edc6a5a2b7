"""Late and future events on the real broker.

The fraud spec allows a day of lateness: an event up to a day older than its card's
newest is scored (``late: true``) with windows over the items at or before it in ts
order, exactly as replay's engine computes them; an older one goes to the DLQ. An
event further ahead of the wall clock than ``--max-future`` (default a day) goes to
the DLQ too. With ``--max-future`` at three days an event two days ahead is scored,
and then it is the card's newest: the card's next real-time event is two days
older than that, beyond the lateness, and is the one that lands in the DLQ.

Events are synthetic, for two cards, with ts around the wall clock.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from pathlib import Path
from typing import Any

import msgspec
import pyarrow.parquet as pq
import pytest
from streaming import ADAPTER, SAMPLE, SPEC, WorkerProcess, metric, read_topic, train_small_model

from entities.engine import Engine
from entities.events import Event, EventCodec
from entities.spec import load_spec
from streams.messages import DLQ_REASON, ScoreMessage
from streams.produce import produce
from streams.replay import replay

pytestmark = pytest.mark.kafka

PARTITIONS = 2
MIN_MS = 60_000
HOUR_MS = 60 * MIN_MS
DAY_MS = 24 * HOUR_MS
CARD, OTHER = "4111111111111111", "4222222222222222"
PROFILE = {
    "first": "Ada", "last": "Lovelace", "gender": "F", "street": "1 Analytical Way", "city": "London",
    "state": "NY", "zip": "10001", "lat": 40.75, "long": -73.99, "city_pop": 1_000_000,
    "job": "Mathematician", "dob": "1985-12-10",
}  # fmt: skip
LATE = f"{CARD}-late"  # (a) two hours older than the card's newest
TOO_LATE = f"{CARD}-too-late"  # (b) three days older
AHEAD_2D = f"{CARD}-ahead-2d"  # (c) two days ahead of the wall clock
AHEAD_4D = f"{CARD}-ahead-4d"  # beyond even three days
AFTER = f"{CARD}-after"  # real time again, after all of the above


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real model (lateness is about the features, not the model)."""
    d = tmp_path_factory.mktemp("model")
    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=d / "f.parquet", limit=2_000)
    return train_small_model(load_spec(SPEC), d / "f.parquet", d / "model", trees=5)


def _events(codec: EventCodec, now: int) -> list[Event]:
    """The two cards' events in arrival order; the card's newest in-order one is now - 10 min."""
    base = now - 6 * HOUR_MS

    def txn(event_id: str, entity_id: str, ts: int, amt: float) -> Event:
        attrs = {"merchant": event_id[-8:], "category": "grocery_pos", "amt": amt, "merch_lat": 40.8}
        return codec.build("transaction", event_id, entity_id, ts, {**attrs, "merch_long": -74.0})

    newest = base + 5 * HOUR_MS + 50 * MIN_MS
    return [
        codec.build("profile", f"{CARD}-profile", CARD, base, PROFILE),
        codec.build("profile", f"{OTHER}-profile", OTHER, now - 2 * HOUR_MS, {**PROFILE, "gender": "M"}),
        txn(f"{CARD}-1", CARD, base, 10.0),
        txn(f"{CARD}-2", CARD, base + HOUR_MS, 20.0),
        txn(f"{OTHER}-1", OTHER, now - HOUR_MS, 5.0),
        txn(f"{CARD}-3", CARD, base + 3 * HOUR_MS + 30 * MIN_MS, 30.0),
        txn(f"{CARD}-4", CARD, base + 4 * HOUR_MS, 40.0),
        txn(f"{CARD}-5", CARD, newest, 50.0),
        txn(LATE, CARD, newest - 2 * HOUR_MS, 100.0),  # between card-3 and card-4 in ts
        txn(TOO_LATE, CARD, newest - 3 * DAY_MS, 1_000.0),
        txn(AHEAD_2D, CARD, now + 2 * DAY_MS, 70.0),
        txn(AFTER, CARD, now - 5 * MIN_MS, 60.0),
        txn(AHEAD_4D, CARD, now + 4 * DAY_MS, 80.0),
        txn(f"{OTHER}-2", OTHER, now - 5 * MIN_MS, 6.0),
    ]


def _replay_in_file_order_is_the_reference(
    events: list[Event],
    codec: EventCodec,
    model: Path,
    want: dict[str, tuple[list[float], bool]],
    rejected: set[str],
    tmp_path: Path,
) -> None:
    """``replay --file-order`` of the events as they arrive gives the reference's rows, flags and rejects;
    sorted by ts (replay's default) the events after the late one hold it already."""
    arrived = tmp_path / "arrived.jsonl"
    arrived.write_bytes(b"".join(codec.encode(e) + b"\n" for e in events))
    rejects: list[Any] = []
    for file_order in (True, False):
        out = tmp_path / f"file-order-{file_order}.parquet"
        scores = tmp_path / f"file-order-{file_order}-scores.parquet"
        replay(
            SPEC,
            arrived,
            features_out=out,
            models=[model],
            scores_out=scores,
            file_order=file_order,
            on_reject=rejects.append,
        )
        rows = pq.read_table(out).to_pandas()
        rows["late"] = pq.read_table(scores, columns=["late"]).column("late").to_pylist()  # same row order
        names = load_spec(SPEC).feature_names
        same = all(
            eid in want
            and bool(rows["late"].iloc[i]) is want[eid][1]
            and all(_same(rows[n].iloc[i], v) for n, v in zip(names, want[eid][0], strict=True))
            for i, eid in enumerate(rows["event_id"])
        )
        if file_order:
            assert list(rows["event_id"]) == list(want) and same
            assert {e.event_id for e, _ in rejects} == rejected and rejected
        else:  # sorted: the late event is not late, and card-4 and card-5 count it
            assert set(rows["event_id"]) == set(want) | rejected and not same


def _same(a: float | None, b: float) -> bool:
    x = math.nan if a is None else a
    return x == b or (math.isnan(x) and math.isnan(b))


@pytest.mark.parametrize("max_future_days", [1, 3], ids=["max-future-1d", "max-future-3d"])
def test_late_scored_too_late_and_far_future_dead_lettered(
    kafka_broker, model: Path, tmp_path: Path, max_future_days: int
) -> None:
    started = time.monotonic()
    spec = load_spec(SPEC)
    codec = EventCodec(spec)
    now = int(time.time() * 1000)
    events = _events(codec, now)
    max_future = max_future_days * DAY_MS

    # The reference: the engine replay uses, on the events the wall-clock check lets through
    # (the margins are hours, so the test's clock stands in for the worker's).
    engine = Engine(spec)
    result = engine.process([e for e in events if e.ts <= now + max_future])
    want = {
        e.event_id: (row, late) for e, row, late in zip(result.scored, result.rows, result.late, strict=True)
    }
    rejected_late = {e.event_id for e, _ in result.rejected}
    ahead = {e.event_id for e in events if e.ts > now + max_future}
    _replay_in_file_order_is_the_reference(
        [e for e in events if e.ts <= now + max_future], codec, model, want, rejected_late, tmp_path
    )

    worker = WorkerProcess(
        kafka_broker.bootstrap,
        model,
        tmp_path / "data",
        partitions=PARTITIONS,
        extra=[] if max_future_days == 1 else ["--max-future", str(max_future_days * 86_400)],
    )
    worker.start()
    try:
        sent = asyncio.run(
            produce(
                kafka_broker.bootstrap, worker.topics["events"], codec, iter(events), partitions=PARTITIONS
            )
        )
        assert sent == len(events)
        scores = read_topic(kafka_broker.bootstrap, worker.topics["scores"], expect=len(want), timeout=60)
        dead = read_topic(
            kafka_broker.bootstrap, worker.topics["dlq"], expect=len(ahead | rejected_late), timeout=30
        )
        metrics = worker.get("/metrics") or ""
    finally:
        worker.stop()

    got = {s.event_id: s for s in (msgspec.json.decode(m.value, type=ScoreMessage) for m in scores)}
    reasons = {codec.decode(m.value).event_id: dict(m.headers)[DLQ_REASON].decode() for m in dead}
    print(f"\nLATE-TABLE | --max-future {max_future_days} d | {time.monotonic() - started:.0f} s")
    for e in events:
        s = got.get(e.event_id)
        if s is not None:
            outcome = f"scored, late={s.late}"
        else:
            outcome = f"DLQ: {reasons[e.event_id]}" if e.event_id in reasons else "applied (not scored)"
        print(f"  {e.event_id:<24} {(e.ts - now) / HOUR_MS:+8.2f} h  {outcome}")

    assert len(scores) == len(got) == len(want), "an event scored twice"
    assert len(dead) == len(reasons), "a dead letter twice"
    assert set(got) == set(want)
    assert set(reasons) == ahead | rejected_late

    # (a) Two hours late: scored, flagged, windows over the items at or before it in ts order.
    late = got[LATE]
    assert late.late is True
    assert late.features is not None
    assert late.features["txn_count_1h"] == 2  # card-3 (20 min before) and itself
    assert late.features["txn_count_24h"] == 4  # card-1..3 and itself, not card-4 or card-5
    assert late.features["amt_sum_24h"] == 10 + 20 + 30 + 100
    assert late.features["secs_since_prev_txn"] == 20 * 60
    # Every score equals replay's: features (the late event, and those after it that hold it) and flag.
    for event_id, (row, flag) in want.items():
        s = got[event_id]
        assert s.late is flag, event_id
        assert s.features is not None
        withheld = spec.personal_features("transaction")  # left out of score messages
        differ = [
            n
            for n, v in zip(spec.feature_names, row, strict=True)
            if n not in withheld and not _same(s.features[n], v)
        ]
        assert not differ, f"{event_id}: {differ} differ from replay"
    assert not got[f"{OTHER}-2"].late  # one card's lateness is its own

    # (b) Three days late: DLQ, the reason says so; the engine rejects it the same way.
    assert TOO_LATE in rejected_late
    assert re.search(r"field 'ts'.*older than the entity's newest.*lateness", reasons[TOO_LATE])
    # Beyond the horizon: DLQ, whatever the card holds.
    assert re.search(r"field 'ts'.*ahead", reasons[AHEAD_4D])
    if max_future_days == 1:
        # (c) Two days ahead: DLQ; the card goes on in real time.
        assert re.search(r"field 'ts'.*ahead", reasons[AHEAD_2D])
        after = got[AFTER]
        assert after.late is False
        assert after.features is not None
        assert after.features["txn_count_24h"] == 7  # card-1..5, the late one and itself
    else:
        # (d) Within three days: scored, and now the newest - the next real-time event is too late.
        assert got[AHEAD_2D].late is False
        assert AFTER in rejected_late
        assert re.search(r"older than the entity's newest", reasons[AFTER])
    assert metric(metrics, "supernova_late_scored_total") == sum(flag for _, flag in want.values()) == 1
    assert metric(metrics, "supernova_dlq_total") == len(reasons)
    # Told apart: a producer too slow (late) and a clock too fast (future) need different alerts.
    assert metric(metrics, 'supernova_dlq_total{reason="late"}') == len(rejected_late) > 0
    assert metric(metrics, 'supernova_dlq_total{reason="future"}') == len(ahead) > 0
