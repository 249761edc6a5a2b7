"""Shop features: one record per user, fed by signups, logins and orders.

Fixed attributes come from ``signup`` events; ``logins`` and ``orders`` are repeated
attributes kept 31 days. Both logins and orders are scored, each with its own feature
list and its own model. Labels travel beside the events and are never a feature
input. The generator (``generate.py``) and the walk-through (docs/spec-shop.md)
explain the data and every declaration below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

from msgspec import Meta

from entities.events import Event
from entities.spec import (
    LIFETIME,
    Aggregation,
    Count,
    Current,
    Derived,
    Distinct,
    Fixed,
    Max,
    Repeated,
    Scored,
    Spec,
    Sum,
    TimeSince,
    ZScore,
    col,
    days,
    hours,
    same_as_current,
)

Text = Annotated[str, Meta(max_length=200)]
Lat = Annotated[float, Meta(ge=-90.0, le=90.0)]
Lon = Annotated[float, Meta(ge=-180.0, le=180.0)]
Amount = Annotated[float, Meta(ge=0.0)]
EARTH_RADIUS_KM = 6371.0
# Filters on logins (predicates built by col(), not Python comparisons).
FAILED = col("success") == False  # noqa: E712
SUCCEEDED = col("success") == True  # noqa: E712


def ship_country_mismatch(event: Event, fixed: Mapping[str, Any]) -> float:
    """1.0 if the order ships outside the signup country, 0.0 if not, NaN without a signup."""
    country = fixed.get("country")
    if country is None:
        return math.nan
    return 1.0 if event.attrs.ship_country != country else 0.0


def km_from_prev_login(event: Event, fixed: Mapping[str, Any], record: Any) -> float:
    """Haversine km between this login and the previous one; NaN for the first login.

    ``record["logins"]`` holds the retained logins in ts order (ties in arrival
    order) up to and including this one: the previous login is the one just before
    the newest with ts <= this login's ts.
    """
    logins = record["logins"]
    i = len(logins) - 1
    while i >= 0 and logins.ts[i] > event.ts:
        i -= 1
    if i < 1:
        return math.nan
    lat1, lon1 = logins["lat"][i - 1], logins["long"][i - 1]
    lat2, lon2 = event.attrs.lat, event.attrs.long
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, h)))


spec = Spec(
    name="shop",
    entity="user",
    key="entity_id",
    fixed=Fixed("signup", {"country": Text, "email_domain": Text, "channel": Text}),
    repeated={
        "logins": Repeated(
            "login",
            {"ip": Text, "device": Text, "success": bool, "lat": Lat, "long": Lon},
            retention=timedelta(days=31),
        ),
        "orders": Repeated(
            "order",
            {"amount": Amount, "category": Text, "ship_country": Text},
            retention=timedelta(days=31),
        ),
    },
    # A stream may deliver an event up to an hour after a newer one of its user and
    # attribute; older than that it is rejected. Replay sorts files, so never late there.
    allowed_lateness=timedelta(hours=1),
    scored=[
        Scored(
            "order",
            features=[
                Current("amount"),
                Aggregation("orders", Count(), windows=[hours(24)]),  # orders_count_24h
                Aggregation("orders", Sum("amount"), windows=[hours(24)]),  # amount_sum_24h
                Aggregation("orders", ZScore("amount"), windows=[days(30)]),  # amount_zscore_30d
                Aggregation("orders", Max("amount"), windows=[days(7)]),  # amount_max_7d
                Aggregation("orders", Distinct("category"), windows=[days(30)]),  # category_distinct_30d
                Aggregation("logins", Count(), windows=[hours(1)]),  # logins_count_1h
                # failed_logins_24h
                Aggregation("logins", Count(), windows=[hours(24)], where=FAILED, name="failed_logins"),
                Aggregation("logins", Distinct("ip"), windows=[hours(24)]),  # ip_distinct_24h
                Aggregation("logins", Distinct("device"), windows=[days(7)]),  # device_distinct_7d
                TimeSince("logins", name="secs_since_last_login"),
                TimeSince("logins", where=SUCCEEDED, name="secs_since_last_success_login"),
                Derived("ship_country_mismatch", ship_country_mismatch),
                Aggregation("orders", Count(), windows=[LIFETIME]),  # orders_count_lifetime
                Aggregation("logins", Count(), windows=[LIFETIME]),  # logins_count_lifetime
            ],
        ),
        Scored(
            "login",
            features=[
                Current("success"),
                # failed_logins_1h (the current login counts if it failed)
                Aggregation("logins", Count(), windows=[hours(1)], where=FAILED, name="failed_logins"),
                Aggregation("logins", Count(), windows=[hours(24)]),  # logins_count_24h
                Aggregation("logins", Distinct("ip"), windows=[hours(24)]),  # ip_distinct_24h
                Aggregation("logins", Distinct("device"), windows=[days(30)]),  # device_distinct_30d
                Aggregation(
                    "logins",
                    Count(),
                    windows=[days(30)],
                    where=same_as_current("device"),
                    name="same_device_count",
                ),  # same_device_count_30d
                TimeSince("logins", name="secs_since_prev_login"),
                Derived("km_from_prev_login", km_from_prev_login),
                Aggregation("orders", Count(), windows=[hours(24)]),  # orders_count_24h
                Aggregation("orders", Sum("amount"), windows=[hours(24)]),  # amount_sum_24h
            ],
        ),
    ],
)
