"""One config for a trained model: what training writes, and what evaluation and the app read."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelConfig", "ablation_configs", "default_normalization", "IMAGENET_MEAN", "IMAGENET_STD", "POOLINGS",
           "POOLING_DEFAULTS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FORMAT_VERSION = 1
# pooling -> its parameters besides k (topgap.pooling has the formulas); topgap and wildcat take k, the others none
POOLINGS = {"gap": (), "gmp": (), "topgap": (), "lse": ("r",), "wildcat": ("k_min", "alpha"), "gwrp": ("d",)}
POOLING_DEFAULTS = {"lse": {"r": 10.0}, "wildcat": {"alpha": 0.7}, "gwrp": {"d": 0.996}}  # wildcat k_min: k
TAKES_K = ("topgap", "wildcat")


def default_normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from timm's pretrained_cfg of `backbone` (tf_efficientnet_lite*: 0.5 and 0.5); ImageNet's if none."""
    from timm.models import get_pretrained_cfg

    from . import backbones  # noqa: F401  (registers preact_resnet18 and its CIFAR statistics)

    cfg = get_pretrained_cfg(backbone)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean), tuple(cfg.std)


@dataclass
class ModelConfig:
    backbone: str  # timm model name, e.g. "resnet18", or "preact_resnet18" (ours, for 32x32 inputs)
    class_names: list[str]  # index -> label; its length is the class count
    kind: str = "topgap"  # "topgap" (TopGapNet) or "baseline" (the unmodified timm model, GAP + linear)
    k: int | None = 64  # Top-GAP pixel budget on the class map (WILDCAT: k+); None = plain GAP
    pooling: str = "topgap"  # a key of POOLINGS; "topgap" with k None is stored as "gap" (configs without it: topgap)
    pooling_params: dict[str, float] = field(default_factory=dict)  # POOLINGS[pooling] values, defaults filled in
    num_maps: int = 4  # how many of the backbone's last feature maps feed the FPN head
    fpn_channels: int = 256  # filters of each 3x3 FPN conv
    dropout: float = 0.0  # dropout before the 1x1 class conv (training mode only)
    fpn: bool = True  # ablation: False = class maps from the last feature map only
    last_stage: int | None = None  # backbone cut after this feature_info index (0-based); None = the backbone's last
    lam: float = 1.0  # weight of the l1 term in the loss; 0 = the "no l1" ablation
    l1_norm: str = "mean"  # what lam multiplies (topgap.loss.L1_NORMS): "mean" |X| (configs without it), "sum"
    input_size: tuple[int, int] = (224, 224)  # (H, W) the model was trained at
    mean: tuple[float, float, float] | None = None  # input normalisation before the model; None = the backbone's
    std: tuple[float, float, float] | None = None  # timm pretrained_cfg values (see default_normalization)
    recipe: dict[str, Any] = field(default_factory=dict)  # training recipe (epochs, lr, seed, ...)
    metrics: dict[str, Any] = field(default_factory=dict)  # measured results (accuracy, l1, IOU, ...)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.kind not in ("topgap", "baseline"):
            raise ValueError(f"kind must be 'topgap' or 'baseline' (got {self.kind!r})")
        if self.l1_norm not in ("mean", "sum"):  # topgap.loss.L1_NORMS (config stays free of torch)
            raise ValueError(f"l1_norm must be 'mean' or 'sum' (got {self.l1_norm!r})")
        self._check_pooling()
        if not self.class_names:
            raise ValueError("class_names is empty: a model needs at least one class")
        self.class_names = [str(c) for c in self.class_names]
        self.input_size = tuple(int(s) for s in self.input_size)
        if self.mean is None or self.std is None:
            mean, std = default_normalization(self.backbone)
            self.mean, self.std = self.mean or mean, self.std or std
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)

    def _check_pooling(self) -> None:
        """Canonical pooling fields: "gap" for k None under topgap, every parameter present and in range."""
        if self.pooling == "topgap" and self.k is None:
            self.pooling = "gap"
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} (got {self.pooling!r})")
        if self.pooling in TAKES_K and self.k is None:
            raise ValueError(f"pooling {self.pooling} needs k (the number of highest cells it averages)")
        if self.pooling not in TAKES_K and self.k is not None:
            raise ValueError(f"pooling {self.pooling} pools every cell and takes no k (got k={self.k}); k is for "
                             f"{' and '.join(TAKES_K)}")
        unknown = sorted(set(self.pooling_params) - set(POOLINGS[self.pooling]))
        if unknown:
            raise ValueError(f"pooling {self.pooling} has no parameter {unknown}; its parameters: "
                             f"{', '.join(POOLINGS[self.pooling]) or 'none'}")
        given = {**POOLING_DEFAULTS.get(self.pooling, {}), **({"k_min": self.k} if self.pooling == "wildcat" else {}),
                 **self.pooling_params}
        self.pooling_params = {n: (int(v) if n == "k_min" else float(v)) for n, v in given.items()}
        p = self.pooling_params
        if ("r" in p and not p["r"] > 0) or ("d" in p and not 0 < p["d"] <= 1) or p.get("alpha", 0) < 0 \
                or p.get("k_min", 0) < 0:
            raise ValueError(f"pooling {self.pooling}: parameters out of range {p} (LSE r > 0, GWRP 0 < d <= 1, "
                             "WILDCAT alpha >= 0 and k_min >= 0)")

    @property
    def control(self) -> bool:
        """The FPN-only control (and Table 8's no-Top-GAP arms): the Top-GAP head pooled by plain GAP."""
        return self.kind == "topgap" and self.pooling == "gap"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def topgap(self) -> bool:
        """Whether the pooling is Top-GAP (False: plain GAP, as the "no Top-GAP" ablation, or another pooling)."""
        return self.pooling == "topgap"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"weights_sha256"})
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}; it was written by a newer topgap, upgrade it")
        missing = sorted({"backbone", "class_names"} - set(d))
        if missing:
            raise ValueError(f"config is missing required fields {missing}")
        version = d.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"config format_version {version} is newer than this topgap ({FORMAT_VERSION}); upgrade it")
        return cls(**{k: v for k, v in d.items() if k in known})


def ablation_configs(cfg: ModelConfig, k_without_fpn: int | None = None) -> dict[str, ModelConfig]:
    """The 2^3 configurations of Table 8 (FPN, l1 loss, Top-GAP each on or off), named like "fpn+l1+topgap".

    Without the FPN the class map is the last feature map, (2^(num_maps-1))^2 times smaller, so k
    shrinks by that factor unless `k_without_fpn` is given (the paper: 256 on 56x56, 4 on 7x7).
    """
    if cfg.k is None:
        raise ValueError("give the Top-GAP k of the full model in cfg.k; the ablation switches it off itself")
    small_k = k_without_fpn or max(1, round(cfg.k / 4 ** (cfg.num_maps - 1)))
    out = {}
    for fpn in (False, True):
        for l1 in (False, True):
            for topgap in (False, True):
                name = "+".join(n for n, on in (("fpn", fpn), ("l1", l1), ("topgap", topgap)) if on) or "plain"
                k = (cfg.k if fpn else small_k) if topgap else None
                out[name] = dataclasses.replace(cfg, kind="topgap", fpn=fpn, lam=(cfg.lam or 1.0) if l1 else 0.0, k=k,
                                                pooling="topgap" if topgap else "gap", pooling_params={})
    return out
