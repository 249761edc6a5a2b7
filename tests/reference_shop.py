"""Independent oracle for the shop example's features (issue 17).

This module recomputes every feature of both scored event types of
``examples/shop/spec.py`` from the wire events with plain pandas / math, following
the written definitions only. It imports nothing from the project (``entities``,
``models``, ``streams``): ``tests/test_shop_reference.py`` compares replay's output
with it, so sharing code would defeat the purpose. Every feature is recomputed from
the items by brute force (filter, then aggregate), never incrementally.

Rules (entity = ``entity_id``; ``t`` = the scored event's ts in epoch ms)
-------------------------------------------------------------------------
Arrival
    Arrival order is file order sorted stably by ts (``arrival="sorted"``, what
    replay and ``supernova produce`` do). ``arrival="file"`` takes file order as is,
    as a stream fed in file order would see it; only then can an event be late.
Per event, in arrival order, for its entity:
    1. ``signup`` (fixed): ignored if its event id was seen in a signup before;
       else each attribute it carries overwrites the entity's (last write wins).
    2. ``login`` / ``order`` (repeated attribute A = logins / orders):
       a. *duplicate*: its event id is that of an item A still retains -> ignored,
          no row. (Generated duplicates come minutes after the original, so "still
          retained" and "ever seen" agree on the data.)
       b. *too late*: ``t < newest(A) - allowed_lateness`` where newest(A) is the
          largest ts ever appended to A -> rejected, nothing changes, no row.
       c. the item is inserted into A's retained items after every item with
          ts <= t (ts order, ties in arrival order); A's lifetime count grows by 1.
       d. the feature row is computed (below), before retention.
       e. retention of A: items with ts <= (largest retained ts of A) - 31 days
          are dropped, then all but the newest 10,000 (max_count).
What a scored event sees
    own attribute A: its retained items with ts <= t (the event included; items
    that arrived before with equal ts included; in file mode, items that arrived
    before with ts > t excluded);
    other attribute B: B's retained items with ts <= t (all arrived before);
    fixed: the signup fields applied so far (a signup in the same ms written after
    the order is not seen).
Aggregates
    window w: the items above with ``t - w < ts <= t``; count, distinct (number of
    different values), sum (``math.fsum``) of an empty window are 0.0;
    max over the own attribute (never empty); population std by two passes with
    ``math.fsum``; zscore = (x - mean) / std, 0.0 when std < 1e-9;
    lifetime count: own A -> every item ever appended to A (this one included),
    other B -> every item ever appended to B so far; retention and ts do not matter;
    time-since: ``(t - ts) / 1000`` seconds to the newest qualifying item; own
    attribute: the item just before the current one in A's retained order (the
    newest other item with ts <= t); other B: the retained item with the largest
    ts <= t; NaN when none;
    km_from_prev_login: haversine (radius 6371.0 km) between the current login and
    that previous login; NaN when none;
    ship_country_mismatch: NaN without a signup country, else 1.0 if
    ship_country != country else 0.0.
"""

from __future__ import annotations

import bisect
import gzip
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ORDER_FEATURES: list[str] = [
    "amount",
    "orders_count_24h",
    "amount_sum_24h",
    "amount_zscore_30d",
    "amount_max_7d",
    "category_distinct_30d",
    "logins_count_1h",
    "failed_logins_24h",
    "ip_distinct_24h",
    "device_distinct_7d",
    "secs_since_last_login",
    "secs_since_last_success_login",
    "ship_country_mismatch",
    "orders_count_lifetime",
    "logins_count_lifetime",
]
LOGIN_FEATURES: list[str] = [
    "success",
    "failed_logins_1h",
    "logins_count_24h",
    "ip_distinct_24h",
    "device_distinct_30d",
    "same_device_count_30d",
    "secs_since_prev_login",
    "km_from_prev_login",
    "orders_count_24h",
    "amount_sum_24h",
]
FEATURES: dict[str, list[str]] = {"order": ORDER_FEATURES, "login": LOGIN_FEATURES}

SECOND = 1_000
HOUR = 3_600 * SECOND
DAY = 24 * HOUR
RETENTION = 31 * DAY
MAX_COUNT = 10_000
ALLOWED_LATENESS = HOUR
ZSCORE_MIN_STD = 1e-9
EARTH_RADIUS_KM = 6371.0
NAN = math.nan

ATTRIBUTE = {"login": "logins", "order": "orders"}
FIELDS = {
    "signup": ["country", "email_domain", "channel"],
    "login": ["ip", "device", "success", "lat", "long"],
    "order": ["amount", "category", "ship_country"],
}
# Attribute values as Python scalars, whatever dtype pandas chose for the column.
CONVERT: dict[str, Callable[[Any], Any]] = {
    "ip": str,
    "device": str,
    "success": bool,
    "lat": float,
    "long": float,
    "amount": float,
    "category": str,
    "ship_country": str,
}
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


# --- reading -----------------------------------------------------------------------------


def read_events(path: str | Path) -> pd.DataFrame:
    """The events of a JSON-lines(.gz) file in file order, one row per line.

    Columns: ``event_id, entity_id, type, ts`` (int epoch ms), ``label`` (float,
    NaN when absent) and one column per attribute of any type (None when absent).
    """
    opener: Callable[..., Any] = gzip.open if str(path).endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                ev = json.loads(line)
                attrs = ev.get("attrs", {})
                label = ev.get("label")
                rows.append(
                    {
                        "event_id": ev["event_id"],
                        "entity_id": ev["entity_id"],
                        "type": ev["type"],
                        "ts": ev["ts"],
                        "label": NAN if label is None else float(label),
                        **{k: attrs.get(k) for names in FIELDS.values() for k in names},
                    }
                )
    df = pd.DataFrame(rows)
    df["ts"] = [_ts_ms(v) for v in df["ts"]]
    return df


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _ts_ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int((pd.Timestamp(value) - _EPOCH) // pd.Timedelta(milliseconds=1))


# --- the per-entity simulation -----------------------------------------------------------


@dataclass
class _Item:
    ts: int
    event_id: str
    values: dict[str, Any]


@dataclass
class _Attribute:
    retained: list[_Item] = field(default_factory=list)
    appended: int = 0
    newest: int | None = None


@dataclass
class _Entity:
    fixed: dict[str, Any] = field(default_factory=dict)
    fixed_ids: set[str] = field(default_factory=set)
    attrs: dict[str, _Attribute] = field(
        default_factory=lambda: {"logins": _Attribute(), "orders": _Attribute()}
    )


def _in_window(items: Iterable[_Item], t: int, width: int) -> list[_Item]:
    return [it for it in items if t - width < it.ts <= t]


def _fsum(items: list[_Item], name: str) -> float:
    return math.fsum(float(it.values[name]) for it in items)


def _distinct(items: list[_Item], name: str) -> float:
    return float(len({it.values[name] for it in items}))


def _zscore(x: float, values: list[float]) -> float:
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) * (v - mean) for v in values) / n)
    return 0.0 if std < ZSCORE_MIN_STD else (x - mean) / std


def _secs_since(t: int, items: list[_Item]) -> float:
    """Seconds from the newest of ``items`` (ts <= t) to ``t``; NaN when empty."""
    return (t - max(it.ts for it in items)) / SECOND if items else NAN


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, max(0.0, h))))


def _failed(it: _Item) -> bool:
    return it.values["success"] is False


def _order_row(ent: _Entity, cur: _Item, orders: list[_Item], logins: list[_Item]) -> list[float]:
    """``orders``: own view (current included); ``logins``: retained, ts <= t."""
    t, x = cur.ts, float(cur.values["amount"])
    o24, o7, o30 = _in_window(orders, t, DAY), _in_window(orders, t, 7 * DAY), _in_window(orders, t, 30 * DAY)
    l1, l24, l7 = _in_window(logins, t, HOUR), _in_window(logins, t, DAY), _in_window(logins, t, 7 * DAY)
    country = ent.fixed.get("country")
    return [
        x,
        float(len(o24)),
        _fsum(o24, "amount"),
        _zscore(x, [float(it.values["amount"]) for it in o30]),
        max(float(it.values["amount"]) for it in o7),
        _distinct(o30, "category"),
        float(len(l1)),
        float(sum(1 for it in l24 if _failed(it))),
        _distinct(l24, "ip"),
        _distinct(l7, "device"),
        _secs_since(t, logins),
        _secs_since(t, [it for it in logins if it.values["success"] is True]),
        NAN if country is None else float(cur.values["ship_country"] != country),
        float(ent.attrs["orders"].appended),
        float(ent.attrs["logins"].appended),
    ]


def _login_row(ent: _Entity, cur: _Item, logins: list[_Item], orders: list[_Item]) -> list[float]:
    """``logins``: own view, the current login last; ``orders``: retained, ts <= t."""
    t = cur.ts
    l1, l24, l30 = _in_window(logins, t, HOUR), _in_window(logins, t, DAY), _in_window(logins, t, 30 * DAY)
    o24 = _in_window(orders, t, DAY)
    prev = logins[-2] if len(logins) > 1 else None
    v = cur.values
    return [
        1.0 if v["success"] else 0.0,
        float(sum(1 for it in l1 if _failed(it))),
        float(len(l24)),
        _distinct(l24, "ip"),
        _distinct(l30, "device"),
        float(sum(1 for it in l30 if it.values["device"] == v["device"])),
        NAN if prev is None else (t - prev.ts) / SECOND,
        NAN if prev is None else _haversine_km(prev.values["lat"], prev.values["long"], v["lat"], v["long"]),
        float(len(o24)),
        _fsum(o24, "amount"),
    ]


def _retain(attr: _Attribute) -> None:
    newest = attr.retained[-1].ts
    kept = [it for it in attr.retained if it.ts > newest - RETENTION]
    attr.retained = kept[-MAX_COUNT:]


def reference_features(
    events: pd.DataFrame, arrival: str = "sorted", allowed_lateness: int = ALLOWED_LATENESS
) -> dict[str, pd.DataFrame]:
    """Feature rows of the scored events (``order``, ``login``), each in arrival order.

    ``events`` as :func:`read_events` gives them (file order). Each frame has the
    columns ``event_id, entity_id, ts`` (int ms), the features of that type in spec
    order (float64) and ``label``; duplicates and rejected events have no row.
    """
    if arrival == "sorted":
        order = np.argsort(events["ts"].to_numpy(dtype=np.int64), kind="stable")
    elif arrival == "file":
        order = np.arange(len(events))
    else:
        raise ValueError(f"arrival must be 'sorted' or 'file', not {arrival!r}")
    records = events.iloc[order].to_dict("records")
    entities: dict[str, _Entity] = {}
    out: dict[str, list[list[Any]]] = {"order": [], "login": []}
    for ev in records:
        ent = entities.setdefault(ev["entity_id"], _Entity())
        etype, t = ev["type"], int(ev["ts"])
        if etype == "signup":
            if ev["event_id"] not in ent.fixed_ids:
                ent.fixed_ids.add(ev["event_id"])
                ent.fixed.update({k: ev[k] for k in FIELDS["signup"] if not _missing(ev[k])})
            continue
        name = ATTRIBUTE[etype]
        attr = ent.attrs[name]
        if any(it.event_id == ev["event_id"] for it in attr.retained):
            continue  # duplicate
        if attr.newest is not None and t < attr.newest - allowed_lateness:
            continue  # too late: rejected
        cur = _Item(t, ev["event_id"], {k: CONVERT[k](ev[k]) for k in FIELDS[etype]})
        pos = bisect.bisect_right([it.ts for it in attr.retained], t)
        attr.retained.insert(pos, cur)
        attr.appended += 1
        attr.newest = t if attr.newest is None else max(attr.newest, t)
        own = attr.retained[: pos + 1]
        other_name = "orders" if name == "logins" else "logins"
        other = [it for it in ent.attrs[other_name].retained if it.ts <= t]
        row = _order_row(ent, cur, own, other) if etype == "order" else _login_row(ent, cur, own, other)
        out[etype].append([ev["event_id"], ev["entity_id"], t, *row, ev["label"]])
        _retain(attr)
    return {
        etype: pd.DataFrame(rows, columns=["event_id", "entity_id", "ts", *FEATURES[etype], "label"]).astype(
            {name: np.float64 for name in [*FEATURES[etype], "label"]}
        )
        for etype, rows in out.items()
    }
