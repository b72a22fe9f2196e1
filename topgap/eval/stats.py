"""Paired bootstrap intervals and plain verdicts for comparisons on the same images.

Every reported difference (a Top-GAP model minus the baseline, on the same test images) comes with a
95% percentile-bootstrap interval: images are resampled with replacement B times and the statistic of
both sides is recomputed on each resample (Efron & Tibshirani, 1993). "better" / "worse" only when
the interval excludes 0; otherwise "no clear difference".
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["BOOTSTRAP_SAMPLES", "paired_bootstrap", "verdict", "mean_std"]

BOOTSTRAP_SAMPLES = 2000


def _mean(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.mean()) if finite.size else float("nan")


def paired_bootstrap(a, b, statistic: Callable[[np.ndarray], float] = _mean, *, samples: int = BOOTSTRAP_SAMPLES,
                     level: float = 0.95, seed: int = 0) -> dict:
    """statistic(a) - statistic(b) with a percentile-bootstrap interval over paired rows.

    Args:
        a, b: per-image values (n, ...) of the two sides, row i of both from image i.
        statistic: maps a resampled (n, ...) array to a number (default: the mean, NaNs left out).
        samples: bootstrap resamples B; level: interval coverage; seed: resampling seed.

    Returns:
        {"diff", "low", "high", "n", "samples", "level"}; diff/low/high None when undefined.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired values need the same images on both sides: {a.shape[0]} vs {b.shape[0]}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1) (got {level})")
    n = a.shape[0]
    out = {"n": n, "samples": samples, "level": level, "diff": None, "low": None, "high": None}
    if n == 0:
        return out
    diff = statistic(a) - statistic(b)
    if not np.isfinite(diff):
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    boots = np.array([statistic(a[i]) - statistic(b[i]) for i in idx])
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return {**out, "diff": float(diff), "low": float(lo), "high": float(hi)}


def verdict(ci: dict, higher_is_better: bool = True) -> str:
    """"better" / "worse" when the interval excludes 0, "no clear difference" when it does not, "n/a" without one."""
    if ci.get("low") is None:
        return "n/a"
    if ci["low"] > 0 or ci["high"] < 0:
        return "better" if (ci["low"] > 0) == higher_is_better else "worse"
    return "no clear difference"


def mean_std(values) -> dict:
    """{"mean", "std", "n"} of the finite values (population std, as over folds or seeds)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None, "n": int(len(v))}
