"""Replay: a recorded file through the same core as the worker, into Parquet.

Output columns: ``event_id, entity_id, ts`` + one column per feature in spec order +
``label``; with a model, a second file of scores. Features of each event are
point-in-time correct by construction: they are computed from the record as it was
when the event arrived, exactly as the worker computes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from entities.engine import Engine
from entities.events import Event, EventCodec
from entities.spec import load_spec_module
from models.artifact import Artifact, load
from streams.sources import NotSorted, Rejected, read_events

log = logging.getLogger(__name__)
BATCH = 4096


@dataclass
class ReplaySummary:
    """Counts and speed of one replay."""

    events: int = 0
    scored: int = 0
    entities: int = 0
    rejected: int = 0
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        """Events (profile and scored) per wall-clock second."""
        return self.events / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        """The one-line summary printed at the end."""
        return (
            f"replayed {self.events:,} events ({self.scored:,} scored) for {self.entities:,} "
            f"entities; rejected {self.rejected:,}, duplicates {self.duplicates:,}; "
            f"{self.seconds:.1f} s, {self.events_per_s:,.0f} events/s"
        )


class _Columns:
    """Output columns collected per batch; a matrix per batch keeps memory compact."""

    def __init__(self) -> None:
        self.event_id: list[str] = []
        self.entity_id: list[str] = []
        self.ts: list[int] = []
        self.label: list[float] = []
        self.late: list[bool] = []
        self.features: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []


def replay(
    spec_path: Path,
    input_path: Path,
    features_out: Path | None = None,
    limit: int | None = None,
    model_dir: Path | None = None,
    scores_out: Path | None = None,
    on_reject: Callable[[Rejected | tuple[Event, str]], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """Replay ``input_path`` and write Parquet; return the summary."""
    module = load_spec_module(spec_path)
    spec = module.spec
    codec = EventCodec(spec)
    artifact = load(model_dir, spec) if model_dir is not None else None
    started = time.perf_counter()
    try:
        engine, cols, summary = _run(module, codec, input_path, limit, artifact, on_reject, on_progress, sort=False)
    except NotSorted:
        log.warning("%s is not sorted by ts: replaying again in sorted mode (in memory)", input_path)
        engine, cols, summary = _run(module, codec, input_path, limit, artifact, on_reject, on_progress, sort=True)
    summary.entities = len(engine.records)
    if features_out is not None:
        _write(features_out, _feature_table(spec.feature_names, cols))
    if artifact is not None and scores_out is not None:
        _write(scores_out, _score_table(artifact, cols))
    summary.seconds = time.perf_counter() - started
    return summary


def _run(
    module: Any,
    codec: EventCodec,
    input_path: Path,
    limit: int | None,
    artifact: Artifact | None,
    on_reject: Callable[[Any], None] | None,
    on_progress: Callable[[int], None] | None,
    sort: bool,
) -> tuple[Engine, _Columns, ReplaySummary]:
    engine = Engine(module.spec)
    cols = _Columns()
    summary = ReplaySummary()
    n_features = len(module.spec.feature_names)
    for batch in _batches(read_events(input_path, codec, module, limit, sort=sort), summary, on_reject):
        result = engine.process(batch)
        summary.events += len(batch)
        summary.scored += len(result.scored)
        summary.duplicates += result.duplicates
        for event, err in result.rejected:
            summary.rejected += 1
            if on_reject is not None:
                on_reject((event, str(err)))
        matrix = np.array(result.rows, dtype=np.float64).reshape(-1, n_features)
        cols.features.append(matrix)
        if artifact is not None and len(matrix):
            cols.scores.append(artifact.predict(matrix))
        for event in result.scored:
            cols.event_id.append(event.event_id)
            cols.entity_id.append(event.entity_id)
            cols.ts.append(event.ts)
            cols.label.append(np.nan if event.label is None else event.label)
        cols.late.extend(result.late)
        if on_progress is not None:
            on_progress(len(batch))
    return engine, cols, summary


def _batches(
    source: Iterator[Event | Rejected],
    summary: ReplaySummary,
    on_reject: Callable[[Any], None] | None,
) -> Iterator[list[Event]]:
    batch: list[Event] = []
    for item in source:
        if isinstance(item, Rejected):
            summary.rejected += 1
            if on_reject is not None:
                on_reject(item)
            continue
        batch.append(item)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _keys(cols: _Columns) -> dict[str, pa.Array]:
    return {
        "event_id": pa.array(cols.event_id, pa.string()),
        "entity_id": pa.array(cols.entity_id, pa.string()),
        "ts": pa.array(cols.ts, pa.timestamp("ms", tz="UTC")),
    }


def _feature_table(names: list[str], cols: _Columns) -> pa.Table:
    matrix = np.concatenate(cols.features) if cols.features else np.empty((0, len(names)))
    data = _keys(cols)
    for j, name in enumerate(names):
        data[name] = pa.array(matrix[:, j], pa.float64())
    data["label"] = pa.array(cols.label, pa.float64())
    return pa.table(data)


def _score_table(artifact: Artifact, cols: _Columns) -> pa.Table:
    data = _keys(cols)
    data["score"] = pa.array(np.concatenate(cols.scores) if cols.scores else [], pa.float64())
    data["label"] = pa.array(cols.label, pa.float64())
    data["late"] = pa.array(cols.late, pa.bool_())
    n = len(cols.event_id)
    data["model"] = pa.array([artifact.name] * n, pa.string())
    data["model_version"] = pa.array([artifact.version] * n, pa.string())
    return pa.table(data)


def _write(path: Path, table: pa.Table) -> None:
    """Write atomically: a half-written Parquet never takes the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
