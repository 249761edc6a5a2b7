"""The engine: records in memory plus the feature plan; replay and the worker share it.

``Engine.process`` takes events in arrival order and returns, for the batch, the
feature rows of scored events, the rejected events with their errors, and the
entities whose records changed (what a store must persist and a changelog carry).

An event reads and writes its own entity's record only, so a batch may be applied
entity by entity, each entity's events in arrival order, with exactly the same
results. ``process`` does that when entities repeat in the batch, so a record's
objects stay in the CPU cache across its events, and puts the results back in
arrival order.

Rows have the width of ``spec.feature_names_of(event.type)`` of their scored event;
consumers group them by ``event.type``.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from entities.events import Event, EventError
from entities.features import FeaturePlan
from entities.record import RecordCodec, SupernovaRecord
from entities.spec import Spec


@dataclass
class BatchResult:
    """What one batch of events did."""

    scored: list[Event] = field(default_factory=list)
    rows: list[list[float]] = field(default_factory=list)
    rejected: list[tuple[Event, EventError]] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    duplicates: int = 0
    late: list[bool] = field(default_factory=list)  # per scored event: older than its entity's newest


GROUP_MIN_EVENTS = 64  # smaller batches rarely repeat an entity: applied as they came
GROUP_MAX_SHARE = 0.75  # entities per event above which grouping is not worth its cost


def feature_matrix(rows: list[list[float]], width: int) -> np.ndarray:
    """Feature rows as one float64 matrix, filled in one flat pass."""
    return np.fromiter(chain.from_iterable(rows), np.float64, len(rows) * width).reshape(len(rows), width)


class Engine:
    """Applies events to records with one FeaturePlan; records live in ``records``."""

    def __init__(
        self,
        spec: Spec,
        records: MutableMapping[str, SupernovaRecord] | None = None,
        plan: FeaturePlan | None = None,
    ) -> None:
        """``plan``: a FeaturePlan of ``spec`` to share (it holds no record state), else a new one."""
        self.spec = spec
        self.plan = FeaturePlan(spec) if plan is None else plan
        self.codec = RecordCodec(spec)
        self.records: MutableMapping[str, SupernovaRecord] = {} if records is None else records
        # Event type -> its repeated attribute (to tell whether a scored event was late).
        self._attr_of = {r.event_type: name for name, r in spec.repeated.items()}

    def record(self, entity_id: str) -> SupernovaRecord:
        """The entity's record, created empty on first sight."""
        rec = self.records.get(entity_id)
        if rec is None:
            rec = self.records[entity_id] = self.codec.new(entity_id)
        return rec

    def process(self, events: Iterable[Event]) -> BatchResult:
        """Apply events in order per entity; duplicates are skipped, bad events are rejected."""
        batch = events if isinstance(events, list) else list(events)
        order = _entity_order(batch)
        if order is None:
            return self._apply(batch)[0]
        out, scored_at, rejected_at = self._apply([batch[i] for i in order])
        return _in_arrival_order(out, [order[k] for k in scored_at], [order[k] for k in rejected_at])

    def _apply(self, events: list[Event]) -> tuple[BatchResult, list[int], list[int]]:
        """Apply events in list order; also the list positions of the scored and rejected."""
        out = BatchResult()
        apply = self.plan.apply
        records = self.records
        attr_of = self._attr_of
        scored_at: list[int] = []
        rejected_at: list[int] = []
        # Bound methods in locals: this loop runs once per event.
        changed, scored, rows, late = out.changed.add, out.scored.append, out.rows.append, out.late.append
        at = scored_at.append
        for k, event in enumerate(events):
            entity_id = event.entity_id
            try:
                rec = records[entity_id]
            except KeyError:
                rec = self.record(entity_id)
            dups = rec.duplicates
            try:
                row = apply(rec, event)
            except EventError as err:
                out.rejected.append((event, err))
                rejected_at.append(k)
                continue
            changed(entity_id)
            if row is not None:
                scored(event)
                rows(row)
                at(k)
                # A scored event becomes its attribute's newest unless it was late.
                late(rec.last_ts[attr_of[event.type]] != event.ts)
            elif rec.duplicates != dups:
                out.duplicates += 1
        return out, scored_at, rejected_at


def _entity_order(events: list[Event]) -> list[int] | None:
    """Positions of ``events`` grouped by entity (arrival order within each), or None.

    None when the batch is small or its entities rarely repeat: then grouping costs
    more than it saves and the batch is applied as it came.
    """
    n = len(events)
    if n < GROUP_MIN_EVENTS:
        return None
    groups: dict[str, list[int]] = {}
    for i, event in enumerate(events):
        try:
            groups[event.entity_id].append(i)
        except KeyError:
            groups[event.entity_id] = [i]
    if len(groups) > GROUP_MAX_SHARE * n:
        return None
    return list(chain.from_iterable(groups.values()))


def _in_arrival_order(out: BatchResult, scored_at: list[int], rejected_at: list[int]) -> BatchResult:
    """``out`` with its scored and rejected events sorted by their arrival positions."""
    back = sorted(range(len(scored_at)), key=scored_at.__getitem__)
    scored, rows, late = out.scored, out.rows, out.late
    out.scored = [scored[j] for j in back]
    out.rows = [rows[j] for j in back]
    out.late = [late[j] for j in back]
    if rejected_at:
        rejected = out.rejected
        out.rejected = [rejected[j] for j in sorted(range(len(rejected_at)), key=rejected_at.__getitem__)]
    return out
