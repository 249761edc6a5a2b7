"""Can the shop features catch the generated fraud? A check that needs no engine.

Generates shop events, computes both scored types' features with the independent
oracle (``tests/reference_shop.py``), trains one LightGBM model per type on the first
80% of the time span and prints the ROC-AUC on the last 20%, with the features
that carry the signal (gain share). Labels are read only as training targets.

    python -m examples.shop.oracle_check --users 2000 --days 60 --seed 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

# Siblings and the oracle import as top-level modules, as a spec's siblings do.
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "tests")]
from generate import generate, write  # noqa: E402
from reference_shop import FEATURES, read_events, reference_features  # noqa: E402

TRAIN_SHARE = 0.8
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 20,
    "feature_fraction": 0.9,
    "verbose": -1,
    "seed": 1,
}
ROUNDS = 300


def evaluate(features: dict[str, pd.DataFrame], cut: int) -> dict[str, tuple[float, int, int, list[str]]]:
    """Per scored type: validation AUC, validation rows, validation positives, top features."""
    results = {}
    for etype, frame in features.items():
        names = FEATURES[etype]
        train, valid = frame[frame["ts"] < cut], frame[frame["ts"] >= cut]
        model = lgb.train(PARAMS, lgb.Dataset(train[names], train["label"]), ROUNDS)
        auc = float(roc_auc_score(valid["label"], model.predict(valid[names])))
        gain = model.feature_importance("gain")
        share = gain / gain.sum()
        top = [f"{names[i]} {share[i]:.0%}" for i in np.argsort(-share)[:5]]
        results[etype] = (auc, len(valid), int(valid["label"].sum()), top)
    return results


def main(argv: list[str] | None = None) -> int:
    """Generate, compute oracle features, train and print the validation AUCs."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shop.jsonl"
        write(generate(args.users, args.days, args.seed), path, args.seed)
        events = read_events(path)
    features = reference_features(events)
    lo, hi = int(events["ts"].min()), int(events["ts"].max())
    cut = lo + int(TRAIN_SHARE * (hi - lo))
    for etype, (auc, n, pos, top) in evaluate(features, cut).items():
        print(
            f"{etype:<6} validation ROC-AUC {auc:.4f} ({n:,} rows, {pos:,} fraud); top gain: {', '.join(top)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
