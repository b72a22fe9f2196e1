"""CAM metrics: l1 sparsity (paper section 4.1), best IOU over thresholds (section 4.4), mass on the object,
and the dataset-level localisation scores of Choe et al. (CVPR 2020): PxAP and MaxBoxAccV2, with the conventions
of their code (clovaai/wsolevaluation, evaluation.py at b98c7d1: MaskEvaluator, compute_bboxes_from_scoremaps,
BoxEvaluator with multi_contour_eval and IoU levels 30/50/70).

CAMs are [0, 1] maps of shape (H, W) (or batches (..., H, W) for :func:`l1_sparsity`); masks are
binary (nonzero = object) with an optional `ignore` map of pixels left out of the count (the
boundary band of Oxford-IIIT Pet trimaps; see :func:`topgap.data.masks.binary_mask`). A CAM is resized
to its mask (bilinear, OpenCV) before it is compared.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["l1_sparsity", "best_iou", "mass_in_mask", "PxAP", "pxap_from_histograms", "BOX_IOU_LEVELS",
           "box_hits", "maxboxacc_v2", "tight_box"]


def _array(a) -> np.ndarray:
    return a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _check_cam(cam: np.ndarray) -> np.ndarray:
    # float64 maps stay float64 (the reference scores float64 maps): a float32 cast could move a value across a bin edge
    cam = cam.astype(np.float64 if cam.dtype == np.float64 else np.float32, copy=False)
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


PXAP_BINS = np.append(np.arange(0, 1, 0.001), [1.0, 2.0, 3.0])  # Choe et al.'s cam_curve_interval 0.001


def pxap_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """PxAP from histograms over :data:`PXAP_BINS` of object (``pos``) and background (``neg``) pixel scores.

    The bins' left edges, high to low, are the thresholds t_0 = 2 > t_1 = 1 > t_2 = 0.999 > ... > t_1001 = 0;
    TP_l, FP_l = object, background pixels with score >= t_l; P_l = TP_l / (TP_l + FP_l), R_l = TP_l / TP_1001:
    PxAP = sum_{l >= 1} P_l (R_l - R_{l-1}), terms with TP_l + FP_l = 0 left out (they have R_l = R_{l-1} = 0).
    That is ``MaskEvaluator.compute`` of Choe et al. (CVPR 2020; clovaai/wsolevaluation), as a fraction.
    NaN without object pixels.
    """
    tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])
    if tp[-1] == 0:
        return float("nan")
    precision = tp / np.maximum(tp + fp, 1)
    return float((precision[1:] * np.diff(tp / tp[-1])).sum())


class PxAP:
    """Pixel average precision over a whole split (Choe et al., "Evaluating WSOL Right", CVPR 2020).

    Every pixel of every image is one sample (object = positive), scored by its CAM value; precision
    and recall are pooled over the split before the AP, so a single threshold serves all images; ignore pixels
    are left out (the reference's mask value 255). ``update`` keeps one histogram pair per image (the 1002 bins of
    :data:`PXAP_BINS`), so intervals can resample images; :func:`pxap_from_histograms` gives the formula.

    Example:
        >>> m = PxAP(); m.update(cam, mask, ignore); m.summary()
    """

    def __init__(self):
        self.pos: list[np.ndarray] = []
        self.neg: list[np.ndarray] = []

    def update(self, cam, mask, ignore=None) -> None:
        values, obj = _cam_and_mask(cam, mask, ignore)
        self.pos.append(np.histogram(values[obj], bins=PXAP_BINS)[0])
        self.neg.append(np.histogram(values[~obj], bins=PXAP_BINS)[0])

    def per_image(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_images, bins) object and background histograms."""
        bins = len(PXAP_BINS) - 1
        return (np.array(self.pos).reshape(-1, bins), np.array(self.neg).reshape(-1, bins))

    def summary(self) -> float | None:
        if not self.pos:
            return None
        pos, neg = self.per_image()
        v = pxap_from_histograms(pos.sum(0), neg.sum(0))
        return None if np.isnan(v) else v

    def reset(self) -> None:
        self.pos, self.neg = [], []


BOX_IOU_LEVELS = (0.3, 0.5, 0.7)  # delta of MaxBoxAccV2
BOX_THRESHOLDS = np.arange(0, 1, 0.01)  # CAM thresholds tau (Choe et al.'s cam_curve_interval for boxes)


def tight_box(mask) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), inclusive, tight around the mask's object pixels; None for an empty mask.

    Inclusive like the reference's ground-truth boxes (its tests assert x1 <= W - 1): with the +1 IoU convention
    the box's area is its pixel count. Predicted boxes end one past the contour (x + w), so a map equal to an
    interior w x h box object scores IoU wh / ((w + 1)(h + 1)), as in the reference.
    """
    ys, xs = np.nonzero(_array(mask))
    return None if len(xs) == 0 else (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def _box_iou(a, b) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with the +1 pixel convention: area = (x1 - x0 + 1) (y1 - y0 + 1)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _contour_boxes(binary: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x, y, min(x + w, W - 1), min(y + h, H - 1)) of every contour, outer and hole (RETR_TREE), of a binary map.

    x + w is one past the contour's last column, as in the reference; [(0, 0, 0, 0)] when there is no contour.
    """
    height, width = binary.shape
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    rects = map(cv2.boundingRect, contours)
    return [(x, y, min(x + w, width - 1), min(y + h, height - 1)) for x, y, w, h in rects] or [(0, 0, 0, 0)]


def box_hits(cam, mask) -> np.ndarray:
    """(thresholds, deltas) booleans: IoU(best box at tau, gt) >= delta, MaxBoxAccV2's per-image term.

    As ``compute_bboxes_from_scoremaps(multi_contour_eval=True)`` and ``BoxEvaluator.accumulate`` of Choe et al.
    (CVPR 2020; clovaai/wsolevaluation): the map becomes 8-bit, u = uint8(255 cam) (truncated); at tau the kept
    pixels are u > int(tau max(u)) (cv2.THRESH_BINARY); every contour proposes a box (:func:`_contour_boxes`), the
    best IoU (:func:`_box_iou`) with the ground truth counts. The ground truth is :func:`tight_box` of the mask (the
    pets' xml boxes are heads only). A CAM is resized to the mask first.
    """
    cam = _check_cam(_array(cam))
    mask = _array(mask) != 0
    if cam.shape != mask.shape:
        cam = cv2.resize(cam, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    gt = tight_box(mask)
    if gt is None:
        raise ValueError("the mask marks no object pixel: a box accuracy needs an object")
    image = (np.clip(cam.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    peak, best = int(image.max()), {}
    hits = np.zeros((len(BOX_THRESHOLDS), len(BOX_IOU_LEVELS)), dtype=bool)
    for i, tau in enumerate(BOX_THRESHOLDS):
        level = int(tau * peak)
        if level not in best:
            binary = cv2.threshold(image, level, 255, cv2.THRESH_BINARY)[1]
            best[level] = max(_box_iou(gt, box) for box in _contour_boxes(binary))
        hits[i] = best[level] >= np.array(BOX_IOU_LEVELS)
    return hits


def maxboxacc_v2(hits: np.ndarray) -> float | None:
    """MaxBoxAccV2 = mean over delta in (0.3, 0.5, 0.7) of max over tau of the share of images hit.

    ``BoxEvaluator.compute`` averaged over the IoU levels (``multi_iou_eval``), as a fraction.

    Args:
        hits: (n_images, thresholds, deltas) from :func:`box_hits`.
    """
    hits = np.asarray(hits)
    if hits.size == 0:
        return None
    return float(hits.mean(0).max(0).mean())
