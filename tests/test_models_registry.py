"""The model registry (artifacts, pointers per scored type), hot reload, the `models` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from entities.spec import Spec, hours
from models.artifact import ArtifactError, Manifest, load, save
from models.registry import REGISTRY_ENV, Registry, RegistryError, default_registry
from models.scorer import Scorer
from streams.cli_models import add_model_commands
from streams.reload import ModelWatcher

SPEC_PATH = Path(__file__).resolve().parents[1] / "examples" / "fraud" / "spec.py"


@pytest.fixture(scope="module")
def booster(spec: Spec) -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.random((300, len(spec.feature_names)))
    y = (x[:, 0] > 0.7).astype(float)
    data = lgb.Dataset(x, y, feature_name=spec.feature_names)
    return lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, data, num_boost_round=3)


def _artifact(
    root: Path,
    booster: lgb.Booster,
    spec: Any,
    version: str,
    spec_hash: str | None = None,
    event_type: str = "transaction",
    name: str = "fraud",
) -> Path:
    manifest = Manifest(
        name=name,
        version=version,
        feature_names=spec.feature_names_of(event_type),
        spec_hash=spec_hash or spec.hash(),
        event_type=event_type,
        lightgbm_version=lgb.__version__,
        created_at=f"2025-01-0{version[-1]}T00:00:00Z",
        metrics={"roc_auc": 0.99, "pr_auc": 0.9},
    )
    return save(root / f"{name}-{version}", booster, manifest)


@pytest.fixture
def registry(tmp_path: Path, booster: lgb.Booster, spec: Spec) -> Registry:
    for version in ("v1", "v2", "v3"):
        _artifact(tmp_path, booster, spec, version)
    (tmp_path / "half-written").mkdir()  # no manifest: not listed
    return Registry(tmp_path)


def test_list_shows_complete_artifacts_oldest_first(registry: Registry) -> None:
    assert [e.key for e in registry.list()] == ["fraud-v1", "fraud-v2", "fraud-v3"]
    assert registry.champion("transaction") is None and registry.challenger("transaction") is None
    assert registry.event_types() == []


def test_promote_writes_the_pointer_a_worker_reads(registry: Registry) -> None:
    registry.promote("v2")
    pointer = json.loads((registry.root / "pointers" / "transaction" / "champion.json").read_text())
    assert pointer["artifact"] == "fraud-v2" and pointer["version"] == "v2" and pointer["role"] == "champion"
    assert pointer["event_type"] == "transaction"
    champion = registry.champion("transaction")
    assert champion is not None and champion.path == registry.root / "fraud-v2"
    assert not list(registry.root.rglob("*.tmp")) and not list(registry.root.rglob(".*.tmp"))


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
    assert registry.challenger("transaction") is not None
    registry.promote("v2")
    champion = registry.champion("transaction")
    assert champion is not None and champion.key == "fraud-v2" and registry.challenger("transaction") is None
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
    assert registry.champion("transaction") is None
    assert registry.promote("v3", spec=spec).key == "fraud-v3"


def test_a_model_of_another_spec_does_not_replace_a_pointer_without_spec_or_force(
    registry: Registry, booster: lgb.Booster, spec: Spec
) -> None:
    """Two specs may score one event type: a promote must not silently hand its pointers to the other."""
    registry.promote("v1")
    registry.promote("v2", role="challenger")
    other = dataclasses.replace(spec, allowed_lateness=hours(2))
    _artifact(registry.root, booster, other, "v4", name="acct")
    for role in ("champion", "challenger"):
        with pytest.raises(RegistryError, match=r"the champion of transaction is fraud-v1, trained on spec"):
            registry.promote("acct-v4", role=role)
    with pytest.raises(ArtifactError, match="retrain"):  # --spec: the workers' spec decides
        registry.promote("acct-v4", spec=spec)
    assert registry.champion("transaction").key == "fraud-v1"  # type: ignore[union-attr]
    assert registry.promote("acct-v4", spec=other).key == "acct-v4"
    registry.promote("v3", force=True)
    assert registry.champion("transaction").key == "fraud-v3"  # type: ignore[union-attr]
    assert registry.clear("challenger") and not registry.clear("challenger")


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
    assert listing["pointers"] == {"transaction": {"champion": "fraud-v1", "challenger": "fraud-v3"}}
    assert _cli("models", "--registry", root, "clear", "challenger") == 0  # one type: --type may be left out
    assert Registry(root).pointers() == {"transaction": {"champion": "fraud-v1", "challenger": None}}


# --- several scored types ------------------------------------------------------------------


class TwoTypes:
    """What the registry and hot reload read of a spec that scores two types.

    A stand-in until entities/ gives a real two-type Spec (issue 17): only the
    contract's ``scored_types``, ``feature_names_of`` and ``hash``.
    """

    def __init__(self, spec: Spec) -> None:
        self.scored_types = ["transaction", "login"]
        self.names = {"transaction": spec.feature_names, "login": ["success", "failed_logins_1h", "km"]}

    def feature_names_of(self, event_type: str) -> list[str]:
        return self.names[event_type]

    def hash(self) -> str:
        return "twotypes00000000"


@pytest.fixture
def two(tmp_path: Path, booster: lgb.Booster, spec: Spec) -> tuple[Registry, TwoTypes]:
    both = TwoTypes(spec)
    x = np.random.default_rng(1).random((200, 3))
    data = lgb.Dataset(x, (x[:, 0] > 0.5).astype(float), feature_name=both.names["login"])
    login_booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1}, data, num_boost_round=2
    )
    for version in ("v1", "v2"):
        _artifact(tmp_path, booster, both, version)
        _artifact(tmp_path, login_booster, both, version, event_type="login", name="shop-login")
    return Registry(tmp_path), both


def test_each_scored_type_has_its_own_champion_and_challenger(two: tuple[Registry, TwoTypes]) -> None:
    registry, both = two
    registry.promote("fraud-v1", spec=both)  # type: ignore[arg-type]
    registry.promote("shop-login-v1", spec=both)  # type: ignore[arg-type]
    registry.promote("shop-login-v2", role="challenger")
    assert registry.event_types() == ["login", "transaction"]
    assert registry.pointers() == {
        "login": {"champion": "shop-login-v1", "challenger": "shop-login-v2"},
        "transaction": {"champion": "fraud-v1", "challenger": None},
    }
    assert (registry.root / "pointers" / "login" / "challenger.json").is_file()
    # Promoting login's challenger clears login's challenger only; transaction is untouched.
    registry.promote("fraud-v2", role="challenger")
    registry.promote("shop-login-v2")
    assert registry.pointers() == {
        "login": {"champion": "shop-login-v2", "challenger": None},
        "transaction": {"champion": "fraud-v1", "challenger": "fraud-v2"},
    }
    history = [json.loads(line) for line in (registry.root / "promotions.jsonl").read_text().splitlines()]
    assert [(h["event_type"], h["role"], h["artifact"], h["previous"]) for h in history] == [
        ("transaction", "champion", "fraud-v1", None),
        ("login", "champion", "shop-login-v1", None),
        ("login", "challenger", "shop-login-v2", None),
        ("transaction", "challenger", "fraud-v2", None),
        ("login", "champion", "shop-login-v2", "shop-login-v1"),
    ]
    with pytest.raises(RegistryError, match=r"name the event type .*\['login', 'transaction'\]"):
        registry.clear("challenger")
    registry.clear("challenger", "transaction")
    assert registry.challenger("transaction") is None and registry.champion("transaction") is not None


def test_models_list_shows_the_pointers_of_each_type(
    two: tuple[Registry, TwoTypes], capsys: pytest.CaptureFixture[str]
) -> None:
    registry, _ = two
    root = str(registry.root)
    assert _cli("models", "--registry", root, "promote", "fraud-v2") == 0
    assert _cli("models", "--registry", root, "promote", "shop-login-v1", "--role", "challenger") == 0
    assert "challenger of login -> shop-login-v1" in capsys.readouterr().out
    assert _cli("models", "--registry", root, "list") == 0
    out = capsys.readouterr().out
    assert "  login: champion -, challenger shop-login-v1" in out
    assert "  transaction: champion fraud-v2, challenger -" in out
    assert "<- challenger of login" in out and "<- champion of transaction" in out
    assert _cli("models", "--registry", root, "clear", "challenger") == 2
    assert "--type" in capsys.readouterr().err
    assert _cli("models", "--registry", root, "clear", "challenger", "--type", "login") == 0
    assert "login" not in registry.pointers()  # no pointer left for it


def test_hot_reload_swaps_the_model_of_the_promoted_type_only(two: tuple[Registry, TwoTypes]) -> None:
    registry, both = two
    registry.promote("fraud-v1")
    registry.promote("shop-login-v1")
    initial = ModelWatcher.initial(registry.root, both)  # type: ignore[arg-type]
    scorers = {t: Scorer(champion, shadow) for t, (champion, shadow) in initial.items()}
    assert {t: s.champion.version for t, s in scorers.items()} == {"transaction": "v1", "login": "v1"}
    watcher = ModelWatcher(registry.root, both, scorers, asyncio.Lock())  # type: ignore[arg-type]
    assert asyncio.run(watcher.check()) is False  # nothing changed

    registry.promote("shop-login-v2")
    assert asyncio.run(watcher.check()) is True
    assert scorers["login"].champion.name == "shop-login" and scorers["login"].champion.version == "v2"
    assert scorers["transaction"].champion.version == "v1" and watcher.reloads == 1

    registry.promote("fraud-v2", role="challenger")
    assert asyncio.run(watcher.check()) is True
    shadow = scorers["transaction"].shadow
    assert shadow is not None and shadow.version == "v2" and shadow.event_type == "transaction"
    assert scorers["login"].shadow is None and watcher.reloads == 2


def test_a_scored_type_without_a_champion_stops_the_worker_at_start(two: tuple[Registry, TwoTypes]) -> None:
    registry, both = two
    registry.promote("fraud-v1")
    with pytest.raises(SystemExit, match="no champion for scored type 'login'"):
        ModelWatcher.initial(registry.root, both)  # type: ignore[arg-type]


def test_a_model_of_a_type_the_spec_does_not_score_is_refused(
    two: tuple[Registry, TwoTypes], spec: Spec
) -> None:
    registry, _ = two
    with pytest.raises(
        ArtifactError, match=r"scores 'login' events; the running spec scores \['transaction'\]"
    ):
        load(registry.root / "shop-login-v1", spec)
