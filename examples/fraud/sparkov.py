"""Sparkov CSV rows -> supernova events (pure: columns in, events out).

Each row is a ``transaction`` event (event_id = trans_num, ts = trans_date_trans_time
as UTC). A ``profile`` event with the card holder's fields is emitted just before a
card's first transaction and again whenever those fields change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from entities.events import Event, EventCodec, EventError

PROFILE_FIELDS = (
    "first",
    "last",
    "gender",
    "street",
    "city",
    "state",
    "zip",
    "lat",
    "long",
    "city_pop",
    "job",
    "dob",
)
TXN_FIELDS = ("merchant", "category", "amt", "merch_lat", "merch_long")


class SparkovMapping:
    """Stateful row mapper: remembers each card's last profile to emit changes only."""

    ts_column = "trans_date_trans_time"
    ts_format = "%Y-%m-%d %H:%M:%S"
    columns = ("cc_num", "trans_num", "is_fraud", *TXN_FIELDS, *PROFILE_FIELDS)

    def __init__(self, codec: EventCodec) -> None:
        self.codec = codec
        self.profiles: dict[str, tuple[Any, ...]] = {}

    def events(self, cols: dict[str, Sequence[Any]], i: int, ts: int) -> Iterator[Event]:
        """The events of row ``i`` of a column batch (profile first, if it changed)."""
        try:
            entity_id = str(int(cols["cc_num"][i]))
        except (TypeError, ValueError):
            raise EventError("cc_num", f"not a card number: {cols['cc_num'][i]!r}") from None
        event_id = cols["trans_num"][i]
        label = _label(cols["is_fraud"][i])
        txn = self.codec.build(
            "transaction", event_id, entity_id, ts, {f: cols[f][i] for f in TXN_FIELDS}, label
        )
        profile = tuple(cols[f][i] for f in PROFILE_FIELDS)
        if self.profiles.get(entity_id) != profile:
            attrs = dict(zip(PROFILE_FIELDS, profile, strict=True))
            event = self.codec.build("profile", f"{event_id}:profile", entity_id, ts, attrs)
            self.profiles[entity_id] = profile
            yield event
        yield txn


def _label(value: Any) -> float:
    if value in ("0", "1", 0, 1):
        return float(value)
    raise EventError("is_fraud", f"label must be 0 or 1, got {value!r}")
