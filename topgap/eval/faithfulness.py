"""Faithfulness of a map: ROAD (Rong et al., ICML 2022), through pytorch-grad-cam's implementation.

A sparse map can still be unfaithful. ROAD removes the pixels a map ranks highest (MoRF) or lowest
(LeRF) at several percentiles, fills them in, and measures the change of the target's softmax score.
The combined score is (LeRF - MoRF) / 2 averaged over the percentiles: higher = the map ranks pixels
by their real influence. Imputation (one switch, recorded in every report): "linear", ROAD's own noisy
linear imputation (a sparse solve per image and percentile: ~10 s per 224 px image on 2 CPU cores),
or "blur" (default: removed pixels replaced by a Gaussian blur of the image, sigma = 1/16 of the
side, no black patches either; ~100x faster). The same function serves `topgap evaluate` and the app.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from ..modes import eval_mode

__all__ = ["ROAD_PERCENTILES", "IMPUTERS", "road_scores"]

ROAD_PERCENTILES = (20, 40, 60, 80)


class BlurImputer:
    """Removed pixels (mask 0) take the value of a Gaussian blur of the image (sigma = side / 16)."""

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = img.permute(1, 2, 0).numpy()
        sigma = max(a.shape[:2]) / 16
        blurred = torch.from_numpy(np.ascontiguousarray(cv2.GaussianBlur(a, (0, 0), sigma)).reshape(a.shape))
        keep = mask.to(img.dtype)[None]
        return img * keep + blurred.permute(2, 0, 1) * (1 - keep)


IMPUTERS = ("blur", "linear")


def road_scores(model: nn.Module, x: torch.Tensor, cams, targets, percentiles=ROAD_PERCENTILES,
                imputer: str = "blur") -> np.ndarray:
    """ROAD combined score per image, (B,).

    Args:
        model: classifier on the same inputs as `x` (normalised images).
        x: (B, 3, H, W) images.
        cams: (B, H, W) maps at the input resolution (tensor or array); larger = more relevant.
        targets: (B,) class per image whose softmax score is tracked.
        percentiles: removal percentiles, averaged.
        imputer: "blur" or "linear" (ROAD's noisy linear imputation), see the module docstring.
    """
    if imputer not in IMPUTERS:
        raise ValueError(f"unknown imputer {imputer!r}; choose one of {', '.join(IMPUTERS)}")
    cams = cams.detach().cpu().numpy() if isinstance(cams, torch.Tensor) else np.asarray(cams)
    if cams.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"ROAD needs one map per image at the input size {tuple(x.shape[-2:])}; got {cams.shape}")
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    chosen = [ClassifierOutputSoftmaxTarget(int(t)) for t in torch.as_tensor(targets).reshape(-1)]
    cams = cams.astype(np.float32)
    fill = BlurImputer() if imputer == "blur" else NoisyLinearImputer()
    morf, lerf = [], []
    with eval_mode(model), torch.no_grad():
        for p in percentiles:
            morf.append(PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, fill))(x, cams, chosen, model))
            lerf.append(PerturbationConfidenceMetric(RemoveLeastRelevantFirst(p, fill))(x, cams, chosen, model))
    return ((np.mean(lerf, 0) - np.mean(morf, 0)) / 2).astype(np.float64).reshape(-1)
