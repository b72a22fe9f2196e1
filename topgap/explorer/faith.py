"""Per-image faithfulness of every map: ROAD through :func:`topgap.eval.faithfulness.road_scores`, the function
`topgap evaluate` uses (same imputer, same percentiles), one percentile at a time so that the app can plot the
curve. The combined score at a percentile p is (LeRF_p - MoRF_p) / 2; their mean over the percentiles is the
evaluation's ROAD score (higher: the map ranks pixels by their real influence on the prediction).
"""
from __future__ import annotations

import numpy as np

from ..eval.faithfulness import ROAD_PERCENTILES, road_scores
from .explain import Family, MapResult, Result

__all__ = ["road_curves", "input_map"]


def input_map(m: MapResult, result: Result) -> np.ndarray:
    """The map at the model's input size: the picture's map placed in its box, letterbox bars zero (least
    relevant)."""
    h, w = result.x01.shape[-2:]
    y0, y1, x0, x1 = result.box
    out = np.zeros((h, w), np.float32)
    out[y0:y1, x0:x1] = m.cam_input
    return out


def road_curves(family: Family, result: Result, percentiles=ROAD_PERCENTILES) -> dict[str, dict]:
    """{model name: {"percentiles": [...], "scores": [ROAD at each p], "road": mean}} for every k and the baseline,
    each model scored on its own predicted class."""
    out = {}
    for m in result.topgap + ([result.baseline] if result.baseline else []):
        model = family.model01(m.name)
        cam = input_map(m, result)[None]
        target = [family.class_names.index(m.label)]
        scores = [float(road_scores(model, result.x01, cam, target, percentiles=(p,))[0]) for p in percentiles]
        out[m.name] = {"percentiles": list(percentiles), "scores": scores, "road": float(np.mean(scores))}
    return out
