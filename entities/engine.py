"""The engine: records in memory plus the feature plan; replay and the worker share it.

``Engine.process`` takes events in arrival order and returns, for the batch, the
feature rows of scored events, the rejected events with their errors, and the
entities whose records changed (what a store must persist and a changelog carry).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field

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


class Engine:
    """Applies events to records with one FeaturePlan; records live in ``records``."""

    def __init__(self, spec: Spec, records: MutableMapping[str, SupernovaRecord] | None = None) -> None:
        self.spec = spec
        self.plan = FeaturePlan(spec)
        self.codec = RecordCodec(spec)
        self.records: MutableMapping[str, SupernovaRecord] = {} if records is None else records
        self._scored_name = spec.scored_repeated

    def record(self, entity_id: str) -> SupernovaRecord:
        """The entity's record, created empty on first sight."""
        rec = self.records.get(entity_id)
        if rec is None:
            rec = self.records[entity_id] = self.codec.new(entity_id)
        return rec

    def process(self, events: Iterable[Event]) -> BatchResult:
        """Apply events in order; duplicates are skipped, bad events are rejected."""
        out = BatchResult()
        apply = self.plan.apply
        records = self.records
        scored_name = self._scored_name
        # Bound methods in locals: this loop runs once per event.
        changed, scored, rows, late = out.changed.add, out.scored.append, out.rows.append, out.late.append
        for event in events:
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
                continue
            changed(entity_id)
            if row is not None:
                scored(event)
                rows(row)
                # A scored event becomes its entity's newest unless it was late.
                late(rec.last_ts[scored_name] != event.ts)
            elif rec.duplicates != dups:
                out.duplicates += 1
        return out
