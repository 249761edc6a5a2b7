"""Card-fraud features on the Sparkov transactions: one record per card (cc_num).

Fixed attributes come from ``profile`` events, the ``transactions`` repeated
attribute from ``transaction`` events; every transaction is scored. The label
(``is_fraud``) travels beside the event and is never a feature input.
"""

from __future__ import annotations

import datetime as dt
import math
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
    Mean,
    Repeated,
    Scored,
    Spec,
    Std,
    Sum,
    TimeSince,
    ZScore,
    days,
    hours,
    same_as_current,
)

Lat = Annotated[float, Meta(ge=-90.0, le=90.0)]
Lon = Annotated[float, Meta(ge=-180.0, le=180.0)]
Text = Annotated[str, Meta(max_length=200)]
MS_PER_DAY = 86_400_000
EARTH_RADIUS_KM = 6371.0
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def hour_of_day(event: Event, fixed: dict[str, Any]) -> float:
    """UTC hour of the transaction."""
    return float(event.ts // 3_600_000 % 24)


def age_years(event: Event, fixed: dict[str, Any]) -> float:
    """Card holder's age in years on the transaction's UTC date."""
    dob = fixed.get("dob")
    if dob is None:
        return math.nan
    return (event.ts // MS_PER_DAY - (dob.toordinal() - _EPOCH_ORDINAL)) / 365.25


def city_pop(event: Event, fixed: dict[str, Any]) -> float:
    """Population of the card holder's city."""
    pop = fixed.get("city_pop")
    return math.nan if pop is None else float(pop)


def is_male(event: Event, fixed: dict[str, Any]) -> float:
    """1.0 if the card holder's gender is "M", else 0.0."""
    return 1.0 if fixed.get("gender") == "M" else 0.0


def dist_km_home_merchant(event: Event, fixed: dict[str, Any]) -> float:
    """Haversine distance from the holder's home to the merchant."""
    lat, lon = fixed.get("lat"), fixed.get("long")
    if lat is None or lon is None:
        return math.nan
    a = event.attrs
    p1, p2 = math.radians(lat), math.radians(a.merch_lat)
    dp, dl = p2 - p1, math.radians(a.merch_long - lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


TXN = "transactions"

spec = Spec(
    name="fraud",
    entity="card",
    key="cc_num",
    fixed=Fixed(
        event_type="profile",
        fields={
            "first": Text,
            "last": Text,
            "gender": Text,
            "street": Text,
            "city": Text,
            "state": Text,
            "zip": Text,
            "lat": Lat,
            "long": Lon,
            "city_pop": Annotated[int, Meta(ge=0)],
            "job": Text,
            "dob": dt.date,
        },
        # Personal data: left out of /entities answers (features still read them).
        pii={"first", "last", "street", "dob"},
    ),
    repeated={
        TXN: Repeated(
            event_type="transaction",
            fields={
                "merchant": Text,
                "category": Text,
                "amt": float,
                "merch_lat": Lat,
                "merch_long": Lon,
            },
            retention=days(31),
            max_count=5_000,
        )
    },
    allowed_lateness=days(1),
    scored=[
        Scored(
            "transaction",
            features=[
                Current("amt"),
                Derived("hour_of_day", hour_of_day),
                Aggregation(TXN, Count(), windows=[hours(1), hours(24), days(7)], name="txn_count"),
                Aggregation(TXN, Sum("amt"), windows=[hours(24)]),
                Aggregation(TXN, Mean("amt"), windows=[days(7)]),
                Aggregation(TXN, Max("amt"), windows=[days(30)]),
                Aggregation(TXN, Std("amt"), windows=[days(30)]),
                Aggregation(TXN, ZScore("amt"), windows=[days(30)]),
                Aggregation(TXN, Distinct("merchant"), windows=[days(7)]),
                Aggregation(
                    TXN,
                    Count(),
                    windows=[hours(24)],
                    where=same_as_current("category"),
                    name="category_count",
                ),
                TimeSince(TXN, name="secs_since_prev_txn"),
                Aggregation(TXN, Count(), windows=[LIFETIME], name="txn_count"),
                Aggregation(TXN, Mean("amt"), windows=[LIFETIME]),
                Derived("age_years", age_years),
                Derived("city_pop", city_pop),
                Derived("is_male", is_male),
                Derived("dist_km_home_merchant", dist_km_home_merchant),
            ],
        )
    ],
)
