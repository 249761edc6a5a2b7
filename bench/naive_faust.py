"""The naive baseline: the fraud scorer as a typical faust user writes it.

One agent, one event at a time: ``json.loads`` the event, read the card's record
from a RocksDB-backed faust Table (rocksdict driver), append the transaction,
compute the 19 features of ``examples/fraud/spec.py`` by rescanning the record's
list of transactions, one LightGBM ``predict`` on one row, ``await topic.send``
of the score, write the record back. Default faust settings, except what the
set-up needs (broker, partitions matching the input topic, no web server).
Nothing here is slowed down on purpose; the feature code is plain Python. The
predict call is the worker's (``num_threads=1``): with LightGBM's default OpenMP
threads a one-row predict on a small, loaded machine costs many times more (see
docs/performance.md), which would make the baseline unfairly slow.

Feature definitions (as in the spec): windows are ``(t - w, t]`` over the card's
transactions up to and including the current one; std is the population std;
zscore is 0 when std < 1e-9; time since previous is NaN for the first
transaction; lifetime count and mean cover every transaction ever seen.
Transactions older than 31 days (the spec's retention) are dropped after the
features are computed.

    python -m bench.naive_faust --bootstrap HOST:PORT --input T --output T \
        --model DIR --app-id ID --data-dir DIR
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOUR = 3_600_000
DAY = 24 * HOUR
MS_PER_DAY = DAY
RETENTION = 31 * DAY
EARTH_RADIUS_KM = 6371.0
EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def fraud_features(
    txns: list[list[Any]], profile: dict[str, Any], count: int, amt_total: float, prev_ts: int | None
) -> list[float]:
    """The 19 features of the newest transaction ``txns[-1]`` = [ts, merchant, category, amt, lat, long]."""
    ts, _merchant, category, amt, merch_lat, merch_long = txns[-1]
    last_1h = [t for t in txns if t[0] > ts - HOUR]
    last_24h = [t for t in txns if t[0] > ts - DAY]
    last_7d = [t for t in txns if t[0] > ts - 7 * DAY]
    last_30d = [t for t in txns if t[0] > ts - 30 * DAY]

    amts_30d = [t[3] for t in last_30d]
    mean_30d = sum(amts_30d) / len(amts_30d)
    std_30d = math.sqrt(sum((x - mean_30d) ** 2 for x in amts_30d) / len(amts_30d))
    zscore_30d = 0.0 if std_30d < 1e-9 else (amt - mean_30d) / std_30d

    dob = profile.get("dob")
    age = (
        math.nan
        if dob is None
        else ((ts // MS_PER_DAY - (dt.date.fromisoformat(dob).toordinal() - EPOCH_ORDINAL)) / 365.25)
    )
    city_pop = profile.get("city_pop")
    lat, lon = profile.get("lat"), profile.get("long")
    if lat is None or lon is None:
        dist = math.nan
    else:
        p1, p2 = math.radians(lat), math.radians(merch_lat)
        dp, dl = p2 - p1, math.radians(merch_long - lon)
        h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        dist = 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))

    return [
        float(amt),
        float(ts // HOUR % 24),
        float(len(last_1h)),
        float(len(last_24h)),
        float(len(last_7d)),
        sum(t[3] for t in last_24h),
        sum(t[3] for t in last_7d) / len(last_7d),
        max(amts_30d),
        std_30d,
        zscore_30d,
        float(len({t[1] for t in last_7d})),
        float(sum(1 for t in last_24h if t[2] == category)),
        math.nan if prev_ts is None else (ts - prev_ts) / 1000.0,
        float(count),
        amt_total / count,
        age,
        math.nan if city_pop is None else float(city_pop),
        1.0 if profile.get("gender") == "M" else 0.0,
        dist,
    ]


def load_predict(model_dir: Path) -> Callable[[list[float]], float]:
    """One-row LightGBM predict of the artifact in ``model_dir``, on one thread (see the module doc)."""
    import lightgbm as lgb
    import numpy as np

    model = lgb.Booster(model_file=str(Path(model_dir) / "model.txt"))
    return lambda row: float(model.predict(np.array([row]), num_threads=1)[0])


def apply_event(
    event: dict[str, Any], record: dict[str, Any] | None, predict: Callable[[list[float]], float]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One decoded wire event applied to its card's record: (the record to store, the score or None).

    A profile event updates the card's profile and makes no score; a transaction is
    appended, scored on its 19 features, and transactions older than the retention
    are dropped after the features are computed.
    """
    if record is None:
        record = {"profile": {}, "txns": [], "count": 0, "amt_total": 0.0, "last_ts": None}
    a = event["attrs"]
    if event["type"] == "profile":
        record["profile"].update(a)
        return record, None
    ts = event["ts"]
    txns = record["txns"]
    txns.append([ts, a["merchant"], a["category"], a["amt"], a["merch_lat"], a["merch_long"]])
    record["count"] += 1
    record["amt_total"] += a["amt"]
    row = fraud_features(txns, record["profile"], record["count"], record["amt_total"], record["last_ts"])
    score = {"event_id": event["event_id"], "entity_id": event["entity_id"], "score": predict(row)}
    record["last_ts"] = ts
    record["txns"] = [t for t in txns if t[0] > ts - RETENTION]
    return record, score


def create_app(args: argparse.Namespace) -> Any:
    """The faust app: one table of card records, one agent."""
    import faust

    predict = load_predict(args.model)
    tuning: dict[str, Any] = {"consumer_max_fetch_size": 16 << 20} if args.tuned else {}
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="rocksdb://",
        datadir=str(args.data_dir),
        topic_partitions=args.partitions,  # the table must co-partition with the input
        topic_replication_factor=1,
        web_enabled=False,
        **tuning,
    )
    events = app.topic(args.input, key_serializer="raw", value_serializer="raw")
    scores = app.topic(args.output, key_serializer="raw", value_serializer="raw")
    records = app.Table("cards", default=None, partitions=args.partitions, options={"driver": "rocksdict"})

    @app.agent(events)
    async def score(stream: Any) -> None:
        async for key, value in stream.items():
            event = json.loads(value)
            card = event["entity_id"]
            record, out = apply_event(event, records.get(card), predict)
            if out is not None:
                await scores.send(key=key, value=json.dumps(out).encode())
            records[card] = record

    return app


def naive_parser(description: str) -> argparse.ArgumentParser:
    """The options every naive app takes: broker, topics, model, app id, state directory."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--app-id", required=True)
    p.add_argument("--data-dir", required=True, type=Path)
    return p


def main() -> None:
    """Parse the options, then hand over to faust's Worker."""
    p = naive_parser(__doc__.splitlines()[0])
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--tuned", action="store_true", help="16 MB consumer fetch size (KAFKA-NOTES)")
    args = p.parse_args()

    from faust.worker import Worker

    app = create_app(args)
    Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
