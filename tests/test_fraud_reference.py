"""Compare the replay CLI's fraud features with the independent oracle.

``test_replay_matches_reference`` runs ``python -m streams.cli replay`` on the
first 20,000 rows of fraudTest and checks every feature of every event against
``tests/reference_fraud.py`` (relative tolerance 1e-9). Run with ``-s`` to see
the per-feature table of max relative differences.

``test_reference_on_hand_made_csv`` checks the oracle itself on a tiny CSV with
hand-computed values (tie in time, left-open window bound, a 25 h gap, an
out-of-order row).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feature_compare import compare_columns
from reference_fraud import FEATURES, reference_features

REPO_ROOT = Path(__file__).resolve().parents[1]
# 150,000 rows of fraudTest span ~2 months: 30-day windows evict and same-second
# ties per card occur (the 20,000-row sample spans 7 days and has none).
N_ROWS = 150_000 if (REPO_ROOT.parent / "shared" / "data" / "fraudTest.csv.gz").exists() else 20_000


def _fraud_csv() -> Path:
    full = REPO_ROOT.parent / "shared" / "data" / "fraudTest.csv.gz"
    if full.exists():
        return full
    return REPO_ROOT / "examples" / "fraud" / "sample.csv.gz"


def test_replay_matches_reference(tmp_path: Path) -> None:
    csv = _fraud_csv()
    out = tmp_path / "features.parquet"
    cmd = [
        sys.executable,
        "-m",
        "streams.cli",
        "replay",
        "--spec",
        "examples/fraud/spec.py",
        "--input",
        str(csv),
        "--adapter",
        "examples/fraud/sparkov.py",
        "--limit",
        str(N_ROWS),
        "--features-out",
        str(out),
    ]
    proc = subprocess.run(cmd, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (
        f"replay failed (rc={proc.returncode})\nstdout:\n{proc.stdout[-4000:]}"
        f"\nstderr:\n{proc.stderr[-4000:]}"
    )
    assert out.exists(), (
        f"replay did not write {out}; tmp_path has {sorted(p.name for p in tmp_path.iterdir())}"
    )

    got = pd.read_parquet(out)
    assert list(got.columns) == ["event_id", "entity_id", "ts", *FEATURES, "label"]
    assert len(got) == N_ROWS
    assert got["event_id"].is_unique

    ref = reference_features(csv, N_ROWS)
    assert set(got["event_id"]) == set(ref["event_id"])

    got = got.set_index("event_id").loc[ref["event_id"]].reset_index()
    assert (got["entity_id"].astype(str).to_numpy() == ref["entity_id"].to_numpy()).all(), (
        "entity_id differs from str(int(cc_num)) (note: two cards in the first "
        "20,000 rows are written with a leading zero in the CSV)"
    )

    total, lines = compare_columns(got, ref, FEATURES)
    print(f"\n{'feature':<30}{'mismatches':>11}{'max rel diff':>15}")
    print("\n".join(lines))
    assert total == 0, f"{total} feature mismatches:\n" + "\n".join(x for x in lines if " e.g. " in x)
    np.testing.assert_array_equal(
        got["label"].to_numpy(dtype=np.float64), ref["label"].to_numpy(dtype=np.float64)
    )


_HEADER = (
    ",trans_date_trans_time,cc_num,merchant,category,amt,first,last,gender,street,"
    "city,state,zip,lat,long,city_pop,job,dob,trans_num,unix_time,merch_lat,"
    "merch_long,is_fraud"
)


def _row(
    i: int,
    ts: str,
    cc: str,
    merchant: str,
    cat: str,
    amt: str,
    gender: str = "F",
    fraud: int = 0,
) -> str:
    return (
        f"{i},{ts},{cc},fraud_{merchant},{cat},{amt},Ann,Lee,{gender},1 Main St,"
        f"Town,NY,10001,0.0,0.0,1000,Clerk,2000-06-21,t{i:03d},0,0.0,1.0,{fraud}"
    )


def test_reference_on_hand_made_csv(tmp_path: Path) -> None:
    card_a, card_b = "4000000000000001", "060000000002"  # card_b has a leading zero, as in the data
    lines = [
        _HEADER,
        _row(0, "2020-06-21 00:00:00", card_a, "m1", "grocery_pos", "10.00"),
        # row 1 ties row 0 in time; row 4 is exactly 24h after rows 0 and 1;
        # row 5 comes 25h after row 4; row 6 is out of time order in the file.
        _row(1, "2020-06-21 00:00:00", card_a, "m2", "grocery_pos", "20.00"),
        _row(2, "2020-06-21 01:00:00", card_b, "m1", "misc_net", "5.00", gender="M"),
        _row(3, "2020-06-21 06:30:00", card_a, "m1", "gas_transport", "30.00"),
        _row(4, "2020-06-22 00:00:00", card_a, "m3", "grocery_pos", "40.00"),
        _row(5, "2020-06-23 01:00:00", card_a, "m1", "grocery_pos", "50.00", fraud=1),
        _row(6, "2020-06-21 00:30:00", card_b, "m2", "misc_net", "7.00", gender="M"),
    ]
    csv = tmp_path / "tiny.csv"
    csv.write_text("\n".join(lines) + "\n")

    ref = reference_features(csv, 20_000).set_index("event_id")
    assert list(ref.columns) == ["entity_id", *FEATURES, "label"]
    assert list(ref.index) == [f"t{i:03d}" for i in range(7)]  # file row order
    assert (ref.dtypes[FEATURES] == np.float64).all()
    assert ref.loc["t002", "entity_id"] == "60000000002"

    def col(name: str) -> list[float]:
        return ref[name].tolist()

    # Lists below are per row t000 .. t006, in file order.
    assert col("txn_count_24h") == [1.0, 2.0, 2.0, 3.0, 2.0, 1.0, 1.0]
    assert col("txn_count_1h") == [1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert col("amt_sum_24h") == [10.0, 30.0, 12.0, 60.0, 70.0, 50.0, 7.0]
    assert col("category_count_24h") == [1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    assert col("merchant_distinct_7d") == [1.0, 2.0, 2.0, 2.0, 3.0, 3.0, 1.0]
    assert col("txn_count_lifetime") == [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 1.0]

    secs = col("secs_since_prev_txn")
    assert math.isnan(secs[0]) and math.isnan(secs[6])
    assert secs[1:6] == [0.0, 1800.0, 23400.0, 63000.0, 90000.0]

    std = col("amt_std_30d")
    expected_std = [
        0.0,
        5.0,
        1.0,
        math.sqrt(200 / 3),
        math.sqrt(125.0),
        math.sqrt(200.0),
        0.0,
    ]
    assert std == pytest.approx(expected_std, rel=1e-12, abs=1e-15)

    z = col("amt_zscore_30d")
    assert z == pytest.approx(
        [
            0.0,
            1.0,
            -1.0,
            10 / math.sqrt(200 / 3),
            15 / math.sqrt(125.0),
            2 / math.sqrt(2.0),
            0.0,
        ],
        rel=1e-12,
        abs=1e-15,
    )
    assert col("amt_max_30d") == [10.0, 20.0, 7.0, 30.0, 40.0, 50.0, 7.0]
    assert col("amt_mean_lifetime") == pytest.approx([10, 15, 6, 20, 25, 30, 7], rel=1e-15)
    assert col("hour_of_day") == [0.0, 0.0, 1.0, 6.0, 0.0, 1.0, 0.0]
    assert col("age_years")[0] == 7305 / 365.25 == 20.0
    assert col("age_years")[5] == pytest.approx(7307 / 365.25, rel=1e-15)
    assert col("is_male") == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert col("dist_km_home_merchant") == pytest.approx([6371.0 * math.pi / 180.0] * 7, rel=1e-12)
    assert col("label") == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
