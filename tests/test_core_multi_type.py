"""Two scored event types in one spec: rows per type, with that type's width and values.

A small shop: logins and orders, both scored, reading each other. The values are
worked out by hand from the semantics (own attribute includes the event; another
attribute contributes what arrived before with ts <= t; late events see their own
slice), including a login and an order in the same second and a late event of each
type.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from entities.engine import Engine
from entities.events import Event, EventCodec
from entities.spec import (
    LIFETIME,
    Aggregation,
    Count,
    Current,
    Derived,
    FieldAgg,
    Fixed,
    Repeated,
    Scored,
    Spec,
    SpecError,
    Sum,
    TimeSince,
    col,
    days,
    hours,
)

T0 = 1_700_000_000_000
S = 1_000
H = 3_600 * S
KM_PER_DEGREE = 6371.0 * math.pi / 180
NAN = math.nan
FAILED = col("success") == False  # noqa: E712 - builds a filter, not a bool
SUCCEEDED = col("success") == True  # noqa: E712


def ship_country_mismatch(event: Event, fixed: dict[str, Any]) -> float:
    country = fixed.get("country")
    return NAN if country is None else float(event.attrs.ship_country != country)


def km_from_prev_login(event: Event, fixed: dict[str, Any], record: Any) -> float:
    logins = record["logins"]  # up to and including this login
    if len(logins) < 2:
        return NAN
    lat1, lon1 = math.radians(logins["lat"][-2]), math.radians(logins["long"][-2])
    lat2, lon2 = math.radians(event.attrs.lat), math.radians(event.attrs.long)
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


SPEC = Spec(
    name="mini-shop",
    entity="user",
    key="entity_id",
    fixed=Fixed("signup", {"country": str}),
    repeated={
        "logins": Repeated(
            "login", {"ip": str, "success": bool, "lat": float, "long": float}, retention=days(31)
        ),
        "orders": Repeated("order", {"amount": float, "ship_country": str}, retention=days(31)),
    },
    allowed_lateness=hours(1),
    scored=[
        Scored(
            "order",
            [
                Current("amount"),
                Aggregation("orders", Count(), windows=[hours(24)]),
                Aggregation("logins", Count(), windows=[hours(1)]),
                Aggregation(
                    "logins",
                    Count(),
                    windows=[hours(24)],
                    where=FAILED,
                    name="failed_logins",
                ),
                TimeSince("logins", name="secs_since_last_login"),
                TimeSince("logins", where=SUCCEEDED, name="secs_since_last_success_login"),
                Derived("ship_country_mismatch", ship_country_mismatch),
                Aggregation("logins", Count(), windows=[LIFETIME]),
            ],
        ),
        Scored(
            "login",
            [
                Current("success"),
                Aggregation("logins", Count(), windows=[hours(1)], where=FAILED, name="failed_logins"),
                TimeSince("logins"),
                Derived("km_from_prev_login", km_from_prev_login),
                Aggregation("orders", Sum("amount"), windows=[hours(24)]),
            ],
        ),
    ],
)

ORDER_NAMES = [
    "amount",
    "orders_count_24h",
    "logins_count_1h",
    "failed_logins_24h",
    "secs_since_last_login",
    "secs_since_last_success_login",
    "ship_country_mismatch",
    "logins_count_lifetime",
]
LOGIN_NAMES = ["success", "failed_logins_1h", "secs_since_prev_login", "km_from_prev_login", "amount_sum_24h"]


def login(eid: str, ts: int, success: bool, long: float) -> tuple[str, str, int, dict[str, Any]]:
    return ("login", eid, ts, {"ip": "10.0.0.1", "success": success, "lat": 0.0, "long": long})


def order(eid: str, ts: int, amount: float, ship: str) -> tuple[str, str, int, dict[str, Any]]:
    return ("order", eid, ts, {"amount": amount, "ship_country": ship})


EVENTS = [
    ("signup", "s1", T0, {"country": "FR"}),
    login("L1", T0, False, 0.0),
    login("L2", T0 + 10 * S, True, 1.0),
    order("O1", T0 + 10 * S, 50.0, "FR"),  # same second as L2, after it in the file: L2 counts
    login("L3", T0 + 2 * H, False, 1.0),
    order("O2", T0 + 2 * H + 30 * 60 * S, 20.0, "US"),
    login("L4", T0 + H + 30 * 60 * S, False, 2.0),  # late by 30 min
    order("O3", T0 + 2 * H + 20 * 60 * S, 5.0, "FR"),  # late by 10 min
]

EXPECTED = {  # event id -> (late, row)
    "L1": (False, [0.0, 1.0, NAN, NAN, 0.0]),
    "L2": (False, [1.0, 1.0, 10.0, KM_PER_DEGREE, 0.0]),
    "O1": (False, [50.0, 1.0, 2.0, 1.0, 0.0, 0.0, 0.0, 2.0]),
    "L3": (False, [0.0, 1.0, 7190.0, 0.0, 50.0]),
    "O2": (False, [20.0, 2.0, 1.0, 2.0, 1800.0, 8990.0, 1.0, 3.0]),
    "L4": (True, [0.0, 1.0, 5390.0, KM_PER_DEGREE, 50.0]),
    "O3": (True, [5.0, 2.0, 2.0, 3.0, 1200.0, 8390.0, 0.0, 4.0]),
}


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)


def test_spec_lists_each_scored_type_with_its_names() -> None:
    assert SPEC.scored_types == ["order", "login"]
    assert SPEC.feature_names_of("order") == ORDER_NAMES
    assert SPEC.feature_names_of("login") == LOGIN_NAMES
    with pytest.raises(SpecError, match=r"order.*login"):
        SPEC.feature_names  # noqa: B018
    with pytest.raises(SpecError, match="signup"):
        SPEC.feature_names_of("signup")


@pytest.mark.parametrize("batch_size", [1, 3, len(EVENTS)])
def test_rows_per_type_have_their_width_and_values(batch_size: int) -> None:
    codec = EventCodec(SPEC)
    engine = Engine(SPEC)
    events = [codec.build(t, eid, "u1", ts, attrs) for t, eid, ts, attrs in EVENTS]
    scored, rows, late = [], [], []
    for i in range(0, len(events), batch_size):
        result = engine.process(events[i : i + batch_size])
        assert not result.rejected
        scored += result.scored
        rows += result.rows
        late += result.late
    assert [e.event_id for e in scored] == list(EXPECTED)
    for event, row, was_late in zip(scored, rows, late, strict=True):
        names = SPEC.feature_names_of(event.type)
        assert len(row) == len(names)
        want_late, want = EXPECTED[event.event_id]
        assert was_late == want_late, event.event_id
        bad = [(n, g, w) for n, g, w in zip(names, row, want, strict=True) if not same(g, w)]
        assert not bad, (event.event_id, bad)


@dataclass(frozen=True, repr=False)
class Median(FieldAgg):
    """An aggregation the engine has no running form of: one class, computed from the window."""

    op = "median"

    def of(self, values: Sequence[Any], current: Any) -> float:
        return float(statistics.median(values)) if values else NAN


def test_a_new_aggregation_is_one_class() -> None:
    spec = dataclasses.replace(
        SPEC,
        scored=[
            Scored("order", [Aggregation("orders", Median("amount"), windows=[hours(24)])]),
            Scored("login", [Aggregation("orders", Median("amount"), windows=[hours(24)])]),
        ],
    )
    assert spec.feature_names_of("order") == ["amount_median_24h"]
    codec = EventCodec(spec)
    result = Engine(spec).process([codec.build(t, eid, "u1", ts, attrs) for t, eid, ts, attrs in EVENTS])
    got = {e.event_id: row[0] for e, row in zip(result.scored, result.rows, strict=True)}
    # own attribute (O3 is late: its slice holds O1 and itself); logins see orders arrived before
    want = {"L1": NAN, "L2": NAN, "O1": 50.0, "L3": 50.0, "O2": 35.0, "L4": 50.0, "O3": 27.5}
    assert got.keys() == want.keys()
    assert all(same(got[k], want[k]) for k in want), got
