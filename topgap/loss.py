"""The Top-GAP training loss (paper section 3.3, eq. 3).

    L = CE(softmax(Top-GAP(X, k)), y) + lam * mean|X|

The l1 term pushes every class-map pixel towards zero, so only the k pixels that the pooling
rewards stay large. ``lam=0`` is plain cross-entropy (the "no l1" ablation of Table 8).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["topgap_loss"]


def topgap_loss(logits: torch.Tensor, class_maps: torch.Tensor, target: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Cross-entropy on the pooled logits plus ``lam`` times the mean absolute class-map value.

    Args:
        logits: (B, C) output of the model's pooling.
        class_maps: (B, C, H, W) class maps X the logits were pooled from.
        target: (B,) class indices.
        lam: weight of the l1 term (the paper uses 1.0).
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0 (got {lam})")
    if logits.shape[:2] != class_maps.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and class_maps {tuple(class_maps.shape)} disagree on (B, C)")
    loss = F.cross_entropy(logits, target)
    if lam:
        loss = loss + lam * class_maps.abs().mean()
    return loss
