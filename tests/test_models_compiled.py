"""Compiled prediction: LightGBM's scores on real feature rows, and refused when they differ."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from streaming import train_small_model

from entities.spec import Spec
from models.artifact import MODEL_FILE, load
from models.compiled import cache_path, compile_model, probe_rows


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SUPERNOVA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "compiled-models"


def test_compiled_scores_are_lightgbms(
    spec: Spec, sample_features: Path, tmp_path: Path, cache: Path
) -> None:
    artifact = load(train_small_model(spec, sample_features, tmp_path / "m", trees=40, version="a"), spec)
    assert artifact.compiled is not None
    rows = pq.read_table(sample_features).to_pandas()[spec.feature_names].to_numpy()
    assert np.isnan(rows).any()  # first transactions of a card: missing values go through too
    want = artifact.booster.predict(rows, num_threads=1)
    np.testing.assert_allclose(artifact.predict(rows), want, rtol=0, atol=1e-12)
    assert len(list(cache.glob("*.o"))) == 1
    again = load(artifact.path, spec)  # from the cache this time
    assert again.compiled is not None
    np.testing.assert_array_equal(again.predict(rows), artifact.predict(rows))


def test_wrong_object_code_is_refused(
    spec: Spec, sample_features: Path, tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = train_small_model(spec, sample_features, tmp_path / "a", trees=10, version="a")
    b = train_small_model(spec, sample_features, tmp_path / "b", trees=30, version="b")
    load(b, spec)  # compiles b into the cache
    # A stale or foreign cache entry: b's machine code under a's key.
    shutil.copy(cache_path(b / MODEL_FILE), cache_path(a / MODEL_FILE))
    with caplog.at_level(logging.WARNING):
        artifact = load(a, spec)
    assert artifact.compiled is None
    assert "compiled scores differ from LightGBM" in caplog.text
    rows = probe_rows(artifact.booster)
    np.testing.assert_array_equal(artifact.predict(rows), artifact.booster.predict(rows, num_threads=1))


def test_compilation_can_be_turned_off(
    spec: Spec, sample_features: Path, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = train_small_model(spec, sample_features, tmp_path / "m", trees=5, version="a")
    monkeypatch.setenv("SUPERNOVA_COMPILE_MODELS", "0")
    artifact = load(model, spec)
    assert artifact.compiled is None
    assert compile_model(model / MODEL_FILE, artifact.booster) is None
    assert not cache.exists()


def test_probe_rows_reach_both_sides_of_every_split(
    spec: Spec, sample_features: Path, tmp_path: Path
) -> None:
    booster = load(
        train_small_model(spec, sample_features, tmp_path / "m", trees=20, version="a"), spec
    ).booster
    rows = probe_rows(booster)
    # Every leaf a tree has, the probe reaches: a compiled model wrong in any branch shows.
    leaves = np.asarray(booster.predict(rows, pred_leaf=True))
    for t, tree in enumerate(booster.dump_model()["tree_info"]):
        assert len(set(leaves[:, t])) == tree["num_leaves"], f"tree {t}"


def test_an_unwritable_cache_still_compiles(
    spec: Spec,
    sample_features: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("SUPERNOVA_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING):
        artifact = load(train_small_model(spec, sample_features, tmp_path / "m", trees=5, version="a"), spec)
    assert "compiling without it" in caplog.text
    assert artifact.compiled is not None
    rows = probe_rows(artifact.booster)
    np.testing.assert_allclose(artifact.predict(rows), artifact.booster.predict(rows), rtol=0, atol=1e-12)
