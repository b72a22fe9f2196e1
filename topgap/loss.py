"""The Top-GAP training loss (paper section 3.3, eq. 3).

    L = CE_s(softmax(Top-GAP(X, k)), y) + lam * ||X||_1

The l1 term pushes every class-map pixel towards zero, so only the k pixels that the pooling
rewards stay large. What lam multiplies is the model's ``l1_norm`` (:data:`L1_NORMS`):

- ``"mean"`` (the default, and the meaning of every config written without the field): mean|X| over the batch,
  the C classes and the h x w cells;
- ``"sum"``: the l1 norm of each image's X, sum over the C classes and h x w cells, averaged over the batch
  (eq. 3 read literally: ||X||_1 per image).

So lam under "mean" equals lam * C*h*w under "sum": lam = 1 with "mean" on 3 classes and 56 x 56 maps is lam =
1/9408 with "sum", and the paper's "lam = 1 is sufficient", if its norm is the per-image sum, is 9408 times our
default strength there. The paper does not say which it means. ``lam=0`` is plain cross-entropy (the "no l1"
ablation of Table 8). CE_s is cross-entropy with optional label smoothing s, the same for the baseline (which has no
class maps) and for Top-GAP models, so that the two differ only by the l1 term. Training calls this module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["L1_NORMS", "topgap_loss", "loss_terms", "eq3"]

L1_NORMS = ("mean", "sum")  # what lam multiplies: mean|X| over batch, classes, cells; or ||X||_1 per image, mean


def loss_terms(logits: torch.Tensor, class_maps: torch.Tensor | None, target: torch.Tensor,
               label_smoothing: float = 0.0, l1_norm: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """(CE_s, the l1 term) in float32; the l1 term is 0 without class maps (the baseline).

    Args:
        logits: (B, C) output of the model's pooling.
        class_maps: (B, C, H, W) class maps X the logits were pooled from, or None.
        target: (B,) class indices.
        label_smoothing: s of CE_s, in [0, 1).
        l1_norm: "mean" (mean|X|) or "sum" (||X||_1 of each image, averaged over the batch); see :data:`L1_NORMS`.
    """
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must lie in [0, 1) (got {label_smoothing})")
    if class_maps is not None and logits.shape[:2] != class_maps.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and class_maps {tuple(class_maps.shape)} disagree on (B, C)")
    if l1_norm not in L1_NORMS:
        raise ValueError(f"l1_norm must be one of {', '.join(L1_NORMS)} (got {l1_norm!r})")
    ce = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
    if class_maps is None:
        return ce, ce.new_zeros(())
    a = class_maps.float().abs()
    return ce, a.mean() if l1_norm == "mean" else a.flatten(1).sum(1).mean()


def topgap_loss(logits: torch.Tensor, class_maps: torch.Tensor | None, target: torch.Tensor, lam: float = 1.0,
                label_smoothing: float = 0.0, l1_norm: str = "mean") -> torch.Tensor:
    """CE_s + lam * l1 term (eq. 3; the paper uses lam = 1 and no smoothing). See :func:`loss_terms`."""
    return eq3(*loss_terms(logits, class_maps, target, label_smoothing, l1_norm), lam)


def eq3(ce: torch.Tensor, l1: torch.Tensor, lam: float) -> torch.Tensor:
    """CE_s + lam * l1 term from :func:`loss_terms` (training calls this with the warmed-up lam_t)."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0 (got {lam})")
    return ce + lam * l1 if lam else ce
