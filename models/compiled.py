"""Compiled prediction: a LightGBM model as native code (lleaves), checked against LightGBM.

LightGBM's ``predict`` walks the trees through a generic interpreter. lleaves
compiles the same ``model.txt`` with LLVM into one function that gives the same
scores to ~1e-15 (it sums the trees in another order) at a fraction of the cost
per row (figures in docs/performance.md). The machine code is cached per model
text, lleaves/LLVM version and host CPU, so a model is compiled once per machine
(seconds; the worker's hot reload loads and compiles in a thread beside its loop).

A compiled model is used only after it reproduced LightGBM's scores on probe rows
built from the model's own splits (``probe_rows``: one per leaf of every tree, and
random rows with missing values). If it does not, or lleaves is not installed, or
``SUPERNOVA_COMPILE_MODELS=0``, prediction stays with LightGBM and the log says why.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]

# LightGBM treats 0 < |x| <= this as zero (kZeroThreshold), lleaves does not: such
# values (no feature comes near them in practice) become 0.0 before lleaves sees them.
ZERO_BAND = 1.0000000180025095e-35
PROBE_ROWS = 1024  # random ones, besides one per leaf
TOLERANCE = 1e-9  # |compiled - LightGBM| allowed on the probe rows (seen: ~1e-15)


def cache_dir() -> Path:
    """Where compiled models are kept (``$SUPERNOVA_CACHE/compiled-models``)."""
    root = os.environ.get("SUPERNOVA_CACHE") or Path.home() / ".cache" / "supernova"
    return Path(root) / "compiled-models"


def compile_model(model_file: Path, booster: lgb.Booster) -> Predict | None:
    """A native predict function for the model, or None (then use LightGBM)."""
    if os.environ.get("SUPERNOVA_COMPILE_MODELS", "1") == "0":
        return None
    try:
        import lleaves
    except ImportError as exc:
        log.warning("lleaves unavailable (%s): LightGBM predicts", exc)
        return None
    try:
        model = lleaves.Model(model_file=str(model_file))
        _compile_cached(model, cache_path(model_file))
    except Exception as exc:  # lleaves raises plain errors for objectives it does not support
        log.warning("%s: not compiled (%s): LightGBM predicts", model_file, exc)
        return None

    def predict(rows: np.ndarray) -> np.ndarray:
        size = np.abs(rows)
        band = (size <= ZERO_BAND) & (size > 0.0)
        if band.any():
            rows = np.where(band, 0.0, rows)
        return model.predict(rows, n_jobs=1)  # type: ignore[no-any-return]

    probe = probe_rows(booster)
    diff = float(np.max(np.abs(predict(probe) - booster.predict(probe, num_threads=1))))
    if not diff <= TOLERANCE:
        log.warning("%s: compiled scores differ from LightGBM by %.3g: LightGBM predicts", model_file, diff)
        return None
    return predict


def cache_path(model_file: Path) -> Path:
    """The cached object code of a model: keyed by its text, lleaves/LLVM versions and host CPU."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    cpu = f"{llvm.get_host_cpu_name()} {llvm.get_host_cpu_features().flatten()}"
    versions = " ".join(importlib.metadata.version(p) for p in ("lleaves", "llvmlite"))
    key = hashlib.sha256(b"\0".join([model_file.read_bytes(), versions.encode(), cpu.encode()]))
    return cache_dir() / f"{key.hexdigest()[:24]}.o"


def _compile_cached(model: Any, path: Path) -> None:
    """Compile, loading the object code from ``path`` if there, else writing it there atomically.

    lleaves reads a cache file without any check, so it only ever sees a whole file:
    written under a temporary name, then renamed.
    """
    if path.is_file():
        model.compile(cache=str(path))
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            fresh = Path(tmp) / path.name
            model.compile(cache=str(fresh))
            os.replace(fresh, path)
    except OSError as exc:  # a read-only or full cache: compile anyway, every time
        log.warning("compiled-model cache %s unusable (%s): compiling without it", path.parent, exc)
        model.compile()


def probe_rows(booster: lgb.Booster, n_random: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Rows that exercise the model: one per leaf of every tree, then random ones.

    A leaf's row sits on the boundary of its path's interval (``x <= threshold``
    exactly on the left side, the next float above it on the right), so an error in
    any branch or comparison shows. Random rows mix thresholds, their neighbours and
    missing values.
    """
    width = booster.num_feature()
    thresholds: list[list[float]] = [[] for _ in range(width)]
    rows: list[np.ndarray] = []

    def walk(node: dict[str, Any], lo: np.ndarray, hi: np.ndarray) -> None:
        if "split_feature" not in node:
            row = np.where(np.isfinite(hi), hi, np.where(np.isfinite(lo), np.nextafter(lo, np.inf), 0.0))
            rows.append(row)
            return
        f, t = node["split_feature"], node["threshold"]
        if not isinstance(t, int | float):  # a categorical split ("a||b"): no interval to narrow
            walk(node["left_child"], lo, hi)
            walk(node["right_child"], lo, hi)
            return
        thresholds[f].append(float(t))
        left_hi, right_lo = hi.copy(), lo.copy()
        left_hi[f], right_lo[f] = min(hi[f], t), max(lo[f], t)
        walk(node["left_child"], lo, left_hi)
        walk(node["right_child"], right_lo, hi)

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"], np.full(width, -np.inf), np.full(width, np.inf))
    rng = np.random.default_rng(seed)
    random = np.empty((n_random, width))
    for j, ts in enumerate(thresholds):
        base = np.asarray(ts or [0.0])
        picked = base[rng.integers(len(base), size=n_random)]
        random[:, j] = np.nextafter(picked, picked + rng.choice([-1.0, 0.0, 1.0], size=n_random))
        random[rng.random(n_random) < 0.05, j] = np.nan
    return np.vstack([*rows, random])
