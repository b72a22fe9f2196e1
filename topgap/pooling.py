"""Global poolings of class maps (B, C, H, W) -> (B, C): Top-GAP (paper section 3.2, eq. 2) and those before it.

    Top-GAP(X, k)_t = 1/k * sum_{i=1..k} X~_{i,t}

where X~ holds each channel's n = H*W values sorted in descending order. k = 1 is global max pooling; k >= n is
global average pooling. The poolings it is compared with, on the same head (issue: competing poolings):

- GAP: mean over the n cells; GMP (Oquab et al., CVPR 2015): the maximum.
- LSE (Pinheiro & Collobert, CVPR 2015): 1/r * log(1/n * sum_i exp(r X_i)); r -> 0 is GAP, r -> inf is GMP.
- WILDCAT (Durand et al., CVPR 2017; WELDON, CVPR 2016, is alpha = 1 and k- = k+): mean of the k+ highest
  + alpha * mean of the k- lowest; alpha = 0 (or k- = 0) is Top-GAP with k = k+.
- GWRP (Kolesnikov & Lampert, ECCV 2016): sum_i d^(i-1) X~_i / sum_i d^(i-1); d = 1 is GAP, d -> 0 is GMP.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .config import POOLINGS

__all__ = ["top_gap", "gmp", "lse", "wildcat", "gwrp", "pool", "TopGAP", "GlobalPool", "make_pool", "check_k",
           "POOLINGS"]


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


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    return x.flatten(2)


def gmp(x: torch.Tensor) -> torch.Tensor:
    """Global max pooling (Oquab et al., CVPR 2015): max over the H*W cells, (B, C, H, W) -> (B, C)."""
    return _flat(x, "gmp").amax(-1)


def lse(x: torch.Tensor, r: float) -> torch.Tensor:
    """Log-sum-exp pooling (Pinheiro & Collobert, CVPR 2015): 1/r * log(1/n * sum_i exp(r x_i)) over the n = H*W
    cells, computed stably; r -> 0 tends to GAP, r -> inf to GMP.

    Example:
        >>> lse(torch.tensor([[[[0., 2.]]]]), r=1.0)  # log((1 + e^2) / 2)
        tensor([[1.4338]])
    """
    if not r > 0:
        raise ValueError(f"LSE needs r > 0 (got {r}); small r pools like GAP, large r like GMP")
    flat = _flat(x, "lse")
    return (torch.logsumexp(r * flat, -1) - math.log(flat.shape[-1])) / r


def wildcat(x: torch.Tensor, k_max: int, k_min: int, alpha: float) -> torch.Tensor:
    """WILDCAT pooling (Durand et al., CVPR 2017): mean of the k_max highest cells + alpha * mean of the k_min
    lowest; k_min = 0 or alpha = 0 is Top-GAP with k = k_max. Counts above H*W are clipped to it.

    Example:
        >>> wildcat(torch.arange(4.).view(1, 1, 2, 2), k_max=1, k_min=2, alpha=0.5)  # 3 + 0.5 * (0 + 1) / 2
        tensor([[3.2500]])
    """
    flat = _flat(x, "wildcat")
    n = flat.shape[-1]
    high = flat.topk(min(check_k(k_max), n), dim=-1, sorted=False).values.mean(-1)
    if not k_min or not alpha:
        return high
    return high + alpha * flat.topk(min(int(k_min), n), dim=-1, largest=False, sorted=False).values.mean(-1)


def gwrp(x: torch.Tensor, d: float) -> torch.Tensor:
    """Global weighted rank pooling (Kolesnikov & Lampert, ECCV 2016): sum_i d^(i-1) x~_i / sum_i d^(i-1), x~ the
    cells in descending order; d = 1 is GAP, d -> 0 tends to GMP.

    Example:
        >>> gwrp(torch.tensor([[[[1., 3.]]]]), d=0.5)  # (3 + 0.5 * 1) / 1.5
        tensor([[2.3333]])
    """
    if not 0 < d <= 1:
        raise ValueError(f"GWRP needs 0 < d <= 1 (got {d}); d = 1 is GAP, small d pools like GMP")
    flat = _flat(x, "gwrp").sort(-1, descending=True).values
    weights = d ** torch.arange(flat.shape[-1], dtype=flat.dtype, device=flat.device)
    return (flat * weights).sum(-1) / weights.sum()


def pool(x: torch.Tensor, pooling: str, k: int | None = None, **params) -> torch.Tensor:
    """Pool class maps by name (a key of :data:`POOLINGS`): gap, gmp, topgap (k), lse (r), wildcat (k, k_min,
    alpha), gwrp (d)."""
    if pooling == "gap":
        return _flat(x, "gap").mean(-1)
    if pooling == "topgap":
        return top_gap(x, k)
    if pooling == "gmp":
        return gmp(x)
    if pooling == "lse":
        return lse(x, params["r"])
    if pooling == "wildcat":
        return wildcat(x, k, params["k_min"], params["alpha"])
    if pooling == "gwrp":
        return gwrp(x, params["d"])
    raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")


class GlobalPool(nn.Module):
    """Module form of :func:`pool` for the poolings other than Top-GAP and GAP (see :class:`TopGAP` for those)."""

    def __init__(self, pooling: str, k: int | None = None, **params):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        self.pooling, self.k, self.params = pooling, check_k(k), dict(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool(x, self.pooling, self.k, **self.params)

    def extra_repr(self) -> str:
        return ", ".join([self.pooling] + [f"k={self.k}"] * (self.k is not None) +
                         [f"{n}={v}" for n, v in self.params.items()])


def make_pool(pooling: str = "topgap", k: int | None = None, params: dict | None = None) -> nn.Module:
    """The pooling module of a model: :class:`TopGAP` for topgap and gap (k None), :class:`GlobalPool` otherwise."""
    if pooling in ("topgap", "gap"):
        return TopGAP(k if pooling == "topgap" else None)
    return GlobalPool(pooling, k, **(params or {}))
