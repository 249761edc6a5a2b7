"""Backtest: score a replay's features with a model (and a challenger) and measure it.

The feature Parquet (one scored event type) already holds point-in-time features,
so scoring is ``Artifact.predict`` on the feature matrix in spec order, exactly as
replay and the worker score. Metrics can be sliced by any columns of the source
file, given per event id (:class:`Slices`; ``supernova backtest --slice-by COL
--source FILE`` reads them). Writes ``metrics.json``, ``scores.parquet`` and a
self-contained ``report.html`` to the output directory.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from entities.spec import Spec
from models import evaluation
from models.artifact import Artifact, ArtifactError, load
from models.dataset import Dataset, iso_utc, read_features
from models.train import to_epoch_ms

log = logging.getLogger(__name__)

THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
ALERT_RATES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05]
UNKNOWN_SLICE = "(not in source)"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.parquet"
REPORT_FILE = "report.html"


@dataclass
class Slices:
    """Values to slice the metrics by: ``columns[name][i]`` belongs to event ``event_id[i]``."""

    source: str  # where they come from (the file), for the report
    event_id: list[str]
    columns: dict[str, list[str]]


@dataclass
class ModelScores:
    """One model's scores over the backtest rows."""

    role: str
    artifact: Artifact
    scores: np.ndarray


@dataclass
class Backtest:
    """Everything a report needs: labelled rows, each model's scores, and the metrics."""

    data: Dataset
    models: list[ModelScores]
    metrics: dict[str, Any]
    slices: dict[str, np.ndarray] = field(default_factory=dict)


def backtest(
    model_dir: str | Path,
    features_parquet: str | Path,
    out_dir: str | Path,
    challenger_dir: str | Path | None = None,
    *,
    spec: Spec,
    slices: Slices | None = None,
) -> Backtest:
    """Score, measure, and write ``metrics.json``, ``scores.parquet`` and ``report.html``."""
    from models.report import write_report  # matplotlib is imported only when reporting

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    everything = read_features(features_parquet, spec)
    data = everything.labelled()
    if not len(data):
        raise ValueError(f"{features_parquet}: no labelled rows to backtest on")
    roles = [("champion", model_dir)] + ([("challenger", challenger_dir)] if challenger_dir else [])
    loaded = _load_all(roles, spec)
    for _, art in loaded:
        if art.event_type != data.event_type:
            raise ArtifactError(
                f"{art.path}: model {art.name} {art.version} scores {art.event_type!r} events; "
                f"{features_parquet} holds {data.event_type!r} rows"
            )
    scored = [ModelScores(role, art, art.predict(data.features)) for role, art in loaded]
    warnings = [note for role, art in loaded if (note := _seen_in_training(role, art, data))]
    notes = list(warnings)
    if len(everything) > len(data):
        notes.append(f"{len(everything) - len(data):,} rows without a label were left out.")
    by_slice = _slices(data, slices, notes)
    result = Backtest(data, scored, {}, by_slice)
    result.metrics = {
        "data": {
            "features": str(features_parquet),
            "event_type": data.event_type,
            "source": slices.source if slices else None,
            "rows": len(data),
            "positives": int(data.label.sum()),
            "from": iso_utc(int(data.ts.min())),
            "to": iso_utc(int(data.ts.max())),
        },
        "models": {s.role: _model_metrics(s, data, by_slice, notes) for s in scored},
        "notes": notes,
        "warnings": warnings,
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(_json_safe(result.metrics), indent=2) + "\n")
    _write_scores(out_dir / SCORES_FILE, data, scored)
    write_report(out_dir / REPORT_FILE, result)
    log.info("backtest of %d rows written to %s in %.1f s", len(data), out_dir, time.perf_counter() - started)
    return result


def _seen_in_training(role: str, art: Artifact, data: Dataset) -> str | None:
    """A warning when rows fall in the period the model was trained and validated on, else None."""
    train, valid = art.manifest.train, art.manifest.valid
    if "from" not in train:
        return None
    until = valid.get("to") or train["to"]
    # The manifest's times are cut to the second (iso_utc): its last second is inside.
    start, end = to_epoch_ms(train["from"]), to_epoch_ms(until) + 999
    seen = int(((data.ts >= start) & (data.ts <= end)).sum())
    if not seen:
        return None
    log.warning("%s: %d of %d rows fall in %s's training period", role, seen, len(data), art.name)
    return (
        f"{seen:,} of {len(data):,} rows ({seen / len(data):.0%}) fall in the period the {role} "
        f"({art.name} {art.version}) was trained and validated on, {train['from']} to {until}: "
        "its metrics on them are optimistic."
    )


def _load_all(roles: list[tuple[str, str | Path]], spec: Spec) -> list[tuple[str, Artifact]]:
    return [(role, load(path, spec)) for role, path in roles]


def _model_metrics(
    s: ModelScores, data: Dataset, slices: dict[str, np.ndarray], notes: list[str]
) -> dict[str, Any]:
    y, p = data.label, s.scores
    m = s.artifact.manifest
    alert_thresholds = evaluation.thresholds_for_alert_rates(p, ALERT_RATES)
    return {
        "name": m.name,
        "version": m.version,
        "path": str(s.artifact.path),
        "spec_hash": m.spec_hash,
        "trained": {"train": _without(m.train, "score_reference"), "valid": m.valid, "metrics": m.metrics},
        "overall": evaluation.summary(y, p),
        "thresholds": [r.as_dict() for r in evaluation.at_thresholds(y, p, THRESHOLDS)],
        "alert_rates": [
            {"target_alert_rate": rate, **r.as_dict()}
            for rate, r in zip(ALERT_RATES, evaluation.at_thresholds(y, p, alert_thresholds), strict=True)
        ],
        "by_month": _by_month(s, data, notes),
        "slices": {col: _by_slice(values, y, p) for col, values in slices.items()},
    }


def _by_month(s: ModelScores, data: Dataset, notes: list[str]) -> list[dict[str, Any]]:
    months = data.months()
    edges, expected, reference = _psi_reference(s, months, notes)
    train_to = s.artifact.manifest.train.get("to", "")
    rows = []
    for month in np.unique(months):
        mask = months == month
        row: dict[str, Any] = {"month": str(month), **evaluation.summary(data.label[mask], s.scores[mask])}
        row["psi"] = evaluation.psi_from_fractions(expected, evaluation.bin_fractions(s.scores[mask], edges))
        row["psi_reference"] = reference
        row["in_training_period"] = bool(train_to) and str(month) <= train_to[:7]
        rows.append(row)
    return rows


def _psi_reference(
    s: ModelScores, months: np.ndarray, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, str]:
    """The training scores' bins from the manifest, else the first month of these rows."""
    stored = s.artifact.manifest.train.get("score_reference")
    if stored:
        train = s.artifact.manifest.train
        return (
            np.asarray(stored["edges"]),
            np.asarray(stored["fractions"]),
            f"training period {train.get('from', '?')[:10]} .. {train.get('to', '?')[:10]}",
        )
    first = months == months.min()
    notes.append(
        f"{s.role}: its manifest has no training score distribution; PSI is measured "
        f"against the first month ({months.min()})."
    )
    edges = evaluation.quantile_edges(s.scores[first])
    return edges, evaluation.bin_fractions(s.scores[first], edges), f"first month {months.min()}"


def _by_slice(values: np.ndarray, y: np.ndarray, p: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for value in np.unique(values):
        mask = values == value
        rows.append({"value": str(value), **evaluation.summary(y[mask], p[mask])})
    return sorted(rows, key=lambda r: -r["rows"])


def _slices(data: Dataset, slices: Slices | None, notes: list[str]) -> dict[str, np.ndarray]:
    """Slice values per row, joined by event id."""
    if slices is None:
        notes.append(
            "No slices: the feature Parquet holds no source columns; pass --slice-by COL "
            "with --source FILE to join them from the source file."
        )
        return {}
    import pandas as pd

    source = pd.DataFrame({"event_id": slices.event_id, **slices.columns}, dtype=object)
    source = source.drop_duplicates("event_id").set_index("event_id")
    position = source.index.get_indexer(pd.Index(data.event_id.astype(str)))
    missing = int((position < 0).sum())
    if missing:
        notes.append(
            f"{missing:,} events were not found in {slices.source}; their slice is {UNKNOWN_SLICE!r}."
        )
    out = {}
    for col in slices.columns:
        values = source[col].to_numpy(dtype=object)
        out[col] = np.where(position >= 0, values[np.maximum(position, 0)], UNKNOWN_SLICE).astype(str)
    return out


def _write_scores(path: Path, data: Dataset, scored: list[ModelScores]) -> None:
    columns: dict[str, Any] = {
        "event_id": pa.array(data.event_id.astype(str), pa.string()),
        "entity_id": pa.array(data.entity_id.astype(str), pa.string()),
        "ts": pa.array(data.ts, pa.timestamp("ms", tz="UTC")),
        "label": pa.array(data.label, pa.float64()),
    }
    for s in scored:
        columns[f"score_{s.role}"] = pa.array(s.scores, pa.float64())
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(columns), tmp)
    tmp.replace(path)


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def _json_safe(value: Any) -> Any:
    """NaN/inf become null: metrics.json stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value
