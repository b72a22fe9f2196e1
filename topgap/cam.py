"""CAMs at one scale: the Top-GAP model's own CAM and post-hoc baselines through pytorch-grad-cam.

Both come back as (B, H, W) float tensors in [0, 1], min-max scaled per image after resizing to
the same `size`, so a Top-GAP CAM and a GradCAM of the unmodified model compare fairly.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pytorch_grad_cam import (EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from .model import TopGapNet, minmax_scale

__all__ = ["METHODS", "topgap_cam", "baseline_cam", "FeatureTap"]

METHODS = {
    "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "layercam": LayerCAM,
    "xgradcam": XGradCAM, "eigencam": EigenCAM, "scorecam": ScoreCAM,
}
_HOOKS = threading.Lock()  # pytorch-grad-cam hooks modules that threads may share: one call at a time


class FeatureTap(nn.Module):
    """Runs a timm classifier as ``forward_head(tap(forward_features(x)))``.

    `tap` is an identity that sees the final feature map of any timm CNN (after conv_head for
    EfficientNet, after the last stage for ResNet/ConvNeXt), the usual GradCAM target layer.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.tap = model, nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.tap(self.model.forward_features(x)))


def _resolve_targets(logits: torch.Tensor, targets: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    if targets is None:
        return logits.argmax(1)
    return _check_targets(targets, *logits.shape, logits.device)


def _check_targets(targets, batch: int, num_classes: int, device) -> torch.Tensor:
    t = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} targets for a batch of {batch}; give one per image, one for all, or None")
    if (t < 0).any() or (t >= num_classes).any():
        raise ValueError(f"target classes must be in 0..{num_classes - 1} (got {t.tolist()})")
    return t


def _to_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax_scale(maps)


def topgap_cam(model: TopGapNet, x: torch.Tensor, targets=None, size: tuple[int, int] | None = None,
               with_logits: bool = False) -> tuple[torch.Tensor, ...]:
    """The model's own CAM (paper's CAM mode) for one class per image.

    Args:
        model: a TopGapNet.
        x: (B, 3, H, W) normalised images.
        targets: class index per image, one index for all, or None for the predicted class.
        size: (h, w) of the returned maps; default the class-map size (H/4, W/4 with 4 maps).
        with_logits: also return the logits (B, C) of the same forward pass.

    Returns:
        (cams (B, h, w) in [0, 1], the target classes (B,)[, logits (B, C)]).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits, maps = model.forward_with_maps(x)
            t = _resolve_targets(logits, targets)
    finally:
        model.train(was_training)
    maps = maps[torch.arange(len(t), device=maps.device), t]
    cams = _to_size(maps, size or tuple(maps.shape[-2:]))
    return (cams, t, logits) if with_logits else (cams, t)


def _target_layer(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(module to run, layer to hook) for GradCAM on a TopGapNet or on a timm classifier."""
    if isinstance(model, TopGapNet):
        return model, (model.head.fused if model.fpn else model.head[0])
    if isinstance(model, FeatureTap):
        return model, model.tap
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise TypeError(f"{type(model).__name__} is neither a TopGapNet nor a timm model (forward_features/forward_head)")
    wrapped = FeatureTap(model)
    return wrapped, wrapped.tap


def baseline_cam(model: nn.Module, x: torch.Tensor, targets=None, method: str = "gradcam",
                 size: tuple[int, int] | None = None, with_logits: bool = False) -> tuple[torch.Tensor, ...]:
    """A post-hoc CAM (pytorch-grad-cam) of a timm classifier or of a TopGapNet.

    Args:
        model: the unmodified timm model (see :func:`topgap.model.create_baseline`) or a TopGapNet.
        x: (B, 3, H, W) normalised images.
        targets: class index per image, one index for all, or None for the predicted class.
        method: one of :data:`METHODS` (gradcam, gradcam++, hirescam, layercam, xgradcam, eigencam, scorecam).
        size: (h, w) of the returned maps; default the input size. Pass a Top-GAP CAM's size to compare.
        with_logits: also return the logits (B, C) of the CAM's own forward pass.

    Returns:
        (cams (B, h, w) in [0, 1], the target classes (B,)[, logits (B, C)]). One forward pass in all.

    Hooks are removed and the model's training flag restored even when the call fails; parameter
    gradients it produced are released, so repeated calls do not grow memory.
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    runner, layer = _target_layer(model)
    t = None if targets is None else _check_targets(targets, len(x), model.num_classes, x.device)
    was_training = model.training
    with _HOOKS:
        try:
            runner.eval()
            with torch.enable_grad(), METHODS[method](model=runner, target_layers=[layer]) as cam:
                chosen = None if t is None else [ClassifierOutputTarget(int(c)) for c in t]  # None: predicted class
                grayscale = cam(input_tensor=x, targets=chosen)
                logits = cam.outputs.detach()
        finally:
            model.train(was_training)
            model.zero_grad(set_to_none=True)
    t = logits.argmax(1) if t is None else t
    cams = _to_size(torch.from_numpy(grayscale).float().to(x.device), size or tuple(x.shape[-2:]))
    return (cams, t, logits) if with_logits else (cams, t)
