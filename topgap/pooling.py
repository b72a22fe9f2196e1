"""Top-GAP pooling (paper section 3.2, eq. 2).

    Top-GAP(X, k)_t = 1/k * sum_{i=1..k} X~_{i,t}

where X~ holds each channel's H*W values sorted in descending order. k = 1 is global max
pooling; k >= H*W is global average pooling.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["top_gap", "TopGAP", "check_k"]


def check_k(k: int | None) -> int | None:
    """Return k as int, or None (plain GAP); raise ValueError for anything else."""
    if k is None:
        return None
    if isinstance(k, bool) or not float(k).is_integer():
        raise ValueError(f"k must be a whole number of pixels (got {k!r}); use k=None for plain GAP")
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k}); k=1 is global max pooling, k>=H*W is global average pooling")
    return int(k)


def top_gap(x: torch.Tensor, k: int | None) -> torch.Tensor:
    """Mean of the k largest values of each channel: (B, C, H, W) -> (B, C).

    Gradients flow to exactly the k selected positions of each channel (ties are broken by
    `torch.topk`). ``k=None`` or ``k >= H*W`` is global average pooling.

    Example:
        >>> top_gap(torch.arange(8.).view(1, 2, 2, 2), k=2)
        tensor([[2.5000, 6.5000]])
    """
    if x.dim() != 4:
        raise ValueError(f"top_gap expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    k = check_k(k)
    flat = x.flatten(2)
    if k is None or k >= flat.shape[-1]:
        return flat.mean(-1)
    return flat.topk(k, dim=-1, sorted=False).values.mean(-1)


class TopGAP(nn.Module):
    """Module form of :func:`top_gap`; ``k=None`` is plain GAP.

    Warns once when k >= H*W of the maps it pools: Top-GAP then is plain GAP, most likely not what a
    model configured with that k was meant to be (lower k, or raise the input size).
    """

    def __init__(self, k: int | None):
        super().__init__()
        self.k = check_k(k)
        self._warned = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k is not None and not self._warned and x.dim() == 4 and self.k >= x.shape[-2] * x.shape[-1]:
            self._warned = True
            warnings.warn(f"Top-GAP k={self.k} >= {x.shape[-2]}x{x.shape[-1]} = {x.shape[-2] * x.shape[-1]} pixels "
                          "of the class map: this pools like plain GAP; lower k or raise the input size", stacklevel=2)
        return top_gap(x, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}"
