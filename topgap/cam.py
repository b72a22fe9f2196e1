"""CAMs compared on equal terms: the Top-GAP model's own CAM and post-hoc baselines (pytorch-grad-cam).

Every map that is compared passes one function, :func:`postprocess`: ReLU, bilinear resize to a common
size, min-max scaling per map (``"relu-minmax"``, pytorch-grad-cam's own definition, the default), or the
same without the ReLU (``"minmax"``). The baselines' raw maps are taken before pytorch-grad-cam's own
ReLU and scaling and get them here.

Two protocols compare the own CAM with GradCAM (:data:`PROTOCOLS`; both are reported, never one picked):

- ``"paper"`` (section 3.1, Fig. 2, CAM mode): the own CAM is min-max of the raw class map X_c, no ReLU;
- ``"relu"``: the own CAM is ReLU, then min-max.

GradCAM's map is pytorch-grad-cam's standard output (ReLU, then min-max) under both
(:data:`GRADCAM_POSTPROCESSING`). Min-max keeps the order of the pixels, and ReLU only merges every pixel
with X_c <= 0 into one tie at 0: a ranking (ROAD) is the same under both except for that tie.

Identity (tested): GradCAM taken at a Top-GAP net's class-map layer, for class c, equals
``postprocess(X_c)``: d logit_c / dX_c is 1/k on the top-k pixels, so the channel weights are
(1/(h w), 0, ...) and the GradCAM map is X_c / (h w) before scaling.
"""
from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import TopGapNet, minmax_scale
from .modes import eval_mode

__all__ = ["METHODS", "POSTPROCESSING", "PROTOCOLS", "GRADCAM_POSTPROCESSING", "postprocess", "cam_size", "topgap_cam",
           "baseline_cam", "FeatureTap"]

POSTPROCESSING = ("relu-minmax", "minmax")  # postprocess's modes; None in the functions below = raw maps
PROTOCOLS = {"paper": "minmax", "relu": "relu-minmax"}  # protocol -> post-processing of the own CAM
GRADCAM_POSTPROCESSING = "relu-minmax"  # pytorch-grad-cam's standard output, under every protocol

# pytorch-grad-cam class of each method; imported on first use (it pulls in torchvision: seconds at start-up)
METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "layercam": "LayerCAM",
           "xgradcam": "XGradCAM", "eigencam": "EigenCAM", "scorecam": "ScoreCAM"}
# masked images per ScoreCAM forward: on 2 CPU cores 1, 2 and 4 take the same time, the library's 16 twice as long
# and 0.3 GB more (bench/results/scorecam_batch.json)
SCORECAM_BATCH = 4
_HOOKS_GUARD = threading.Lock()
_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its lock (_hooks_of)


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


def postprocess(maps: torch.Tensor, size: tuple[int, int] | None = None,
                mode: str = "relu-minmax") -> torch.Tensor:
    """The post-processing of every compared map: M' = minmax(resize(ReLU(M))) ("relu-minmax") or minmax(resize(M)).

    Args:
        maps: (B, h, w) raw maps.
        size: (H, W) to resize to (bilinear, align_corners=False); None keeps (h, w).
        mode: one of :data:`POSTPROCESSING`.

    Returns (B, H, W) in [0, 1]; a constant map becomes 0.
    """
    if mode not in POSTPROCESSING:
        raise ValueError(f"unknown post-processing {mode!r}; choose one of {', '.join(POSTPROCESSING)}")
    if mode == "relu-minmax":
        maps = maps.clamp_min(0)
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return minmax_scale(maps.float())


def _finish(maps: torch.Tensor, size, mode: str | None) -> torch.Tensor:
    return maps if mode is None else postprocess(maps, size, mode)


def cam_size(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """The native resolution of a model's CAM for `input_size` inputs, from one pass on zeros.

    TopGapNet: its class maps (H/4, W/4 with 4 maps); a timm classifier: its final feature map
    (GradCAM's usual target layer, e.g. H/32, W/32).
    """
    runner, _ = _target_layer(model)
    param = next(model.parameters())
    x = torch.zeros(1, 3, *input_size, device=param.device, dtype=param.dtype)
    with eval_mode(model), torch.no_grad():
        if isinstance(model, TopGapNet):
            return tuple(model.class_maps(x).shape[-2:])
        return tuple(runner.model.forward_features(x).shape[-2:])


def topgap_cam(model: TopGapNet, x: torch.Tensor, targets=None, size: tuple[int, int] | None = None,
               with_logits: bool = False, postprocessing: str | None = "relu-minmax") -> tuple[torch.Tensor, ...]:
    """The model's own CAM (paper's CAM mode): the class map X_c of one class per image.

    Args:
        model: a TopGapNet.
        x: (B, 3, H, W) normalised images.
        targets: class index per image, one index for all, or None for the predicted class.
        size: (h, w) of the returned maps; default the class-map size (H/4, W/4 with 4 maps).
        with_logits: also return the logits (B, C) of the same forward pass.
        postprocessing: see :func:`postprocess`; None returns the raw class maps (size ignored).

    Returns:
        (cams (B, h, w), the target classes (B,)[, logits (B, C)]).
    """
    with eval_mode(model), torch.no_grad():
        logits, maps = model.forward_with_maps(x)
    t = _resolve_targets(logits, targets)
    cams = _finish(maps[torch.arange(len(t), device=maps.device), t], size, postprocessing)
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


@contextmanager
def _backward_stops_at(layer: nn.Module) -> Iterator[None]:
    """The layer's output A becomes a leaf of the graph: GradCAM needs d score / dA only, so the backward pass
    skips the layers below A (the backbone). The same gradients at A, at a fraction of the cost."""
    handle = layer.register_forward_hook(lambda _module, _inputs, out: out.detach().requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()


def _hooks_of(module: nn.Module) -> threading.Lock:
    """pytorch-grad-cam hooks the module it explains, and threads may share one: one call at a time per module.
    Calls on different modules (the app's slow queue explains a copy of the baseline) run side by side."""
    with _HOOKS_GUARD:
        return _HOOKS.setdefault(module, threading.Lock())


def _scorecam_weights(self, input_tensor, target_layer, targets, activations, grads):
    """ScoreCAM's channel weights as pytorch-grad-cam computes them (Wang et al., CVPR-W 2020): w = softmax over
    channels of target(model(x * norm(up(A_c)))), `up` bilinear (align_corners) to the input size and `norm` min-max
    per channel, `batch_size` (:data:`SCORECAM_BATCH`) channels at a time. The library builds every masked input
    first (channels x 3 x H x W floats: 0.77 GB for EfficientNet-Lite0 at 224 px), keeps the target layer's
    activations of every masked batch (0.3 GB more) and draws a progress bar per call; here only one batch of masked
    inputs exists at a time. The weights are the library's up to float rounding (tested)."""
    size, step = input_tensor.shape[-2:], getattr(self, "batch_size", 16)
    acts = torch.from_numpy(activations).to(self.device)
    scores = torch.empty(acts.shape[:2])
    kept = self.activations_and_grads.activations  # the hook stores every forward's activations: not these
    n_kept = len(kept)
    with torch.no_grad():
        for b, target in enumerate(targets):
            for i in range(0, acts.shape[1], step):
                up = F.interpolate(acts[b:b + 1, i:i + step], size=size, mode="bilinear", align_corners=True)[0]
                lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
                batch = input_tensor[b][None] * ((up - lo) / (hi - lo + 1e-8))[:, None]
                scores[b, i:i + step] = torch.tensor([target(o).cpu().item() for o in self.model(batch)])
                del kept[n_kept:]
    return torch.softmax(scores, dim=-1).numpy()


@functools.cache
def _raw(name: str) -> type:
    """pytorch-grad-cam's `name` method returning its raw map at the layer's resolution: no ReLU, no scaling."""
    import pytorch_grad_cam

    class Raw(getattr(pytorch_grad_cam, METHODS[name])):
        def compute_cam_per_layer(self, input_tensor, targets, eigen_smooth):
            acts = [a.cpu().data.numpy() for a in self.activations_and_grads.activations]
            grads = [g.cpu().data.numpy() for g in self.activations_and_grads.gradients]
            return [self.get_cam_image(input_tensor, layer, targets, acts[i], grads[i] if grads else None,
                                       eigen_smooth) for i, layer in enumerate(self.target_layers)]

        def aggregate_multi_layers(self, cam_per_target_layer):
            return np.mean(np.stack(cam_per_target_layer), axis=0)

    if name == "scorecam":
        Raw.get_cam_weights, Raw.batch_size = _scorecam_weights, SCORECAM_BATCH
    Raw.__name__ = f"Raw{METHODS[name]}"
    return Raw


def baseline_cam(model: nn.Module, x: torch.Tensor, targets=None, method: str = "gradcam",
                 size: tuple[int, int] | None = None, with_logits: bool = False,
                 postprocessing: str | None = "relu-minmax", layer: nn.Module | None = None) -> tuple[torch.Tensor, ...]:
    """A post-hoc CAM (pytorch-grad-cam) of a timm classifier or of a TopGapNet.

    Args:
        model: the unmodified timm model (see :func:`topgap.model.create_baseline`) or a TopGapNet.
        x: (B, 3, H, W) normalised images.
        targets: class index per image, one index for all, or None for the predicted class.
        method: one of :data:`METHODS` (gradcam, gradcam++, hirescam, layercam, xgradcam, eigencam, scorecam).
        size: (h, w) of the returned maps; default the target layer's resolution.
        with_logits: also return the logits (B, C) of the CAM's own forward pass.
        postprocessing: see :func:`postprocess`; None returns the raw maps (before any ReLU).
        layer: the layer to explain; default the final feature map (timm) or the fused FPN map (TopGapNet).

    Returns:
        (cams (B, h, w), the target classes (B,)[, logits (B, C)]). One forward pass in all.

    Hooks are removed and the training flags restored even when the call fails; the gradients it
    produces are discarded and a caller's own accumulated gradients kept (:func:`topgap.modes.eval_mode`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    runner, default_layer = _target_layer(model)
    layer = layer or default_layer
    t = None if targets is None else _check_targets(targets, len(x), model.num_classes, x.device)
    with _hooks_of(model), eval_mode(runner), torch.enable_grad(), _backward_stops_at(layer), \
            _raw(method)(model=runner, target_layers=[layer]) as cam:
        chosen = None if t is None else [ClassifierOutputTarget(int(c)) for c in t]  # None: predicted class
        raw = torch.from_numpy(np.asarray(cam(input_tensor=x, targets=chosen), dtype=np.float32)).to(x.device)
        logits = cam.outputs.detach()
    t = logits.argmax(1) if t is None else t
    cams = _finish(raw, size, postprocessing)
    return (cams, t, logits) if with_logits else (cams, t)
