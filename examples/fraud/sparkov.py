"""Sparkov CSV rows -> supernova events (pure: columns in, events out).

Each row is a ``transaction`` event (event_id = trans_num, ts = trans_date_trans_time
as UTC). A ``profile`` event with the card holder's fields is emitted just before a
card's first transaction and again whenever those fields change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
LABELS = {"0": 0.0, "1": 1.0, 0: 0.0, 1: 1.0}
MAX_CACHED_IDS = 1 << 20  # card number spellings remembered (bounds memory on huge inputs)
# Cards whose last profile is remembered. Beyond, all are forgotten and each card's next
# row sends its profile again: the same values, harmless to the record.
MAX_PROFILES = 1 << 22


class SparkovMapping:
    """Stateful row mapper: remembers each card's last profile to emit changes only.

    A profile is remembered as its hash (~130 bytes a card instead of ~1 KB for the
    tuple of its twelve fields): on millions of cards the tuples were most of a
    replay's memory. Two consecutive profiles of one card with equal 64-bit hashes
    would hide the change; the odds are ~2**-64 per change.
    """

    ts_column = "trans_date_trans_time"
    ts_format = "%Y-%m-%d %H:%M:%S"
    columns = ("cc_num", "trans_num", "is_fraud", *TXN_FIELDS, *PROFILE_FIELDS)

    def __init__(self, codec: EventCodec) -> None:
        self.codec = codec
        self.profiles: dict[str, int] = {}  # entity id -> hash of its last profile
        self._entity_ids: dict[Any, str] = {}  # cc_num as written -> entity_id

    def events(self, cols: dict[str, Sequence[Any]], i: int, ts: int) -> tuple[Event, ...]:
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
        seen = hash(profile)
        if self.profiles.get(entity_id) != seen:
            attrs = dict(zip(PROFILE_FIELDS, profile, strict=True))
            event = self.codec.build("profile", f"{event_id}:profile", entity_id, ts, attrs)
            if len(self.profiles) >= MAX_PROFILES:
                self.profiles.clear()
            self.profiles[entity_id] = seen
            return event, txn
        return (txn,)

    def map_rows(
        self,
        cols: dict[str, Sequence[Any]],
        ts: Sequence[int],
        out: list[Any],
        reject: Callable[[int, EventError], None],
    ) -> None:
        """``events`` of every row, appended to ``out``; ``reject(i, error)`` for a bad row.

        The same events and errors as calling ``events`` row by row, faster: the
        transaction attrs of all rows are validated in one call, and only rows that
        are not plainly valid take the row-by-row path.
        """
        txn_attrs = self.codec.attrs_batch(
            "transaction", list(zip(*(cols[f] for f in TXN_FIELDS), strict=True))
        )
        if txn_attrs is None:  # some row is invalid: row by row, for its error
            txn_attrs = [None] * len(ts)
        profiles, entity_ids = self.profiles, self._entity_ids
        if len(entity_ids) > MAX_CACHED_IDS:
            entity_ids.clear()
        append = out.append
        rows = zip(
            cols["cc_num"],
            cols["trans_num"],
            cols["is_fraud"],
            ts,
            txn_attrs,
            zip(*(cols[f] for f in PROFILE_FIELDS), strict=True),
            strict=True,
        )
        for i, (cc_num, event_id, is_fraud, t, attrs, profile) in enumerate(rows):
            entity_id = entity_ids.get(cc_num)
            label = LABELS.get(is_fraud)
            if (
                entity_id is None
                or label is None
                or attrs is None
                or not event_id
                or profiles.get(entity_id) != hash(profile)
            ):
                # Unseen spelling of a card number, a bad value or a profile change.
                try:
                    out.extend(self.events(cols, i, t))
                except EventError as err:
                    reject(i, err)
                    continue
                entity_ids[cc_num] = str(int(cc_num))
                continue
            append(Event(event_id, entity_id, "transaction", t, attrs, label))


def _label(value: Any) -> float:
    if value in ("0", "1", 0, 1):
        return float(value)
    raise EventError("is_fraud", f"label must be 0 or 1, got {value!r}")


# What `--adapter examples/fraud/sparkov.py` (no :NAME) uses.
adapter = SparkovMapping
