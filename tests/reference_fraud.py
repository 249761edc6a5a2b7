"""Independent oracle for the fraud example's features.

This module recomputes the 19 fraud features straight from the Sparkov CSV with
plain pandas / numpy / math, following the written feature definitions only.
It deliberately imports nothing from the project (``entities``, ``models``,
``streams``): ``tests/test_fraud_reference.py`` compares the replay CLI's
output against it, so sharing code would defeat the purpose.

Definitions (entity = ``cc_num``):

* Each CSV row is a transaction event ``e`` of card ``u`` at time
  ``t = trans_date_trans_time`` read as UTC (second resolution).
* Arrival order = file order, sorted stably by ``t`` (ties keep file order).
* A window of width ``w`` is ``(t - w, t]`` and holds ``u``'s transactions that
  arrived up to and including ``e``. So ``e`` counts, and for ties in ``t`` a
  row later in arrival order is *not* in the window of an earlier row.
* Std is the population std (ddof 0), computed with two passes and
  ``math.fsum`` over each window's values (no online add/remove formula).

Windows are computed per card by integer position: for the card's ``k``-th
transaction the window is positions ``[lo, k]`` with
``lo = searchsorted(ts, t_k - w, side="right")``, which implements both the
left-open bound and the tie rule.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES: list[str] = [
    "amt",
    "hour_of_day",
    "txn_count_1h",
    "txn_count_24h",
    "txn_count_7d",
    "amt_sum_24h",
    "amt_mean_7d",
    "amt_max_30d",
    "amt_std_30d",
    "amt_zscore_30d",
    "merchant_distinct_7d",
    "category_count_24h",
    "secs_since_prev_txn",
    "txn_count_lifetime",
    "amt_mean_lifetime",
    "age_years",
    "city_pop",
    "is_male",
    "dist_km_home_merchant",
]

HOUR = 3600
DAY = 24 * HOUR
W_1H = HOUR
W_24H = DAY
W_7D = 7 * DAY
W_30D = 30 * DAY

ZSCORE_MIN_STD = 1e-9
EARTH_RADIUS_KM = 6371.0

_STR_COLS = [
    "trans_date_trans_time",
    "cc_num",
    "merchant",
    "category",
    "gender",
    "dob",
    "trans_num",
]


def _read(csv_path: str | Path, nrows: int | None) -> pd.DataFrame:
    df = pd.read_csv(
        csv_path,
        nrows=nrows,
        index_col=0,
        dtype={c: str for c in _STR_COLS},
        keep_default_na=False,  # a merchant called "NA" must stay a string
    )
    for c in ("amt", "lat", "long", "merch_lat", "merch_long", "city_pop", "is_fraud"):
        df[c] = df[c].astype("float64")
    return df.reset_index(drop=True)


def _epoch_seconds(s: pd.Series) -> np.ndarray:
    t = pd.to_datetime(s, format="%Y-%m-%d %H:%M:%S", utc=True)
    # Unit-independent (pandas 3 parses to datetime64[us], not [ns]).
    secs = (t - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return secs.to_numpy(dtype=np.int64)


def _pop_std(xs: list[float]) -> float:
    n = len(xs)
    mean = math.fsum(xs) / n
    return math.sqrt(math.fsum((x - mean) * (x - mean) for x in xs) / n)


def _haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlmb = np.radians(lon2) - np.radians(lon1)
    a = np.sin(dphi / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def reference_features(csv_path: str | Path, nrows: int | None = 20_000) -> pd.DataFrame:
    """Features for the first ``nrows`` data rows of ``csv_path``, in file row order.

    Columns: ``event_id`` (trans_num), ``entity_id`` (str of the integer cc_num),
    the 19 ``FEATURES`` as float64, ``label`` (float is_fraud).
    """
    df = _read(csv_path, nrows)
    n = len(df)
    secs = _epoch_seconds(df["trans_date_trans_time"])
    entity = np.array([str(int(c)) for c in df["cc_num"]], dtype=object)
    amt = df["amt"].to_numpy(dtype=np.float64)
    merchant = df["merchant"].to_numpy(dtype=object)
    category = df["category"].to_numpy(dtype=object)

    out = {name: np.full(n, np.nan, dtype=np.float64) for name in FEATURES}

    # Arrival order: stable sort by time; then group positions per card, keeping
    # arrival order inside each card.
    arrival = np.argsort(secs, kind="stable")
    per_card: dict[str, list[int]] = {}
    for row in arrival:
        per_card.setdefault(entity[row], []).append(int(row))

    for rows_list in per_card.values():
        rows = np.asarray(rows_list, dtype=np.int64)
        ts = secs[rows]
        a = amt[rows].tolist()
        m = merchant[rows].tolist()
        c = category[rows].tolist()
        lo = {w: np.searchsorted(ts, ts - w, side="right") for w in (W_1H, W_24H, W_7D, W_30D)}
        lo1h, lo24, lo7d, lo30 = (lo[w].tolist() for w in (W_1H, W_24H, W_7D, W_30D))
        for k, row in enumerate(rows.tolist()):
            end = k + 1  # e itself is the last element of every window
            out["txn_count_1h"][row] = end - lo1h[k]
            out["txn_count_24h"][row] = end - lo24[k]
            out["txn_count_7d"][row] = end - lo7d[k]

            w24 = a[lo24[k] : end]
            out["amt_sum_24h"][row] = math.fsum(w24)
            out["category_count_24h"][row] = sum(1 for x in c[lo24[k] : end] if x == c[k])

            w7 = a[lo7d[k] : end]
            out["amt_mean_7d"][row] = math.fsum(w7) / len(w7)
            out["merchant_distinct_7d"][row] = len(set(m[lo7d[k] : end]))

            w30 = a[lo30[k] : end]
            mean30 = math.fsum(w30) / len(w30)
            std30 = _pop_std(w30)
            out["amt_max_30d"][row] = max(w30)
            out["amt_std_30d"][row] = std30
            out["amt_zscore_30d"][row] = 0.0 if std30 < ZSCORE_MIN_STD else (a[k] - mean30) / std30

            out["secs_since_prev_txn"][row] = float(ts[k] - ts[k - 1]) if k > 0 else np.nan
            out["txn_count_lifetime"][row] = end
            out["amt_mean_lifetime"][row] = math.fsum(a[:end]) / end

    # Stateless features.
    t_utc = pd.to_datetime(df["trans_date_trans_time"], format="%Y-%m-%d %H:%M:%S", utc=True)
    out["amt"] = amt.copy()
    out["hour_of_day"] = t_utc.dt.hour.to_numpy(dtype=np.float64)
    dob = pd.to_datetime(df["dob"], format="%Y-%m-%d")
    days = [(ti.date() - di.date()).days for ti, di in zip(t_utc.tolist(), dob.tolist(), strict=True)]
    out["age_years"] = np.asarray(days, dtype=np.float64) / 365.25
    out["city_pop"] = df["city_pop"].to_numpy(dtype=np.float64)
    out["is_male"] = (df["gender"] == "M").to_numpy(dtype=np.float64)
    out["dist_km_home_merchant"] = _haversine_km(
        df["lat"].to_numpy(np.float64),
        df["long"].to_numpy(np.float64),
        df["merch_lat"].to_numpy(np.float64),
        df["merch_long"].to_numpy(np.float64),
    )

    result = pd.DataFrame(
        {
            "event_id": df["trans_num"].to_numpy(dtype=object),
            "entity_id": entity,
            **{name: np.asarray(out[name], dtype=np.float64) for name in FEATURES},
            "label": df["is_fraud"].to_numpy(dtype=np.float64),
        }
    )
    return result
