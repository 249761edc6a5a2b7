"""Replay's feature columns against an oracle's: mismatches beyond a relative tolerance.

NaN equals NaN; two numbers match when they differ by at most ``REL_TOL`` times the
larger magnitude (or ``ABS_FLOOR`` near zero).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REL_TOL = 1e-9
ABS_FLOOR = 1e-12


def mismatch_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """True where ``a`` and ``b`` differ (NaN against a number, or beyond the tolerance)."""
    a_nan, b_nan = np.isnan(a), np.isnan(b)
    both = ~a_nan & ~b_nan
    diff = np.zeros_like(a)
    diff[both] = np.abs(a[both] - b[both])
    scale = np.zeros_like(a)
    scale[both] = np.maximum(np.abs(a[both]), np.abs(b[both]))
    return (a_nan != b_nan) | (both & (diff > np.maximum(REL_TOL * scale, ABS_FLOOR)))


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """The largest relative difference where both are numbers (absolute where both are 0)."""
    both = ~np.isnan(a) & ~np.isnan(b)
    if not both.any():
        return 0.0
    d = np.abs(a[both] - b[both])
    s = np.maximum(np.abs(a[both]), np.abs(b[both]))
    return float(np.where(s > 0, d / np.where(s > 0, s, 1.0), d).max())


def compare_columns(
    got: pd.DataFrame, ref: pd.DataFrame, names: list[str], prefix: str = ""
) -> tuple[int, list[str]]:
    """Mismatches of each column of ``names`` (rows aligned), and one table line per column."""
    total = 0
    lines = []
    for name in names:
        a = got[name].to_numpy(dtype=np.float64)
        b = ref[name].to_numpy(dtype=np.float64)
        bad = mismatch_mask(a, b)
        nbad = int(bad.sum())
        total += nbad
        example = ""
        if nbad:
            i = int(np.flatnonzero(bad)[0])
            example = f"  e.g. {ref['event_id'].iat[i]}: replay={a[i]!r} ref={b[i]!r}"
        lines.append(f"{prefix}{name:<30}{nbad:>11}{max_rel_diff(a, b):>15.3e}{example}")
    return total, lines
