"""Binary-classifier metrics on numpy arrays: ROC-AUC, PR-AUC, thresholds, PSI.

Written here rather than taken from sklearn so backtests depend on nothing but
numpy; ``tests/test_models_metrics.py`` holds them to sklearn's results. Ties in
scores are handled as sklearn does: tied scores form one step of a curve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Stands in for an empty bin in PSI, whose log would otherwise be infinite.
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class Curve:
    """Cumulative counts at each distinct score, highest score first.

    At ``thresholds[i]``, alerting on ``score >= thresholds[i]`` gives ``tp[i]`` true
    and ``fp[i]`` false positives.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int


def curve(y_true: np.ndarray, scores: np.ndarray) -> Curve:
    """Counts of true and false positives at every distinct score of ``scores``."""
    y = _labels(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # The last index of each run of equal scores closes one step of the curve.
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=np.int64)
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    positives = int(y.sum())
    return Curve(s[last], tp, fp, positives, len(y) - positives)


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and thresholds, starting at (0, 0)."""
    c = curve(y_true, scores)
    _need_both_classes(c)
    fpr = np.r_[0.0, c.fp / c.negatives]
    tpr = np.r_[0.0, c.tp / c.positives]
    return fpr, tpr, np.r_[np.inf, c.thresholds]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids: a tie counts half, as in Mann-Whitney U)."""
    fpr, tpr, _ = roc_curve(y_true, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def precision_recall_curve(
    y_true: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and thresholds, from the highest threshold down to the lowest."""
    c = curve(y_true, scores)
    _need_both_classes(c)
    precision = c.tp / (c.tp + c.fp)
    recall = c.tp / c.positives
    return precision, recall, c.thresholds


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision: sum of precision times each step in recall.

    Step-wise, not trapezoidal: interpolating between PR points overstates the
    area, which is why sklearn and LightGBM's ``average_precision`` use steps too.
    """
    precision, recall, _ = precision_recall_curve(y_true, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


pr_auc = average_precision


@dataclass(frozen=True)
class ThresholdRow:
    """What alerting on ``score >= threshold`` yields."""

    threshold: float
    alerts: int
    alert_rate: float
    true_positives: int
    precision: float
    recall: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return asdict(self)


def at_thresholds(y_true: np.ndarray, scores: np.ndarray, thresholds: list[float]) -> list[ThresholdRow]:
    """Alerts, alert rate, precision and recall for alerting on ``score >= t`` per threshold.

    Precision is NaN when nothing is alerted; recall NaN when there are no positives.
    """
    y = _labels(y_true)
    s = np.asarray(scores, dtype=np.float64)
    ordered = np.sort(s)
    positive_scores = np.sort(s[y == 1])
    rows = []
    for t in thresholds:
        alerts = len(s) - int(np.searchsorted(ordered, t, side="left"))
        tp = len(positive_scores) - int(np.searchsorted(positive_scores, t, side="left"))
        rows.append(
            ThresholdRow(
                threshold=float(t),
                alerts=alerts,
                alert_rate=alerts / len(s) if len(s) else float("nan"),
                true_positives=tp,
                precision=tp / alerts if alerts else float("nan"),
                recall=tp / len(positive_scores) if len(positive_scores) else float("nan"),
            )
        )
    return rows


def thresholds_for_alert_rates(scores: np.ndarray, rates: list[float]) -> list[float]:
    """The score thresholds that alert on (about) the given fractions of events."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if not len(s):
        return [float("nan")] * len(rates)
    return [float(s[min(len(s) - 1, max(0, int(np.ceil(r * len(s))) - 1))]) for r in rates]


# --- population stability ------------------------------------------------------------


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (duplicates dropped for tied scores)."""
    qs = np.linspace(0, 1, bins + 1)[1:-1]
    return np.unique(np.quantile(np.asarray(reference, dtype=np.float64), qs))


def bin_fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fraction of ``values`` in each of the ``len(edges) + 1`` bins (right-closed)."""
    idx = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return counts / max(1, counts.sum())


def psi_from_fractions(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins; empty bins count as ``PSI_EPSILON``."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` (quantile bins of expected).

    Rule of thumb: < 0.1 stable, 0.1-0.25 worth a look, > 0.25 shifted.
    """
    edges = quantile_edges(expected, bins)
    return psi_from_fractions(bin_fractions(expected, edges), bin_fractions(actual, edges))


def summary(y_true: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Rows, positives, base rate, ROC-AUC and PR-AUC (NaN AUCs when a class is missing)."""
    y = _labels(y_true)
    n, pos = len(y), int(y.sum())
    both = 0 < pos < n
    return {
        "rows": n,
        "positives": pos,
        "base_rate": pos / n if n else float("nan"),
        "roc_auc": roc_auc(y, scores) if both else float("nan"),
        "pr_auc": average_precision(y, scores) if both else float("nan"),
    }


def _labels(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 (drop unlabelled rows first)")
    return y.astype(np.int64)


def _need_both_classes(c: Curve) -> None:
    if c.positives == 0 or c.negatives == 0:
        raise ValueError(
            f"need both classes for a curve, got {c.positives} positives and {c.negatives} negatives"
        )
