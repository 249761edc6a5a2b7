"""Train a LightGBM model on replayed features of one scored event type and write it as an artifact.

The split is by time, never random: rows before ``valid_from`` train, rows from it
on validate and drive early stopping. A random split would put a card's later
transactions (and the rest of a fraud burst) beside its earlier ones and report
a score the model never earns in production.

Class imbalance (about 0.5% fraud) is left unweighted; lambda_l2 damps the leaf
values instead. PR-AUC ranks, and reweighting does not change the ideal ranking; it
multiplies the step taken on every fraud row, so trees chase single frauds and
validation swings, and it inflates scores so thresholds stop reading as
probabilities. A leaf of confidently scored rows has a tiny hessian sum, so a few
frauds in it give a huge leaf value; lambda_l2 adds to that denominator. The
experiments behind these defaults are in docs/performance.md (measured on the data
files before their 2026-12-02 regeneration). Pass ``params={"is_unbalance": True}``
or ``--param scale_pos_weight=10`` to compare again on other data.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from entities.spec import Spec
from models import evaluation
from models.artifact import MANIFEST_FILE, Artifact, Manifest, load, save
from models.dataset import Dataset, iso_utc, read_features

log = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_child_samples": 100,
    "feature_fraction": 0.9,
    "lambda_l2": 10.0,
    # Early stopping watches PR-AUC, the metric that matters at ~0.5% fraud.
    "metric": "average_precision",
    # Same data + same params -> byte-identical model.txt.
    "seed": 42,
    "deterministic": True,
    "force_col_wise": True,
    "num_threads": 2,
    "verbose": -1,
}
NUM_BOOST_ROUND = 200
EARLY_STOPPING_ROUNDS = 50
VALID_FRACTION = 0.2
SCORE_REFERENCE_BINS = 10


class TrainError(ValueError):
    """Training cannot start or its result cannot be saved; the message says why."""


def train(
    spec: Spec,
    features_parquet: str | Path,
    out_dir: str | Path,
    valid_from: str | dt.datetime | int | None = None,
    name: str | None = None,
    params: dict[str, Any] | None = None,
    num_boost_round: int = NUM_BOOST_ROUND,
    early_stopping_rounds: int = EARLY_STOPPING_ROUNDS,
    version: str | None = None,
) -> Artifact:
    """Train on a replay's feature Parquet, save the artifact to ``out_dir`` and load it back.

    The model scores the file's event type (its ``supernova.event_type`` metadata).
    ``name`` defaults to :func:`default_name`. ``valid_from`` (ISO date/time in UTC,
    datetime or epoch ms) starts the validation period; by default it is the time of
    the row at 80% of the (time-ordered) rows.
    """
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_FILE).exists():
        raise TrainError(f"{out_dir} already holds an artifact; choose a new --out directory")
    data = read_features(features_parquet, spec).labelled()
    event_type, feature_names = data.event_type, data.feature_names
    name = name or default_name(spec, event_type)
    train_set, valid_set, cut = split_by_time(data, valid_from)
    params = {**DEFAULT_PARAMS, **(params or {})}
    log.info(
        "training %s on %s rows (%d positive) before %s, validating on %s rows (%d positive)",
        event_type,
        f"{len(train_set):,}",
        int(train_set.label.sum()),
        iso_utc(cut),
        f"{len(valid_set):,}",
        int(valid_set.label.sum()),
    )
    dtrain = lgb.Dataset(
        train_set.features,
        train_set.label,
        feature_name=feature_names,
        free_raw_data=False,
    )
    dvalid = lgb.Dataset(valid_set.features, valid_set.label, reference=dtrain)
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=num_boost_round,
        valid_sets=[dvalid],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    valid_scores = np.asarray(booster.predict(valid_set.features, num_iteration=best))
    train_scores = np.asarray(booster.predict(train_set.features, num_iteration=best))
    valid_summary = evaluation.summary(valid_set.label, valid_scores)
    log.info(
        "best iteration %d: validation ROC-AUC %.4f, PR-AUC %.4f",
        best,
        valid_summary["roc_auc"],
        valid_summary["pr_auc"],
    )
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    gain = booster.feature_importance("gain", iteration=best)
    manifest = Manifest(
        name=name,
        version=version or created.strftime("%Y%m%dT%H%M%SZ"),
        feature_names=feature_names,
        spec_hash=spec.hash(),
        event_type=event_type,
        lightgbm_version=lgb.__version__,
        created_at=created.isoformat().replace("+00:00", "Z"),
        train={
            **_period(train_set),
            "features": str(features_parquet),
            "score_reference": score_reference(train_scores),
        },
        valid={**_period(valid_set), "valid_from": iso_utc(cut)},
        metrics={
            "evaluated_on": "valid",
            "roc_auc": valid_summary["roc_auc"],
            "pr_auc": valid_summary["pr_auc"],
            "base_rate": valid_summary["base_rate"],
            "best_iteration": best,
            "feature_importance_gain": {
                n: round(float(g), 3) for n, g in zip(feature_names, gain, strict=True)
            },
        },
        params={**params, "num_boost_round": num_boost_round, "early_stopping_rounds": early_stopping_rounds},
    )
    save(out_dir, booster, manifest)
    log.info("wrote %s %s to %s", manifest.name, manifest.version, out_dir)
    return load(out_dir, spec)


def default_name(spec: Spec, event_type: str) -> str:
    """The spec's name for a single-type spec, else ``<spec name>-<event type>``."""
    base = spec.name or "model"
    return base if len(spec.scored_types) == 1 else f"{base}-{event_type}"


def split_by_time(data: Dataset, valid_from: str | dt.datetime | int | None) -> tuple[Dataset, Dataset, int]:
    """Rows before ``valid_from`` and rows from it on (default: the time at 80% of rows)."""
    if not len(data):
        raise TrainError("no labelled rows to train on")
    if valid_from is None:
        cut = int(data.ts[min(len(data) - 1, int(len(data) * (1 - VALID_FRACTION)))])
    else:
        cut = to_epoch_ms(valid_from)
    before = data.ts < cut
    train_set, valid_set = data.take(before), data.take(~before)
    for part, rows in (("training", train_set), ("validation", valid_set)):
        positives = int(rows.label.sum())
        if positives == 0 or positives == len(rows):
            raise TrainError(
                f"the {part} period (split at {iso_utc(cut)}) has {len(rows):,} rows and {positives} "
                f"positives: it needs both classes; move --valid-from"
            )
    return train_set, valid_set, cut


def score_reference(scores: np.ndarray, bins: int = SCORE_REFERENCE_BINS) -> dict[str, list[float]]:
    """Quantile bins of the training scores: the baseline a backtest measures PSI against."""
    edges = evaluation.quantile_edges(scores, bins)
    return {"edges": edges.tolist(), "fractions": evaluation.bin_fractions(scores, edges).tolist()}


def to_epoch_ms(value: str | dt.datetime | int) -> int:
    """Epoch ms of an ISO date/time (UTC unless it has an offset), a datetime or epoch ms."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise TrainError(f"not an ISO date or date-time: {value!r} (e.g. 2020-03-01)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def _period(rows: Dataset) -> dict[str, Any]:
    return {
        "from": iso_utc(int(rows.ts.min())),
        "to": iso_utc(int(rows.ts.max())),
        "rows": len(rows),
        "positives": int(rows.label.sum()),
    }
