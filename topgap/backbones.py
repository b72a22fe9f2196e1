"""PreAct-ResNet-18 for 32x32 inputs (He et al., 2016), the CIFAR-10 network of the paper's Table 4.

Registered with timm (and ``preact_resnet18_w16``, a quarter of the width, for CPU-scaled runs), so
``timm.create_model("preact_resnet18", num_classes=10)`` gives the baseline
and ``features_only=True`` gives the Top-GAP backbone, like any timm CNN. Feature maps for a 32x32
input: 64@32x32, 128@16x16, 256@8x8, 512@4x4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ["PreActResNet"]


class PreActBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0,
                 base_width: int = 64, **kwargs):
        super().__init__()
        widths = tuple(base_width * 2**i for i in range(4))
        self.num_classes, self.num_features, self.drop_rate = num_classes, widths[-1], drop_rate
        self.stem = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        in_chs, stages, self.feature_info = widths[0], [], []
        for i, (w, n) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            blocks = [PreActBlock(in_chs if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)]
            if i == len(widths) - 1:  # the pre-activation net ends with BN + ReLU before pooling
                blocks += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=w, reduction=2**i, module=f"stages.{i}"))
            in_chs = w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(widths[-1], num_classes) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg"):
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.dropout(x.mean((2, 3)), self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_CIFAR = dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), mean=(0.4914, 0.4822, 0.4465),
              std=(0.2470, 0.2435, 0.2616), first_conv="stem", classifier="fc")
default_cfgs = generate_default_cfgs({"preact_resnet18.untrained": _CIFAR, "preact_resnet18_w16.untrained": _CIFAR})


def _create(variant: str, pretrained: bool, **kwargs) -> PreActResNet:
    feature_cfg = dict(flatten_sequential=True, out_indices=kwargs.pop("out_indices", (0, 1, 2, 3)))
    return build_model_with_cfg(PreActResNet, variant, pretrained, layers=(2, 2, 2, 2), feature_cfg=feature_cfg,
                                **kwargs)


@register_model
def preact_resnet18(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreAct-ResNet-18 for 32x32 inputs (widths 64-512); no pretrained weights exist."""
    return _create("preact_resnet18", pretrained, **kwargs)


@register_model
def preact_resnet18_w16(pretrained: bool = False, **kwargs) -> PreActResNet:
    """PreAct-ResNet-18 at a quarter of the width (16-128, ~16x fewer FLOPs): the CPU-scaled CIFAR-10 network."""
    return _create("preact_resnet18_w16", pretrained, base_width=16, **kwargs)
