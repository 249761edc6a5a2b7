"""Scoring a batch: shadow scores equal the challenger alone; explanations are its top contributions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from streaming import ADAPTER, SAMPLE, SPEC, train_small_model

from entities.spec import load_spec
from models.artifact import load
from models.scorer import Scorer
from streams.replay import replay


def test_shadow_scores_and_explanations(tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    replay(SPEC, SAMPLE, adapter=ADAPTER, features_out=tmp_path / "f.parquet", limit=4_000)
    features = tmp_path / "f.parquet"
    champion = load(train_small_model(spec, features, tmp_path / "a", trees=8, version="a"), spec)
    challenger = load(train_small_model(spec, features, tmp_path / "b", trees=20, version="b"), spec)
    rows = pq.read_table(tmp_path / "f.parquet").to_pandas()[spec.feature_names].to_numpy()[:500]

    scored = Scorer(champion, shadow=challenger, explain_top_k=3).score(rows)

    assert np.array_equal(scored.scores, champion.predict(rows))
    assert scored.shadow_scores is not None
    assert np.array_equal(scored.shadow_scores, challenger.predict(rows))
    contrib = np.asarray(champion.booster.predict(rows, pred_contrib=True))
    for i in (0, 17, 499):
        extra = scored.extra(i)
        assert extra["shadow_model_version"] == "b"
        assert extra["shadow_score"] == scored.shadow_scores[i]
        top = extra["explanation"]
        assert len(top) == 3
        want = sorted(range(len(spec.feature_names)), key=lambda j: -abs(contrib[i, j]))[:3]
        assert set(top) == {spec.feature_names[j] for j in want}
        for name, value in top.items():
            assert value == contrib[i, spec.feature_names.index(name)]
    # Contributions plus the bias add up to the raw score (logit) of the champion.
    raw = np.asarray(champion.booster.predict(rows, raw_score=True))
    assert np.allclose(contrib.sum(axis=1), raw, atol=1e-9)
