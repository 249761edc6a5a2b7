"""Model artifacts: a LightGBM model bound to the feature spec it was trained on.

An artifact is a directory holding ``model.txt`` (LightGBM text format) and
``manifest.json``. A model scores one event type of its spec: it is bound to
(spec hash, event type). Loading checks the manifest against the running spec: a
model of a type the spec does not score, or trained on other feature definitions
or another column order, is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from entities.spec import Spec
from models.compiled import Predict, compile_model

MODEL_FILE = "model.txt"
MANIFEST_FILE = "manifest.json"


class ArtifactError(ValueError):
    """An artifact that is missing, corrupt or does not match the running spec."""


@dataclass
class Manifest:
    """What a model is and what it was trained on."""

    name: str
    version: str
    feature_names: list[str]
    spec_hash: str
    event_type: str  # the scored event type whose rows it scores
    lightgbm_version: str
    created_at: str
    train: dict[str, Any] = field(default_factory=dict)
    valid: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Artifact:
    """A loaded model: its manifest, its booster and, where it could be built, its compiled form."""

    path: Path
    manifest: Manifest
    booster: lgb.Booster
    compiled: Predict | None = None  # see models.compiled: the same scores, cheaper per row

    @property
    def name(self) -> str:
        """Model name from the manifest."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """Model version from the manifest."""
        return self.manifest.version

    @property
    def event_type(self) -> str:
        """The scored event type this model scores."""
        return self.manifest.event_type

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities of a (n, features) float64 matrix in the spec order of its event type."""
        if self.compiled is not None:
            return self.compiled(rows)
        return np.asarray(self.booster.predict(rows, num_threads=1))

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        """Per-feature SHAP contributions (last column: expected value)."""
        return np.asarray(self.booster.predict(rows, pred_contrib=True, num_threads=1))


def save(path: Path, booster: lgb.Booster, manifest: Manifest) -> Path:
    """Write an artifact directory (model first, manifest last: a manifest means complete)."""
    path.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path / MODEL_FILE))
    tmp = path / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
    tmp.replace(path / MANIFEST_FILE)
    return path


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of an artifact directory, without checking it against a spec."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST_FILE}; not a model artifact")
    try:
        fields = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {exc}") from None
    if isinstance(fields, dict) and "event_type" not in fields:
        raise ArtifactError(
            f"{path}: its manifest names no event_type (trained before multi-type specs): retrain it"
        )
    try:
        return Manifest(**fields)
    except TypeError as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {exc}") from None


def load(path: str | Path, spec: Spec) -> Artifact:
    """Load an artifact, refusing one whose event type, spec hash or feature list differs from ``spec``."""
    path = Path(path)
    manifest = read_manifest(path)
    if manifest.event_type not in spec.scored_types:
        raise ArtifactError(
            f"{path}: model {manifest.name} {manifest.version} scores {manifest.event_type!r} events; "
            f"the running spec scores {spec.scored_types}"
        )
    if manifest.spec_hash != spec.hash():
        raise ArtifactError(
            f"{path}: model {manifest.name} {manifest.version} was trained on spec "
            f"{manifest.spec_hash}, the running spec is {spec.hash()}: retrain it on this spec"
        )
    names = spec.feature_names_of(manifest.event_type)
    if manifest.feature_names != names:
        raise ArtifactError(
            f"{path}: feature names/order differ from the running spec's {manifest.event_type!r} features"
        )
    booster = lgb.Booster(model_file=str(path / MODEL_FILE))
    if booster.feature_name() != names:
        raise ArtifactError(f"{path}: {MODEL_FILE} features differ from its manifest")
    return Artifact(path, manifest, booster, compile_model(path / MODEL_FILE, booster))


def load_by_type(paths: Iterable[str | Path], spec: Spec) -> dict[str, Artifact]:
    """Load artifacts keyed by the event type each scores; two models of one type are refused."""
    out: dict[str, Artifact] = {}
    for path in paths:
        artifact = load(path, spec)
        other = out.get(artifact.event_type)
        if other is not None:
            raise ArtifactError(
                f"{path} and {other.path} both score {artifact.event_type!r} events: give one model per type"
            )
        out[artifact.event_type] = artifact
    return out


def require_every_type(models: Mapping[str, object], spec: Spec, option: str = "--model DIR") -> None:
    """ArtifactError naming the first scored type of ``spec`` without a model."""
    for event_type in spec.scored_types:
        if event_type not in models:
            raise ArtifactError(f"no model for scored type {event_type!r}: pass {option} with a model of it")
