"""Intervals and plain verdicts for paired comparisons, and summaries over runs (folds, seeds).

Every reported difference (a Top-GAP model minus the baseline, on the same test images) comes with a
95% percentile-bootstrap interval: images are resampled with replacement B times and the statistic of
both sides is recomputed on each resample (Efron & Tibshirani, 1993). Over training seeds the paired
unit is the seed instead, with a Student-t interval. "better" / "worse" only when the interval excludes
0; otherwise "no clear difference". Which way is better is one rule for every metric: :func:`higher_is_better`.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

COLLAPSE_SHARE = 0.9  # a model predicting one class for more than this share of the images has collapsed

__all__ = ["COLLAPSE_SHARE", "majority", "is_control", "BOOTSTRAP_SAMPLES", "LOWER_IS_BETTER", "MAP_METRICS", "higher_is_better", "finite_mean", "paired_bootstrap", "t_interval",
           "verdict", "mean_std", "over_runs"]

BOOTSTRAP_SAMPLES = 2000
LOWER_IS_BETTER = ("l1", "bg_gap")  # sparser maps; less reliance on the background
OBJECT_FREE_SPLITS = ("only_bg", "no_fg")  # shift splits without the object (synth's only_bg; only_bg_t, no_fg)
MAP_METRICS = ("l1", "iou", "mass_in_mask", "pxap", "maxboxacc_v2")  # each as "_paper", "_relu" and "_gradcam"
PROTOCOL_SUFFIXES = ("_paper", "_relu")  # map metrics per CAM protocol (topgap.cam.PROTOCOLS), e.g. "l1_paper"


def is_control(model: dict) -> bool:
    """Whether a results entry is the FPN-only control (the Top-GAP head pooled by plain GAP); entries written
    before the poolings had no "pooling": k None meant GAP."""
    pooling = model.get("pooling") or ("gap" if model.get("k") is None else "topgap")
    return model.get("kind") == "topgap" and pooling == "gap"


def higher_is_better(metric: str) -> bool:
    """False for l1 (also "l1_gradcam", "l1_paper", "l1_relu"), bg_gap and the accuracy on splits without the object
    ("only_bg*", "no_fg": how far the background alone predicts); True for every other accuracy, localisation and
    faithfulness metric."""
    name = metric
    for suffix in PROTOCOL_SUFFIXES:
        name = name.removesuffix(suffix)
    name = name.removesuffix("_gradcam")
    if name.endswith("_accuracy") and name.removesuffix("_accuracy").startswith(OBJECT_FREE_SPLITS):
        return False
    return name not in LOWER_IS_BETTER


def majority(pred) -> tuple[int, float]:
    """(the class predicted most often, the share of the predictions it takes), ties to the lower class: the
    statistic of the collapse rule (more than COLLAPSE_SHARE of the images in one class)."""
    counts = np.bincount(np.asarray(pred, dtype=np.int64).reshape(-1))
    return int(counts.argmax()), float(counts.max() / counts.sum())


def finite_mean(values) -> float | None:
    """Mean of the finite values (None and NaN left out); None when there is none. The one mean of every summary."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)  # None becomes NaN
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _mean(a: np.ndarray) -> float:
    """:func:`finite_mean` as a bootstrap statistic: NaN instead of None."""
    m = finite_mean(a)
    return float("nan") if m is None else m


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


def t_interval(diffs, level: float = 0.95) -> dict:
    """Mean of paired differences (one per seed) with a Student-t interval, mean ± t(n-1) s / sqrt(n).

    Returns {"diff", "low", "high", "n", "level"}; low/high None for fewer than 2 differences, diff None for none.
    Example: diffs 0.01, 0.02, 0.03 -> 0.02 ± 4.303 * 0.01 / sqrt(3) = [-0.0048, 0.0448].
    """
    from scipy.stats import t

    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1) (got {level})")
    d = np.asarray(diffs, dtype=np.float64)
    out = {"diff": float(d.mean()) if d.size else None, "low": None, "high": None, "n": int(d.size), "level": level}
    if d.size >= 2:
        half = float(t.ppf((1 + level) / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
        out.update(low=out["diff"] - half, high=out["diff"] + half)
    return out


def verdict(ci: dict, higher_is_better: bool = True) -> str:
    """"better" / "worse" when the interval excludes 0, "no clear difference" when it does not, "n/a" without one."""
    if ci.get("low") is None:
        return "n/a"
    if ci["low"] > 0 or ci["high"] < 0:
        return "better" if (ci["low"] > 0) == higher_is_better else "worse"
    return "no clear difference"


def mean_std(values, ddof: int = 0) -> dict:
    """{"mean", "std", "n"} of the finite values; std with `ddof` (0: population, 1: sample), None for n <= ddof."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return {"mean": finite_mean(v), "std": float(v.std(ddof=ddof)) if len(v) > ddof else None, "n": int(len(v))}


def over_runs(runs: list[dict], ddof: int = 0) -> dict:
    """{metric: {"mean", "std", "n", "values"}} over flat {metric: value} dicts, one per run (fold or seed).

    A metric missing or None in any run is left out, so every summary covers the same runs.
    """
    out = {}
    for metric in runs[0] if runs else {}:
        values = [r.get(metric) for r in runs]
        if all(v is not None for v in values):
            out[metric] = {**mean_std(values, ddof), "values": [float(v) for v in values]}
    return out
