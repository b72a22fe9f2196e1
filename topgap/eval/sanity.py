"""Sanity checks for saliency maps: cascading model-parameter randomisation (Adebayo et al., NeurIPS 2018).

A map that barely changes when the weights it explains are random does not explain the model. On a deep
copy of the model (the caller's is never touched) the parameters are re-initialised cumulatively from the top:
first the head (TopGapNet: the FPN head; a timm classifier: ``get_classifier()``), then the backbone's feature
stages one at a time, top down (stage i = the blocks after feature map i-1 up to feature map i, numbered
like ``ModelConfig.last_stage``; stage 0 includes the stem; layers after the last stage, e.g. EfficientNet's
conv_head, go with the top stage). After each step the maps of the same images and target classes are
recomputed and compared with the original maps, per image:

- ``spearman``: Spearman rank correlation of the raw (signed) maps, r_s = corr(rank(M), rank(M'));
- ``spearman_abs``: the same of |M| and |M'|;
- ``ssim``: SSIM (Wang et al. 2004) of the maps post-processed as the `protocol` says (:func:`postprocessing_modes`:
  the own CAM min-max ("paper") or ReLU + min-max ("relu"), GradCAM its standard ReLU + min-max), on [0, 1].

Raw maps are the maps before ReLU and min-max (min-max does not change ranks); all maps are resized
bilinearly to the input size first, so that the model's own CAM and GradCAM are compared alike.

**Flag.** A map "survives" randomisation (flagged) when the mean ``spearman_abs`` over the images between the
original maps and those after randomising the head alone (the first, mildest step) is >= :data:`THRESHOLD` =
0.5. Why: in Adebayo et al.'s cascade the maps of methods that pass fall towards 0 once the top layers are random,
while those that fail (guided backprop, guided GradCAM) and input-driven maps (edge detectors) stay high;
0.5 lies between the two and is the conventional "large" correlation (Cohen 1988), i.e. a map that keeps that
much of its ranking without the trained head explains the image more than the classifier. The absolute value
is used so that a random head that only flips the map's sign, keeping its structure (as an input-driven map
does), still counts as surviving. A TopGapNet's head is its whole FPN head (3x3 laterals + 1x1 classifier),
a timm classifier's only its final linear layer.

Why our own loop and not Quantus 0.6 MPRT: Quantus randomises each module with ``reset_parameters`` in turn
(45 steps for a resnet18 TopGapNet), with no way to group them into a head and stages; it reseeds the global torch
RNG with the same seed before every layer; its SSIM receives flattened maps and fails in batched mode; its
requirements pull opencv-python beside our opencv-python-headless. Its Spearman is ``scipy.stats.spearmanr``,
used here as well.
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats
from torch import nn

from .. import cam as _cam
from ..config import ModelConfig
from ..model import Normalize, TopGapNet
from .stats import finite_mean

__all__ = ["THRESHOLD", "FLAG_METRIC", "FLAG_STAGE", "spearman", "ssim", "randomisation_stages", "randomise_",
           "postprocessing_modes", "cascading_randomisation", "randomisation_by_protocol"]

THRESHOLD = 0.5  # mean spearman_abs after randomising the head >= THRESHOLD => the map survives (flagged)
FLAG_METRIC, FLAG_STAGE = "spearman_abs", "head"
METRICS = ("spearman_abs", "spearman", "ssim")


def spearman(a, b) -> float:
    """Spearman's rank correlation of two maps (flattened): Pearson's r of their ranks (ties: mean rank).

    scipy.stats.spearmanr; NaN when a map is constant (the correlation is undefined).
    """
    a, b = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (a, b))
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(a, b)[0])


def _gaussian_window(sigma: float) -> np.ndarray:
    """1-D Gaussian, radius int(3.5 sigma + 0.5) (11 taps for sigma 1.5, Wang et al.'s window), sum 1."""
    r = int(3.5 * sigma + 0.5)
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable correlation of the last two axes with `g`, kept where the window fits."""
    r = len(g) // 2
    x = ndimage.correlate1d(x, g, axis=-1, mode="constant")[..., r:x.shape[-1] - r]
    return ndimage.correlate1d(x, g, axis=-2, mode="constant")[..., r:x.shape[-2] - r, :]


def ssim(a, b, *, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Mean structural similarity of each pair of maps (Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 2004).

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)), with C1 = (k1 L)^2,
    C2 = (k2 L)^2, L = `data_range`; the local means, variances and covariance are weighted by an 11x11 Gaussian
    window (sigma 1.5), computed where the window fits ("valid"), and averaged over the map. Equals
    ``skimage.metrics.structural_similarity(x, y, data_range=L, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``.

    Args:
        a, b: (B, H, W) or (H, W) maps (tensors or arrays), H and W at least the window size (11).

    Returns (B,) (or a 0-d array) in float64; 1 for identical maps.
    """
    g = _gaussian_window(sigma)
    x, y = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64) for v in (a, b))
    if x.shape != y.shape or x.ndim < 2 or min(x.shape[-2:]) < len(g):
        raise ValueError(f"ssim needs two maps of one shape, at least {len(g)} px a side (got {x.shape}, "
                         f"{y.shape}); resize them first")
    mx, my, exx, eyy, exy = _filter_valid(np.stack([x, y, x * x, y * y, x * y]), g)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean((-2, -1))


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module, list[str]]:
    """(head, body, feature-stage module names) of a TopGapNet or a timm classifier."""
    if isinstance(model, TopGapNet):
        return model.head, model.backbone, [d["module"] for d in model.backbone.feature_info.info]
    if not (hasattr(model, "get_classifier") and hasattr(model, "feature_info")):
        raise TypeError(f"{type(model).__name__} is neither a TopGapNet nor a timm classifier "
                        "(get_classifier, feature_info)")
    info = model.feature_info
    return model.get_classifier(), model, [d["module"] for d in getattr(info, "info", info)]


def _owns_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or hasattr(m, "reset_running_stats")


def randomisation_stages(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The cascade in its order: ``[("head", modules), ("stage<i>", modules) for i from the top down]``.

    A module holding parameters belongs to the first feature stage whose module (``feature_info``) comes at
    or after it in ``named_modules`` order; modules after the last stage present go with that stage. Stages
    removed by a ``last_stage`` cut (no modules left) are skipped.
    """
    head, body, names = _parts(model)
    in_head = {id(m) for m in head.modules()}
    mods = [(n, m) for n, m in body.named_modules() if id(m) not in in_head]
    ends = {}
    for i, stage in enumerate(names):
        keys = {stage, stage.replace(".", "_")}  # FeatureListNet flattens nested names: "stages.0" -> "stages_0"
        hits = [j for j, (n, _) in enumerate(mods) if n in keys or any(n.startswith(k + ".") for k in keys)]
        if hits:
            ends[i] = max(hits)
    groups: dict[int, list[nn.Module]] = {i: [] for i in ends}
    for j, (_, m) in enumerate(mods):
        if _owns_state(m) and ends:
            groups[next((i for i, e in ends.items() if j <= e), max(ends))].append(m)
    head_mods = [m for m in head.modules() if _owns_state(m)]
    return [("head", head_mods)] + [(f"stage{i}", groups[i]) for i in sorted(groups, reverse=True) if groups[i]]


def randomise_(modules: list[nn.Module], seed: int) -> list[str]:
    """Re-initialise `modules` in place with torch's default initialisers (``reset_parameters``), seeded.

    The draws run on the CPU under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` (the global
    RNG is restored afterwards; the same weights on any device). A module without ``reset_parameters`` gets
    the nn.Linear/nn.Conv default for its >= 2-D parameters (kaiming_uniform_, a = sqrt(5)); its 1-D ones
    (e.g. layer scales) are kept and their names returned.
    """
    kept = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in modules:
            device = next(m.parameters(recurse=False), next(m.buffers(recurse=False), torch.empty(0))).device
            m.to("cpu")
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:
                if hasattr(m, "reset_running_stats"):
                    m.reset_running_stats()
                kept += _default_init_(m)
            m.to(device)
    return kept


def _default_init_(m: nn.Module) -> list[str]:
    """nn.Linear/nn.Conv's default (kaiming_uniform_, a = sqrt(5)) for `m`'s own >= 2-D parameters; returns
    the names of the 1-D ones, left as they are."""
    kept = []
    for name, p in m.named_parameters(recurse=False):
        if p.ndim >= 2:
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        else:
            kept.append(f"{type(m).__name__}.{name}")
    return kept


def _stage_seed(seed: int, step: int) -> int:
    """An independent torch seed per (seed, step) (numpy SeedSequence)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _raw_maps(model: nn.Module, xn: torch.Tensor, targets: torch.Tensor, cam_method: str,
              batch_size: int) -> dict[str, torch.Tensor]:
    """Raw (signed, unscaled) maps {"own" (TopGapNet only), "gradcam"}, (B, h, w) at their native size."""
    out: dict[str, list[torch.Tensor]] = {"gradcam": []}
    if isinstance(model, TopGapNet):
        out["own"] = []
    for i in range(0, len(xn), batch_size):
        x, t = xn[i:i + batch_size], targets[i:i + batch_size]
        if "own" in out:
            out["own"].append(_cam.topgap_cam(model, x, t, postprocessing=None)[0].detach())
        out["gradcam"].append(_cam.baseline_cam(model, x, t, method=cam_method, postprocessing=None)[0].detach())
    return {k: torch.cat(v) for k, v in out.items()}


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, h, w) raw maps (as :func:`topgap.cam.postprocess` does), float32 on the CPU."""
    maps = maps.float().cpu()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def postprocessing_modes(protocol: str) -> dict[str, str]:
    """{"own", "gradcam"}: the :func:`topgap.cam.postprocess` mode of each map under `protocol`.

    `protocol`: a name of :data:`topgap.cam.PROTOCOLS` ("paper": own CAM min-max, "relu": ReLU then min-max) or
    directly the own CAM's mode (one of :data:`topgap.cam.POSTPROCESSING`); GradCAM's map is
    :data:`topgap.cam.GRADCAM_POSTPROCESSING` (pytorch-grad-cam's standard output) under every protocol.
    """
    own = _cam.PROTOCOLS.get(protocol, protocol)
    if own not in _cam.POSTPROCESSING:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(_cam.PROTOCOLS)} "
                         f"(or a post-processing mode: {', '.join(_cam.POSTPROCESSING)})")
    return {"own": own, "gradcam": _cam.GRADCAM_POSTPROCESSING}


def _compare(before: torch.Tensor, after: torch.Tensor, size: tuple[int, int], mode: str) -> dict[str, list]:
    """Per-image spearman_abs, spearman (raw maps) and ssim (maps post-processed by `mode`); None where undefined."""
    r0, r1 = _resize(before, size), _resize(after, size)
    p0, p1 = (_cam.postprocess(r, size, mode) for r in (r0, r1))
    s = ssim(p0, p1).tolist()
    rows = {"spearman_abs": [spearman(a.abs(), b.abs()) for a, b in zip(r0, r1)],
            "spearman": [spearman(a, b) for a, b in zip(r0, r1)], "ssim": s}
    return {k: [None if not math.isfinite(v) else v for v in vals] for k, vals in rows.items()}


def _check(x01: torch.Tensor, targets: torch.Tensor, protocol: str, cam_method: str) -> None:
    postprocessing_modes(protocol)
    if cam_method not in _cam.METHODS:
        raise ValueError(f"unknown CAM method {cam_method!r}; choose one of {', '.join(_cam.METHODS)}")
    if x01.ndim != 4 or x01.shape[1] != 3 or len(x01) == 0:
        raise ValueError(f"expected a non-empty (B, 3, H, W) batch of images, got shape {tuple(x01.shape)}")
    if x01.min() < 0 or x01.max() > 1:
        raise ValueError(f"x01 must be images in [0, 1] (got {x01.min():.3g}..{x01.max():.3g}); the check "
                         "normalises them with cfg.mean/std itself")
    if targets.shape != (len(x01),):
        raise ValueError(f"need one target class per image: {len(x01)} images, targets of shape "
                         f"{tuple(targets.shape)}")


def cascading_randomisation(model: nn.Module, cfg: ModelConfig, x01: torch.Tensor, targets: torch.Tensor, *,
                            protocol: str, cam_method: str = "gradcam", seed: int = 0, batch_size: int = 32) -> dict:
    """Adebayo et al.'s cascading randomisation test for the own CAM (TopGapNet) and a post-hoc CAM.

    Args:
        model: a TopGapNet or a timm classifier (:func:`topgap.model.create_baseline`); never modified.
        cfg: its ModelConfig; only ``cfg.mean``/``cfg.std`` are read (the images' normalisation).
        x01: (B, 3, H, W) images in [0, 1].
        targets: (B,) class explained per image, the same at every step (e.g. the true labels).
        protocol: the CAM protocol of the SSIM maps, see :func:`postprocessing_modes` ("paper", "relu", or the own
            CAM's post-processing mode itself).
        cam_method: the post-hoc method (:data:`topgap.cam.METHODS`), reported under "gradcam".
        seed: seeds the re-initialisation (step s uses an independent seed from (seed, s)).
        batch_size: images per CAM call.

    Returns a JSON-serialisable dict: "stages" (names in randomisation order, "head" first), "own" (None for a
    timm classifier) and "gradcam", each {stage: {"spearman_abs", "spearman", "ssim"}} of means over the images
    with a defined value (None if none), "per_image" (the same as lists, None where a map is constant),
    "flagged" {"own", "gradcam"} (mean spearman_abs at the head stage >= threshold; None if undefined),
    "threshold", "reinitialised" (parameters re-drawn per stage), "kept" (1-D parameters of modules without
    an initialiser, left as trained), "n", "size", "protocol", "postprocessing" (mode per map), "cam_method",
    "seed". The post-hoc CAM's backward pass stops at its layer (:func:`topgap.cam.baseline_cam`).
    """
    return randomisation_by_protocol(model, cfg, x01, targets, protocols=(protocol,), cam_method=cam_method,
                                     seed=seed, batch_size=batch_size)[protocol]


def randomisation_by_protocol(model: nn.Module, cfg: ModelConfig, x01: torch.Tensor, targets: torch.Tensor, *,
                              protocols, cam_method: str = "gradcam", seed: int = 0,
                              batch_size: int = 32) -> dict[str, dict]:
    """{protocol: :func:`cascading_randomisation`'s result} from one cascade: the maps of the randomised models are
    computed once, since only the SSIM's post-processing differs between protocols."""
    targets = torch.as_tensor(targets, dtype=torch.long)
    for protocol in protocols:
        _check(x01, targets, protocol, cam_method)
    work = copy.deepcopy(model)
    param = next(work.parameters())
    xn = Normalize(cfg.mean, cfg.std).to(param.device)(x01.to(param.device, param.dtype))
    targets = targets.to(param.device)
    original = _raw_maps(work, xn, targets, cam_method, batch_size)
    stages = randomisation_stages(work)
    steps, reinit, kept = [], {}, []
    for step, (name, modules) in enumerate(stages):
        kept += randomise_(modules, _stage_seed(seed, step))
        reinit[name] = sum(p.numel() for m in modules for p in m.parameters(recurse=False))
        steps.append((name, _raw_maps(work, xn, targets, cam_method, batch_size)))
    common = {"stages": [n for n, _ in stages], "reinitialised": reinit, "kept": kept, "n": len(x01),
              "size": list(x01.shape[-2:]), "cam_method": cam_method, "seed": seed}
    return {p: _summary(original, steps, postprocessing_modes(p), common) | {"protocol": p} for p in protocols}


def _summary(original: dict, steps: list, modes: dict, common: dict) -> dict:
    """One protocol's result: per-image and mean comparisons of every step's maps with the original, and flags."""
    size = tuple(common["size"])
    per_image = {k: {name: _compare(original[k], maps[k], size, modes[k]) for name, maps in steps} for k in original}
    means = {k: {s: {m: finite_mean(v[m]) for m in METRICS} for s, v in per_image[k].items()} for k in per_image}
    flag = {k: None if means[k][FLAG_STAGE][FLAG_METRIC] is None else means[k][FLAG_STAGE][FLAG_METRIC] >= THRESHOLD
            for k in means}
    return {**common, "own": means.get("own"), "gradcam": means["gradcam"],
            "flagged": {"own": flag.get("own"), "gradcam": flag["gradcam"]},
            "threshold": {"metric": FLAG_METRIC, "stage": FLAG_STAGE, "value": THRESHOLD,
                          "rule": f"flagged when the mean {FLAG_METRIC} over images after randomising the "
                                  f"{FLAG_STAGE} is >= {THRESHOLD}"},
            "per_image": per_image, "postprocessing": {k: modes[k] for k in original}}
