"""Scoring a batch of feature rows: the champion, an optional shadow, optional explanations.

One ``predict`` per batch and model. A model swap (hot reload) replaces the champion
between batches: every event of a batch is scored by the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.artifact import Artifact


@dataclass
class BatchScores:
    """Scores of one batch and who produced them."""

    scores: np.ndarray
    model: str
    version: str
    shadow: Artifact | None = None
    shadow_scores: np.ndarray | None = None
    explanations: list[dict[str, float]] | None = None

    @property
    def has_extra(self) -> bool:
        """Whether ``extra`` can be non-empty (a shadow model or explanations)."""
        return self.shadow is not None or self.explanations is not None

    def extra(self, i: int) -> dict[str, Any]:
        """Optional score-message fields of row i (shadow score, explanation)."""
        out: dict[str, Any] = {}
        if self.shadow is not None and self.shadow_scores is not None:
            out["shadow_model"] = self.shadow.name
            out["shadow_model_version"] = self.shadow.version
            out["shadow_score"] = float(self.shadow_scores[i])
        if self.explanations is not None:
            out["explanation"] = self.explanations[i]
        return out


class Scorer:
    """Holds the models in use; ``score`` is called once per batch."""

    def __init__(self, champion: Artifact, shadow: Artifact | None = None, explain_top_k: int = 0) -> None:
        self.champion = champion
        self.shadow = shadow
        self.explain_top_k = explain_top_k

    def swap(self, champion: Artifact, shadow: Artifact | None = None) -> None:
        """Replace the models (called between batches)."""
        self.champion, self.shadow = champion, shadow

    def score(self, rows: np.ndarray) -> BatchScores:
        """Scores of a (n, features) matrix in spec order."""
        champion, shadow = self.champion, self.shadow
        out = BatchScores(champion.predict(rows), champion.name, champion.version)
        if shadow is not None:
            out.shadow, out.shadow_scores = shadow, shadow.predict(rows)
        if self.explain_top_k:
            out.explanations = top_contributions(champion, rows, self.explain_top_k)
        return out


def top_contributions(artifact: Artifact, rows: np.ndarray, k: int) -> list[dict[str, float]]:
    """The k largest |SHAP contribution| features of each row (LightGBM pred_contrib)."""
    contrib = artifact.contributions(rows)[:, :-1]
    names = artifact.manifest.feature_names
    top = np.argsort(-np.abs(contrib), axis=1)[:, :k]
    return [{names[j]: float(contrib[i, j]) for j in top[i]} for i in range(len(rows))]
