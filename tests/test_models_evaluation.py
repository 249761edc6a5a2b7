"""models.metrics against sklearn (and PSI against a hand computation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from models import evaluation


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    y = (rng.random(3000) < 0.03).astype(int)
    continuous = rng.random(3000) + 0.4 * y
    return [
        ("continuous", y, continuous),
        ("heavy ties", y, np.round(continuous, 1)),
        ("tiny", np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.9])),
        ("all scores equal", np.array([0, 1, 0, 1]), np.full(4, 0.5)),
        ("perfect", np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])),
        ("inverted", np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])),
    ]


@pytest.mark.parametrize(("name", "y", "s"), _cases(), ids=[c[0] for c in _cases()])
def test_aucs_equal_sklearn(name: str, y: np.ndarray, s: np.ndarray) -> None:
    assert evaluation.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert evaluation.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize(("name", "y", "s"), _cases(), ids=[c[0] for c in _cases()])
def test_curves_equal_sklearn(name: str, y: np.ndarray, s: np.ndarray) -> None:
    fpr, tpr, thr = evaluation.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    precision, recall, pr_thr = evaluation.precision_recall_curve(y, s)
    sk_p, sk_r, sk_t = sk.precision_recall_curve(y, s)
    # sklearn lists thresholds ascending and appends the (precision 1, recall 0) end point.
    np.testing.assert_allclose(precision, sk_p[:-1][::-1])
    np.testing.assert_allclose(recall, sk_r[:-1][::-1])
    np.testing.assert_allclose(pr_thr, sk_t[::-1])


def test_precision_recall_at_thresholds_equal_sklearn() -> None:
    _, y, s = _cases()[1]
    for row in evaluation.at_thresholds(y, s, [0.0, 0.3, 0.5, 0.9, 1.2, 2.0]):
        predicted = (s >= row.threshold).astype(int)
        assert row.alerts == predicted.sum()
        assert row.alert_rate == pytest.approx(predicted.mean())
        assert row.recall == pytest.approx(sk.recall_score(y, predicted))
        if row.alerts:
            assert row.precision == pytest.approx(sk.precision_score(y, predicted))
        else:
            assert math.isnan(row.precision)


def test_thresholds_for_alert_rates_alert_that_share() -> None:
    s = np.arange(1000) / 1000.0
    thresholds = evaluation.thresholds_for_alert_rates(s, [0.001, 0.01, 0.1])
    assert [int((s >= t).sum()) for t in thresholds] == [1, 10, 100]


def test_psi_matches_hand_computation() -> None:
    expected = np.repeat([0.1, 0.3, 0.5, 0.7], 25)  # quartiles fall between the four values
    actual = np.repeat([0.1, 0.3, 0.5, 0.7], [40, 30, 20, 10])
    e, a = np.full(4, 0.25), np.array([0.4, 0.3, 0.2, 0.1])
    assert evaluation.psi(expected, actual, bins=4) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift() -> None:
    rng = np.random.default_rng(1)
    ref = rng.beta(1, 20, 20_000)
    assert evaluation.psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    assert evaluation.psi(ref, rng.beta(1, 20, 20_000)) < 0.01
    assert evaluation.psi(ref, rng.beta(1, 5, 20_000)) > 0.25


def test_psi_of_an_empty_bin_is_finite() -> None:
    assert math.isfinite(evaluation.psi(np.linspace(0, 1, 100), np.full(50, 0.05)))


def test_curve_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        evaluation.roc_auc(np.zeros(5), np.linspace(0, 1, 5))
    summary = evaluation.summary(np.zeros(5), np.linspace(0, 1, 5))
    assert summary["rows"] == 5 and math.isnan(summary["roc_auc"])


def test_labels_must_be_binary() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        evaluation.roc_auc(np.array([0, 1, np.nan]), np.array([0.1, 0.2, 0.3]))
