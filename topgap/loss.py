"""The Top-GAP training loss (paper section 3.3, eq. 3).

    L = CE_s(softmax(Top-GAP(X, k)), y) + lam * mean|X|

The l1 term pushes every class-map pixel towards zero, so only the k pixels that the pooling
rewards stay large. ``lam=0`` is plain cross-entropy (the "no l1" ablation of Table 8). CE_s is
cross-entropy with optional label smoothing s, the same for the baseline (which has no class maps)
and for Top-GAP models, so that the two differ only by the l1 term. Training calls this module.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["topgap_loss", "loss_terms", "eq3"]


def loss_terms(logits: torch.Tensor, class_maps: torch.Tensor | None, target: torch.Tensor,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE_s, mean|X|) in float32; mean|X| is 0 without class maps (the baseline).

    Args:
        logits: (B, C) output of the model's pooling.
        class_maps: (B, C, H, W) class maps X the logits were pooled from, or None.
        target: (B,) class indices.
        label_smoothing: s of CE_s, in [0, 1).
    """
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must lie in [0, 1) (got {label_smoothing})")
    if class_maps is not None and logits.shape[:2] != class_maps.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and class_maps {tuple(class_maps.shape)} disagree on (B, C)")
    ce = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
    l1 = class_maps.float().abs().mean() if class_maps is not None else ce.new_zeros(())
    return ce, l1


def topgap_loss(logits: torch.Tensor, class_maps: torch.Tensor | None, target: torch.Tensor, lam: float = 1.0,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """CE_s + lam * mean|X| (eq. 3; the paper uses lam = 1 and no smoothing). See :func:`loss_terms`."""
    return eq3(*loss_terms(logits, class_maps, target, label_smoothing), lam)


def eq3(ce: torch.Tensor, l1: torch.Tensor, lam: float) -> torch.Tensor:
    """CE_s + lam * mean|X| from :func:`loss_terms` (training calls this with the warmed-up lam_t)."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0 (got {lam})")
    return ce + lam * l1 if lam else ce
