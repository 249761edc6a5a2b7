"""Train -> artifact -> load -> backtest on a replay of examples/fraud/sample.csv.gz."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from entities.spec import Spec, hours
from models.artifact import ArtifactError, load
from models.backtest import backtest
from models.dataset import read_features
from models.train import TrainError, to_epoch_ms, train

REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = REPO / "examples" / "fraud" / "spec.py"
SAMPLE = REPO / "examples" / "fraud" / "sample.csv.gz"
ROUNDS = 30


@pytest.fixture(scope="module")
def model_dir(spec: Spec, sample_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "m1"
    train(spec, sample_features, out, num_boost_round=ROUNDS, version="v1")
    return out


def test_saved_model_predicts_what_was_validated(spec: Spec, sample_features: Path, model_dir: Path) -> None:
    artifact = load(model_dir, spec)
    data = read_features(sample_features, spec).labelled()
    valid = data.take(data.ts >= to_epoch_ms(artifact.manifest.valid["valid_from"]))
    scores = artifact.predict(valid.features)
    assert sk.roc_auc_score(valid.label, scores) == pytest.approx(artifact.manifest.metrics["roc_auc"])
    assert sk.average_precision_score(valid.label, scores) == pytest.approx(
        artifact.manifest.metrics["pr_auc"]
    )
    again = load(model_dir, spec)
    np.testing.assert_array_equal(again.predict(data.features), artifact.predict(data.features))


def test_manifest_records_a_time_split(spec: Spec, model_dir: Path) -> None:
    m = load(model_dir, spec).manifest
    assert m.name == "fraud" and m.version == "v1"
    assert m.feature_names == spec.feature_names and m.spec_hash == spec.hash()
    assert m.train["to"] < m.valid["valid_from"] <= m.valid["from"]
    assert m.train["rows"] + m.valid["rows"] == 20_000
    assert m.valid["rows"] == pytest.approx(4_000, abs=50)  # default: the last ~20% of rows
    assert 1 <= m.metrics["best_iteration"] <= ROUNDS
    assert m.params["seed"] == 42 and m.params["deterministic"] is True
    assert m.lightgbm_version and m.created_at.endswith("Z")


def test_training_is_deterministic(
    spec: Spec, sample_features: Path, model_dir: Path, tmp_path: Path
) -> None:
    train(spec, sample_features, tmp_path / "m2", num_boost_round=ROUNDS, version="v1")
    assert (tmp_path / "m2" / "model.txt").read_bytes() == (model_dir / "model.txt").read_bytes()


def test_explicit_valid_from_splits_there(spec: Spec, sample_features: Path, tmp_path: Path) -> None:
    artifact = train(spec, sample_features, tmp_path / "m", valid_from="2020-06-26", num_boost_round=5)
    assert artifact.manifest.train["to"] < "2020-06-26" <= artifact.manifest.valid["from"]


def test_split_without_fraud_in_validation_is_refused(
    spec: Spec, sample_features: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainError, match=r"validation period .* both classes"):
        train(spec, sample_features, tmp_path / "m", valid_from="2030-01-01")


def test_training_into_an_existing_artifact_is_refused(
    spec: Spec, sample_features: Path, model_dir: Path
) -> None:
    with pytest.raises(TrainError, match="already holds an artifact"):
        train(spec, sample_features, model_dir)


def test_model_of_another_spec_is_refused_with_the_reason(spec: Spec, model_dir: Path) -> None:
    other = dataclasses.replace(spec, allowed_lateness=hours(2))
    with pytest.raises(ArtifactError, match=f"trained on spec {spec.hash()}.*{other.hash()}: retrain"):
        load(model_dir, other)


def test_backtest_metrics_equal_sklearn(
    spec: Spec, sample_features: Path, model_dir: Path, tmp_path: Path
) -> None:
    result = backtest(model_dir, sample_features, tmp_path, model_dir, spec=spec, source_csv=SAMPLE)
    written = json.loads((tmp_path / "metrics.json").read_text())
    data = read_features(sample_features, spec).labelled()
    scores = load(model_dir, spec).predict(data.features)
    for role in ("champion", "challenger"):
        overall = written["models"][role]["overall"]
        assert overall["roc_auc"] == pytest.approx(sk.roc_auc_score(data.label, scores), abs=1e-12)
        assert overall["pr_auc"] == pytest.approx(sk.average_precision_score(data.label, scores), abs=1e-12)
        assert overall["rows"] == len(data) and overall["positives"] == int(data.label.sum())
    at_half = next(r for r in written["models"]["champion"]["thresholds"] if r["threshold"] == 0.5)
    predicted = (scores >= 0.5).astype(int)
    assert at_half["precision"] == pytest.approx(sk.precision_score(data.label, predicted))
    assert at_half["recall"] == pytest.approx(sk.recall_score(data.label, predicted))
    categories = {r["value"]: r for r in written["models"]["champion"]["slices"]["category"]}
    mask = result.slices["category"] == "health_fitness"
    assert categories["health_fitness"]["rows"] == int(mask.sum())


def test_report_is_one_self_contained_page(
    spec: Spec, sample_features: Path, model_dir: Path, tmp_path: Path
) -> None:
    backtest(model_dir, sample_features, tmp_path, spec=spec)
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") >= 5
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "pass --source-csv" in page  # slices skipped, and the page says so
    assert (tmp_path / "scores.parquet").exists()
