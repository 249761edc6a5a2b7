"""The shop example against its independent oracle (``tests/reference_shop.py``).

``test_replay_matches_reference`` generates ~34,000 events with a fixed seed, replays
them with ``examples/shop/spec.py`` and compares every feature of both scored types
(``order``, ``login``) with the oracle: 0 mismatches beyond 1e-9 relative (NaN ==
NaN). Run with ``-s`` for the per-feature table. It is skipped until ``entities.spec``
has the multi-type API of issue 17 (``Scored``).

The other tests need no engine: the generated data holds the hard cases the
comparison is meant to cover, the generator is deterministic, and the oracle gives
hand-computed values on a small hand-made file.
"""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import entities.spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feature_compare import compare_columns
from reference_shop import DAY, FEATURES, HOUR, read_events, reference_features

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC = REPO_ROOT / "examples" / "shop" / "spec.py"
USERS, DAYS, SEED = 1_400, 60, 17
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")

needs_engine = pytest.mark.skipif(
    not hasattr(entities.spec, "Scored"),
    reason="entities.spec has no Scored yet: the multi-type spec API of issue 17 has not landed",
)


def _generate(out: Path, users: int = USERS, days: int = DAYS, seed: int = SEED) -> Path:
    cmd = [sys.executable, "-m", "examples.shop.generate", "--users", str(users), "--days", str(days)]
    cmd += ["--seed", str(seed), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def shop_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated file shared by this module's tests."""
    return _generate(tmp_path_factory.mktemp("shop") / "shop.jsonl.gz")


@pytest.fixture(scope="module")
def shop_frame(shop_events: Path) -> pd.DataFrame:
    return read_events(shop_events)


@pytest.fixture(scope="module")
def shop_reference(shop_frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return reference_features(shop_frame)


@needs_engine
def test_replay_matches_reference(
    tmp_path: Path, shop_events: Path, shop_reference: dict[str, pd.DataFrame]
) -> None:
    from streams.replay import replay

    out = tmp_path / "features"
    replay(SPEC, shop_events, features_out=out)
    compared = []
    for etype, names in FEATURES.items():
        path = out / f"{etype}.parquet"
        assert path.exists(), f"replay did not write {path}; it wrote {sorted(p.name for p in out.iterdir())}"
        got = pd.read_parquet(path)
        assert list(got.columns) == ["event_id", "entity_id", "ts", *names, "label"]
        ref = shop_reference[etype]
        assert got["event_id"].is_unique
        assert len(got) == len(ref)
        assert set(got["event_id"]) == set(ref["event_id"])
        got = got.set_index("event_id").loc[ref["event_id"]].reset_index()
        assert (got["entity_id"].astype(str).to_numpy() == ref["entity_id"].to_numpy()).all()
        got_ts = ((got["ts"] - EPOCH) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)
        np.testing.assert_array_equal(got_ts, ref["ts"].to_numpy(dtype=np.int64))
        np.testing.assert_array_equal(
            got["label"].to_numpy(dtype=np.float64), ref["label"].to_numpy(dtype=np.float64)
        )
        compared.append((etype, got, ref))
    _assert_features_match(compared)


@needs_engine
def test_replay_in_file_order_matches_reference_with_jobs_and_warmup(
    tmp_path: Path, shop_events: Path, shop_frame: pd.DataFrame
) -> None:
    """``replay --file-order``: the oracle in arrival order, in two processes, and after a warm-up file."""
    from streams.replay import replay

    reference = reference_features(shop_frame, arrival="file")
    with gzip.open(shop_events, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    half = len(lines) // 2
    warm, rest = tmp_path / "warm.jsonl", tmp_path / "rest.jsonl"
    warm.write_bytes(b"".join(lines[:half]))
    rest.write_bytes(b"".join(lines[half:]))
    later = {json.loads(line)["event_id"] for line in lines[half:]} - {
        json.loads(line)["event_id"] for line in lines[:half]
    }
    whole, split = tmp_path / "whole", tmp_path / "split"
    replay(SPEC, shop_events, features_out=whole, file_order=True, jobs=2)
    replay(SPEC, rest, features_out=split, file_order=True, warmup=[warm])
    compared = []
    for etype in FEATURES:
        got = pd.read_parquet(whole / f"{etype}.parquet")
        ref = reference[etype]
        assert list(got["event_id"]) == list(ref["event_id"])  # arrival order, not ts order
        compared.append((etype, got, ref))
        after = pd.read_parquet(split / f"{etype}.parquet")
        tail = got[got["event_id"].isin(later)].reset_index(drop=True)
        assert len(after) == len(tail) > 0
        pd.testing.assert_frame_equal(after, tail, check_exact=True)
    _assert_features_match(compared)


@needs_engine
def test_engine_in_file_order_matches_reference(shop_events: Path, shop_frame: pd.DataFrame) -> None:
    """Late events: the file's own order (3% written up to an hour late) through the engine.

    Replay sorts its input by ts, so nothing arrives late there; the worker applies
    events as they arrive. Here the engine gets the events in file order, as a worker
    would from a producer that sends the file as written, and the oracle follows the
    same arrival order.
    """
    from entities.engine import Engine
    from entities.events import EventCodec, EventError
    from entities.spec import load_spec

    spec = load_spec(SPEC)
    codec = EventCodec(spec)
    with gzip.open(shop_events, "rb") as f:
        events = [codec.decode(line) for line in f if line.strip()]
    engine = Engine(spec)
    rows: dict[str, list[list[Any]]] = {t: [] for t in FEATURES}
    late = 0
    for start in range(0, len(events), 4096):
        result = engine.process(events[start : start + 4096])
        assert not [e for e, err in result.rejected if not isinstance(err, EventError)]
        for event, row, was_late in zip(result.scored, result.rows, result.late, strict=True):
            rows[event.type].append([event.event_id, event.entity_id, event.ts, *row])
            late += was_late
    assert late >= 100, f"only {late} late events were scored"
    reference = reference_features(shop_frame, arrival="file")
    compared = []
    for etype, names in FEATURES.items():
        got = pd.DataFrame(rows[etype], columns=["event_id", "entity_id", "ts", *names])
        ref = reference[etype]
        assert list(got["event_id"]) == list(ref["event_id"])  # same events, same arrival order
        compared.append((etype, got, ref))
    print(f"\n{late:,} late events scored")
    _assert_features_match(compared)


def _assert_features_match(compared: list[tuple[str, pd.DataFrame, pd.DataFrame]]) -> None:
    """Every feature of each (type, engine rows, oracle rows) within tolerance; prints the table."""
    total, lines = 0, []
    for etype, got, ref in compared:
        bad, table = compare_columns(got, ref, FEATURES[etype], prefix=f"{etype:<6} ")
        total += bad
        lines += table
    print(f"\n{'type':<6} {'feature':<30}{'mismatches':>11}{'max rel diff':>15}")
    print("\n".join(lines))
    assert total == 0, f"{total} feature mismatches:\n" + "\n".join(x for x in lines if " e.g. " in x)


def test_generated_data_has_the_hard_cases(
    shop_frame: pd.DataFrame, shop_reference: dict[str, pd.DataFrame]
) -> None:
    ev = shop_frame
    assert len(ev) >= 30_000
    kinds = ev["type"].value_counts()
    assert kinds["order"] > 10_000 and kinds["login"] > 15_000 and kinds["signup"] > 1_000

    # Late deliveries: events written after a newer event of the same user and type,
    # all within the one-hour allowed lateness.
    newest_before = ev.groupby(["entity_id", "type"])["ts"].transform(lambda ts: ts.cummax().shift())
    lateness = newest_before - ev["ts"]
    late = lateness > 0
    assert late.sum() >= 100
    assert lateness[late].max() <= HOUR

    # Equal timestamps across attributes, in both file orders.
    firsts = ev[ev["type"] != "signup"].groupby(["entity_id", "ts"])["type"].agg(list)
    mixed = firsts[firsts.map(lambda types: len(set(types)) > 1)]
    assert sum(types[0] == "login" for types in mixed) >= 20
    assert sum(types[0] == "order" for types in mixed) >= 20

    # Duplicated event ids, and orders of users without a signup.
    assert ev["event_id"].duplicated().sum() >= 50
    signed_up = set(ev.loc[ev["type"] == "signup", "entity_id"])
    assert len(set(ev.loc[ev["type"] == "order", "entity_id"]) - signed_up) >= 50
    orders = shop_reference["order"]
    assert orders["ship_country_mismatch"].isna().sum() >= 500

    # Users active over more than the 31-day retention, and eviction that shows:
    # an order whose user has logged in successfully before, but no such login
    # is retained any more.
    span = ev.groupby("entity_id")["ts"].agg(lambda s: s.max() - s.min())
    assert (span > 31 * DAY).sum() >= 500
    logins = ev[(ev["type"] == "login") & (ev["success"] == True)]  # noqa: E712
    first_success = logins.groupby("entity_id")["ts"].min()
    evicted = orders[
        orders["secs_since_last_success_login"].isna()
        & (orders["ts"] > orders["entity_id"].map(first_success).fillna(np.inf))
    ]
    assert len(evicted) >= 10

    # Fed in file order (as a stream would be), nothing is beyond the lateness.
    by_file = reference_features(ev, arrival="file")
    for etype in FEATURES:
        assert (
            len(by_file[etype])
            == len(shop_reference[etype])
            == ev.loc[ev["type"] == etype, "event_id"].nunique()
        )


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = _generate(tmp_path / "a.jsonl.gz", users=60, days=40, seed=3).read_bytes()
    b = _generate(tmp_path / "b.jsonl.gz", users=60, days=40, seed=3).read_bytes()
    c = _generate(tmp_path / "c.jsonl.gz", users=60, days=40, seed=4).read_bytes()
    assert a == b
    assert a != c
    first = json.loads(gzip.decompress(a).splitlines()[0])
    assert set(first) <= {"event_id", "entity_id", "type", "ts", "attrs", "label"}


# --- the oracle on hand-made events --------------------------------------------------------

T0 = 1_709_251_200_000  # 2024-03-01T00:00:00Z
R_DEG = 6371.0 * math.pi / 180.0  # km along the equator per degree of longitude


def _ev(eid: str, entity: str, etype: str, secs: int, label: int | None = 0, **attrs: Any) -> dict[str, Any]:
    ts_ms = T0 + secs * 1000
    # Every other event with an ISO timestamp: both wire forms are read.
    ts: int | str = ts_ms
    if int(eid[-1]) % 2:
        ts = pd.Timestamp(ts_ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    out = {"event_id": eid, "entity_id": entity, "type": etype, "ts": ts, "attrs": attrs}
    if label is not None:
        out["label"] = label
    return out


def _login(eid: str, secs: int, ip: str, device: str, success: bool, long: float) -> dict[str, Any]:
    return _ev(eid, "A", "login", secs, ip=ip, device=device, success=success, lat=0.0, long=long)


def _order(eid: str, entity: str, secs: int, amount: float, category: str, ship: str) -> dict[str, Any]:
    return _ev(eid, entity, "order", secs, amount=amount, category=category, ship_country=ship)


D31 = 31 * 86_400
HAND_MADE = [
    _ev("s1", "A", "signup", 0, label=None, country="DE", email_domain="x.de", channel="web"),
    _login("l1", 100, "ip1", "devA", True, 0.0),
    _login("l2", 200, "ip2", "devB", False, 0.0),
    _order("o1", "A", 200, 10.0, "books", "DE"),  # same second as l2, written after it: sees it
    _order("o2", "A", 300, 30.0, "toys", "FR"),  # same second as l3, written before it
    _login("l3", 300, "ip1", "devA", True, 1.0),
    _order("o3", "A", 86_500, 30.0, "books", "DE"),  # exactly 24 h after l1: l1 is out
    _order("o3", "A", 86_500, 30.0, "books", "DE"),  # duplicate: ignored
    _order("b1", "B", 5_000, 5.0, "music", "US"),  # B: no signup, no logins
    _order("b2", "B", 4_900, 5.0, "music", "US"),  # 100 s late in the file
    _order("b3", "B", 1_399, 7.0, "music", "US"),  # 3,601 s late: rejected when fed in file order
    _order("b4", "B", 1_400, 7.0, "music", "US"),  # 3,600 s late: just allowed
    _login("l4", 300 + D31, "ip3", "devC", False, 3.0),  # evicts l1..l3 (ts <= 300) after its row
    _order("o4", "A", 300 + D31, 50.0, "garden", "DE"),
]


def _hand_made(tmp_path: Path, arrival: str) -> dict[str, pd.DataFrame]:
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in HAND_MADE))
    return {k: v.set_index("event_id") for k, v in reference_features(read_events(path), arrival).items()}


def _row(frame: pd.DataFrame, eid: str) -> dict[str, float]:
    return {k: float(v) for k, v in frame.loc[eid].items() if k not in ("entity_id", "ts", "label")}


def _check(frame: pd.DataFrame, eid: str, expected: dict[str, float]) -> None:
    got = _row(frame, eid)
    assert list(got) == list(expected)
    for name, want in expected.items():
        if math.isnan(want):
            assert math.isnan(got[name]), f"{eid}.{name}: {got[name]} != nan"
        else:
            assert got[name] == pytest.approx(want, rel=1e-12, abs=1e-12), f"{eid}.{name}"


NAN = math.nan


def test_reference_on_hand_made_events(tmp_path: Path) -> None:
    ref = _hand_made(tmp_path, "sorted")
    orders, logins = ref["order"], ref["login"]
    assert list(orders.index) == ["o1", "o2", "b3", "b4", "b2", "b1", "o3", "o4"]  # arrival order
    assert list(logins.index) == ["l1", "l2", "l3", "l4"]

    order_cols = FEATURES["order"]

    def order(*values: float) -> dict[str, float]:
        return dict(zip(order_cols, values, strict=True))

    _check(orders, "o1", order(10, 1, 10, 0, 10, 1, 2, 1, 2, 2, 0, 100, 0, 1, 2))
    _check(orders, "o2", order(30, 2, 40, 1, 30, 2, 2, 1, 2, 2, 100, 200, 1, 2, 2))
    # 24 h window (100, 86500]: o1, o2, o3; l1 (at 100) out, l2 and l3 in; 7 d window holds l1.
    _check(orders, "o3", order(30, 3, 70, 1 / math.sqrt(2), 30, 2, 0, 1, 2, 2, 86_200, 86_200, 0, 3, 3))
    # l4 evicted l1..l3 (ts <= newest - 31 d): no successful login is retained any more.
    _check(orders, "o4", order(50, 1, 50, 0, 50, 1, 1, 1, 1, 1, 0, NAN, 0, 4, 4))
    _check(orders, "b3", order(7, 1, 7, 0, 7, 1, 0, 0, 0, 0, NAN, NAN, NAN, 1, 0))
    _check(orders, "b1", order(5, 4, 24, -1, 7, 1, 0, 0, 0, 0, NAN, NAN, NAN, 4, 0))

    login_cols = FEATURES["login"]

    def login(*values: float) -> dict[str, float]:
        return dict(zip(login_cols, values, strict=True))

    _check(logins, "l1", login(1, 0, 1, 1, 1, 1, NAN, NAN, 0, 0))
    _check(logins, "l2", login(0, 1, 2, 2, 2, 1, 100, 0, 0, 0))  # o1 arrives after l2
    _check(logins, "l3", login(1, 1, 3, 2, 2, 2, 100, R_DEG, 2, 40))  # o2 arrived before l3
    # Retention runs after the row: l3 is still the previous login of l4.
    _check(logins, "l4", login(0, 1, 1, 1, 1, 1, D31, 2 * R_DEG, 0, 0))
    assert orders["label"].tolist() == [0.0] * 8


def test_reference_fed_in_file_order(tmp_path: Path) -> None:
    orders = _hand_made(tmp_path, "file")["order"]
    assert list(orders.index) == ["o1", "o2", "o3", "b1", "b2", "b4", "o4"]  # b3 rejected
    counts = orders[["orders_count_24h", "amount_sum_24h", "orders_count_lifetime"]]
    # b2 is late: its window holds items with ts <= its own, its lifetime count all appended.
    assert counts.loc["b1"].tolist() == [1, 5, 1]
    assert counts.loc["b2"].tolist() == [1, 5, 2]
    assert counts.loc["b4"].tolist() == [1, 7, 3]
