"""CAM metrics: l1 sparsity (paper section 4.1), best IOU over thresholds (section 4.4), mass on the object.

CAMs are [0, 1] maps of shape (H, W) (or batches (..., H, W) for :func:`l1_sparsity`); masks are
binary (nonzero = object) with an optional `ignore` map of pixels left out of the count (the
boundary band of Oxford-IIIT Pet trimaps; see :func:`topgap.data.masks.binary_mask`). A CAM is resized
to its mask (bilinear, OpenCV) before it is compared.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["l1_sparsity", "best_iou", "mass_in_mask"]


def _array(a) -> np.ndarray:
    return a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _check_cam(cam: np.ndarray) -> np.ndarray:
    cam = cam.astype(np.float32, copy=False)
    if cam.ndim < 2:
        raise ValueError(f"a CAM needs at least 2 dims (H, W), got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("CAM contains NaN or inf")
    if cam.size and (cam.min() < -1e-6 or cam.max() > 1 + 1e-6):
        raise ValueError(f"CAM values must lie in [0, 1] (got {cam.min():.3g}..{cam.max():.3g}); "
                         "min-max scale it first, as TopGapNet.cam and topgap.cam do")
    return cam


def l1_sparsity(cam) -> float | np.ndarray:
    """(1 / nm) ||X||_1 of a [0, 1] CAM X (section 4.1): lower is sparser.

    (H, W) -> float; (..., H, W) -> array of one value per map.
    """
    cam = _check_cam(_array(cam))
    out = np.abs(cam).mean((-2, -1))
    return float(out) if cam.ndim == 2 else out


def _cam_and_mask(cam, mask, ignore):
    cam, mask = _check_cam(_array(cam)), _array(mask) != 0
    if cam.ndim != 2 or mask.ndim != 2:
        raise ValueError(f"expected one (H, W) CAM and one (H, W) mask, got {cam.shape} and {mask.shape}")
    if cam.shape != mask.shape:
        cam = cv2.resize(cam, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    valid = np.ones_like(mask) if ignore is None else _array(ignore) == 0
    if valid.shape != mask.shape:
        raise ValueError(f"ignore map {valid.shape} and mask {mask.shape} differ in size")
    return cam[valid], mask[valid]


def best_iou(cam, mask, ignore=None) -> tuple[float, float]:
    """The largest IOU between ``cam >= t`` and the mask over every threshold t (section 4.4).

    Exact: every distinct CAM value is tried (sort once, cumulative counts), not a fixed grid.

    Args:
        cam: (h, w) CAM in [0, 1]; resized to the mask's size.
        mask: (H, W) binary mask, nonzero = object.
        ignore: optional (H, W) map, nonzero = pixel left out of intersection and union.

    Returns:
        (iou, threshold): the best IOU and the lowest CAM value kept at that threshold.

    Raises:
        ValueError: an empty mask (IOU of an absent object is undefined), a CAM outside [0, 1].
    """
    values, obj = _cam_and_mask(cam, mask, ignore)
    positives = int(obj.sum())
    if positives == 0:
        raise ValueError("the mask marks no object pixel: IOU is undefined for an empty mask; "
                         "check the mask's encoding (nonzero = object) or draw the object")
    order = np.argsort(-values, kind="stable")
    v, tp = values[order], np.cumsum(obj[order])
    n = np.arange(1, len(v) + 1)
    iou = tp / (n + positives - tp)
    last_of_tie = np.r_[v[1:] < v[:-1], True]  # thresholding keeps whole groups of equal values
    i = int(np.argmax(np.where(last_of_tie, iou, -1.0)))
    return float(iou[i]), float(v[i])


def mass_in_mask(cam, mask, ignore=None) -> float:
    """Share of the CAM's total mass that lies on the object: sum(cam * mask) / sum(cam).

    1.0 means the map looks only at the object, the object's area share means it looks everywhere
    alike. NaN when the CAM is all zero (nothing highlighted).
    """
    values, obj = _cam_and_mask(cam, mask, ignore)
    total = float(values.sum())
    return float(values[obj].sum()) / total if total > 0 else float("nan")
