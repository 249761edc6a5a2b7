"""Train -> artifact -> load -> backtest on a replay of examples/fraud/sample.csv.gz."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn import metrics as sk

from entities.spec import Spec, hours
from models.artifact import ArtifactError, load
from models.backtest import Slices, backtest
from models.dataset import DatasetError, read_features
from models.train import TrainError, default_name, to_epoch_ms, train
from streams.cli_models import add_model_commands
from streams.produce import file_events
from streams.sources import Rejected, slice_columns

REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = REPO / "examples" / "fraud" / "spec.py"
SAMPLE = REPO / "examples" / "fraud" / "sample.csv.gz"
ADAPTER = REPO / "examples" / "fraud" / "sparkov.py"
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
    columns = slice_columns(SAMPLE, spec, ["category"], ADAPTER)
    slices = Slices(str(SAMPLE), columns.pop("event_id"), columns)
    result = backtest(model_dir, sample_features, tmp_path, model_dir, spec=spec, slices=slices)
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
    assert "pass --slice-by COL" in page  # no slices, and the page says how to get them
    assert (tmp_path / "scores.parquet").exists()


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


def _backtest_argv(model_dir: Path, features: Path, out: Path) -> list[str]:
    return [
        "backtest",
        "--spec",
        str(SPEC_PATH),
        "--model",
        str(model_dir),
        "--features",
        str(features),
        "--out",
        str(out),
    ]


def test_train_names_the_model_after_the_spec(spec: Spec, sample_features: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert _cli("train", "--spec", str(SPEC_PATH), "--features", str(sample_features), "--out", str(out)) == 0
    manifest = load(out, spec).manifest
    assert manifest.name == spec.name == "fraud" and manifest.event_type == "transaction"
    # With several scored types the name says which model it is.
    two = SimpleNamespace(name="shop", scored_types=["order", "login"])
    assert default_name(two, "login") == "shop-login"  # type: ignore[arg-type]
    assert default_name(spec, "transaction") == "fraud"


def test_backtest_slices_by_source_columns_equal_a_pandas_groupby(
    spec: Spec, sample_features: Path, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bt"
    argv = [
        *_backtest_argv(model_dir, sample_features, out),
        "--source",
        str(SAMPLE),
        "--adapter",
        str(ADAPTER),
    ]
    assert _cli(*argv, "--slice-by", "category", "--slice-by", "state") == 0
    written = json.loads((out / "metrics.json").read_text())["models"]["champion"]["slices"]
    assert set(written) == {"category", "state"}

    # Independently: the source CSV joined to the written scores by trans_num, grouped by pandas.
    source = pd.read_csv(SAMPLE, usecols=["trans_num", "category", "state"], dtype=str)
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    joined = scores.merge(source, left_on="event_id", right_on="trans_num", how="left", validate="one_to_one")
    assert joined["category"].notna().all()
    for col in ("category", "state"):
        got = {r["value"]: r for r in written[col]}
        groups = joined.groupby(col)
        assert set(got) == set(groups.groups)
        for value, rows in groups:
            assert got[value]["rows"] == len(rows)
            assert got[value]["positives"] == int(rows["label"].sum())
            if 0 < rows["label"].sum() < len(rows):
                want = sk.roc_auc_score(rows["label"], rows["score_champion"])
                assert got[value]["roc_auc"] == pytest.approx(want, abs=1e-12)

    # The same slices from JSON lines of the same events: attrs.<field> and type.
    codec, items = file_events(SPEC_PATH, SAMPLE, None, adapter=ADAPTER)
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(codec.encode(e) for e in items if not isinstance(e, Rejected)))
    columns = slice_columns(jsonl, spec, ["attrs.category", "type"])
    by_id = dict(zip(columns["event_id"], columns["attrs.category"], strict=True))
    assert [by_id[e] for e in joined["event_id"]] == joined["category"].tolist()
    assert {t for e, t in zip(columns["event_id"], columns["type"], strict=True) if e in by_id} >= {
        "transaction"
    }


def test_backtest_slice_mistakes_are_one_line_errors(
    model_dir: Path, sample_features: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _backtest_argv(model_dir, sample_features, tmp_path / "bt")
    assert _cli(*argv, "--slice-by", "nope", "--source", str(SAMPLE), "--adapter", str(ADAPTER)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the adapter does not read ['nope']" in err and "category" in err
    assert _cli(*argv, "--slice-by", "category", "--source", str(SAMPLE)) == 2  # a CSV needs its adapter
    assert "--adapter" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--slice-by needs --source"):
        _cli(*argv, "--slice-by", "category")


def test_backtest_warns_of_rows_the_model_was_trained_on(
    spec: Spec, sample_features: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Leakage: rows in the training and validation period are counted and named; later ones are not."""
    manifest = load(model_dir, spec).manifest
    start, end = to_epoch_ms(manifest.train["from"]), to_epoch_ms(manifest.valid["to"])
    data = read_features(sample_features, spec).labelled()
    inside = int(((data.ts >= start) & (data.ts <= end)).sum())
    assert inside == len(data)  # the model was trained on the whole sample
    result = backtest(model_dir, sample_features, tmp_path / "same", spec=spec)
    (warning,) = result.metrics["warnings"]
    assert warning.startswith(f"{inside:,} of {len(data):,} rows (100%) fall in the period the champion")
    assert warning in result.metrics["notes"]

    table = pq.read_table(sample_features)

    def shifted(by: pd.Timedelta, name: str) -> Path:
        ts = pc.add(table.column("ts"), pa.scalar(by.to_pytimedelta()))
        pq.write_table(table.set_column(table.schema.get_field_index("ts"), "ts", ts), tmp_path / name)
        return tmp_path / name

    # Half a second later: the manifest's times are whole seconds, the last one still counts.
    half = backtest(
        model_dir, shifted(pd.Timedelta(milliseconds=500), "half.parquet"), tmp_path / "h", spec=spec
    )
    assert half.metrics["warnings"][0].startswith(f"{len(data):,} of {len(data):,} rows (100%)")
    later = shifted(pd.Timedelta(days=366), "later.parquet")
    assert backtest(model_dir, later, tmp_path / "later", spec=spec).metrics["warnings"] == []


def test_features_of_another_spec_are_refused(spec: Spec, sample_features: Path) -> None:
    """Same columns, another definition: a model trained on them would be tied to the wrong spec."""
    other = dataclasses.replace(spec, allowed_lateness=hours(2))
    with pytest.raises(
        DatasetError, match=f"features of spec {spec.hash()}, not of fraud \\({other.hash()}\\)"
    ):
        read_features(sample_features, other)
