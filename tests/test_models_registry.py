"""The model registry (list, register, promote, pointers) and the `models` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from entities.spec import Spec, hours
from models.artifact import ArtifactError, Manifest, save
from models.registry import REGISTRY_ENV, Registry, RegistryError, default_registry
from streams.cli_models import add_model_commands

SPEC_PATH = Path(__file__).resolve().parents[1] / "examples" / "fraud" / "spec.py"


@pytest.fixture(scope="module")
def booster(spec: Spec) -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.random((300, len(spec.feature_names)))
    y = (x[:, 0] > 0.7).astype(float)
    data = lgb.Dataset(x, y, feature_name=spec.feature_names)
    return lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, data, num_boost_round=3)


def _artifact(
    root: Path, booster: lgb.Booster, spec: Spec, version: str, spec_hash: str | None = None
) -> Path:
    manifest = Manifest(
        name="fraud",
        version=version,
        feature_names=spec.feature_names,
        spec_hash=spec_hash or spec.hash(),
        lightgbm_version=lgb.__version__,
        created_at=f"2025-01-0{version[-1]}T00:00:00Z",
        metrics={"roc_auc": 0.99, "pr_auc": 0.9},
    )
    return save(root / f"fraud-{version}", booster, manifest)


@pytest.fixture
def registry(tmp_path: Path, booster: lgb.Booster, spec: Spec) -> Registry:
    for version in ("v1", "v2", "v3"):
        _artifact(tmp_path, booster, spec, version)
    (tmp_path / "half-written").mkdir()  # no manifest: not listed
    return Registry(tmp_path)


def test_list_shows_complete_artifacts_oldest_first(registry: Registry) -> None:
    assert [e.key for e in registry.list()] == ["fraud-v1", "fraud-v2", "fraud-v3"]
    assert registry.champion() is None and registry.challenger() is None


def test_promote_writes_the_pointer_a_worker_reads(registry: Registry) -> None:
    registry.promote("v2")
    pointer = json.loads((registry.root / "champion.json").read_text())
    assert pointer["artifact"] == "fraud-v2" and pointer["version"] == "v2" and pointer["role"] == "champion"
    champion = registry.champion()
    assert champion is not None and champion.path == registry.root / "fraud-v2"
    assert not list(registry.root.glob("*.tmp")) and not list(registry.root.glob(".*.tmp"))


def test_a_ref_is_a_directory_a_version_or_a_name(registry: Registry) -> None:
    assert registry.find("fraud-v1").key == "fraud-v1"
    assert registry.find("v3").key == "fraud-v3"
    assert registry.find("fraud").key == "fraud-v3"  # a name means its newest
    assert registry.find(registry.root / "fraud-v2").key == "fraud-v2"
    with pytest.raises(RegistryError, match=r"no artifact 'v9'.*known: fraud-v1, fraud-v2, fraud-v3"):
        registry.find("v9")


def test_promoting_the_challenger_clears_it(registry: Registry) -> None:
    registry.promote("v1")
    registry.promote("v2", role="challenger")
    assert registry.challenger() is not None
    registry.promote("v2")
    champion = registry.champion()
    assert champion is not None and champion.key == "fraud-v2" and registry.challenger() is None
    history = [json.loads(line) for line in (registry.root / "promotions.jsonl").read_text().splitlines()]
    assert [(h["role"], h["artifact"], h["previous"]) for h in history] == [
        ("champion", "fraud-v1", None),
        ("challenger", "fraud-v2", None),
        ("champion", "fraud-v2", "fraud-v1"),
    ]


def test_promote_with_a_spec_refuses_a_model_of_another_spec(
    registry: Registry, booster: lgb.Booster, spec: Spec
) -> None:
    other = dataclasses.replace(spec, allowed_lateness=hours(2))
    _artifact(registry.root, booster, spec, "v4", spec_hash=other.hash())
    with pytest.raises(ArtifactError, match="retrain"):
        registry.promote("v4", spec=spec)
    assert registry.champion() is None
    assert registry.promote("v3", spec=spec).key == "fraud-v3"


def test_register_copies_an_artifact_in_once(
    registry: Registry, booster: lgb.Booster, spec: Spec, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = _artifact(tmp_path_factory.mktemp("elsewhere"), booster, spec, "v5")
    assert registry.register(outside).key == "fraud-v5"
    assert (registry.root / "fraud-v5" / "model.txt").exists()
    with pytest.raises(RegistryError, match="immutable"):
        registry.register(outside)


def test_default_registry_is_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    assert default_registry().parts[-2:] == ("models", "artifacts")
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path))
    assert Registry().root == tmp_path


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args))


def test_models_commands(registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(registry.root)
    assert _cli("models", "--registry", root, "promote", "v1", "--spec", str(SPEC_PATH)) == 0
    assert _cli("models", "--registry", root, "promote", "v3", "--role", "challenger") == 0
    assert _cli("models", "--registry", root, "list") == 0
    out = capsys.readouterr().out
    assert "fraud-v1" in out and "<- champion" in out and "<- challenger" in out
    assert _cli("models", "--registry", root, "promote", "nope") == 2
    assert "error: no artifact 'nope'" in capsys.readouterr().err
    assert _cli("models", "--registry", root, "list", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["pointers"] == {"champion": "fraud-v1", "challenger": "fraud-v3"}
