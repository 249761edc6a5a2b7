"""One partition's decoded events into its records, around the ``Engine.process`` replay calls too.

Around the engine the worker has three things to do: load the records the events
touch, let a checkpoint in progress copy the records it has yet to encode before
they change, and skip the events applied before.
"""

from __future__ import annotations

from typing import Any

from entities.engine import BatchResult
from entities.events import Event
from streams.checkpoint import Checkpoint
from streams.sequencing import not_yet_applied
from streams.state import Partition
from streams.telemetry import WorkerMetrics


def apply(
    part: Partition,
    events: list[Event],
    origin: dict[int, Any],
    encoding: Checkpoint | None,
    metrics: WorkerMetrics,
) -> BatchResult:
    """Apply the events not applied before to the partition's records; note the records changed.

    ``encoding``: the checkpoint whose records are still being encoded, if any.
    """
    touched = {e.entity_id for e in events}
    loads = part.cache.loads
    quarantined = part.cache.load_counting(touched)
    if part.cache.loads > loads:
        metrics.records_loaded.inc(part.cache.loads - loads)
    if quarantined:
        metrics.quarantined.inc(quarantined)
    if encoding is not None:  # the checkpoint in progress keeps what it needs
        encoding.copy_before_change(part, touched)
    fresh, skipped = not_yet_applied(part, events, origin)
    if skipped:
        metrics.replayed.inc(skipped)
    result = part.engine.process(fresh)
    part.cache.mark_changed(result.changed)
    return result
