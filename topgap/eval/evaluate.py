"""`topgap evaluate`: a model family (Top-GAP models by k + the baseline) on one dataset. Computes; writes nothing.

Measures what the paper reports, on equal terms for both sides:

- accuracy, clean (Table 3) and on each distribution-shifted split (Table 5);
- l1 sparsity of the CAM (4.1, Table 2), at the family's class-map resolution (the paper measures the
  raw class map, e.g. 56x56 for 224 px with 4 maps; the baseline's GradCAM map is resized to it);
- localisation against the masks at the mask resolution (the input size): the paper's best-threshold
  IOU (4.4, Table 7), mass-in-mask (energy pointing game), PxAP and MaxBoxAccV2 (Choe et al., 2020);
- faithfulness: ROAD (:mod:`topgap.eval.faithfulness`) on the first `faithfulness_images` images;
- robustness (4.2): FGSM, PGD (Foolbox's step rule by default), AutoAttack, Square, transfer from an
  independently trained surrogate, and accuracy against eps up to where it reaches 0.

Every map passes :func:`topgap.cam.postprocess` with the same `postprocessing` switch: the Top-GAP
models' own CAM, GradCAM on them (``*_gradcam`` keys) and GradCAM on the baseline. Maps are taken for
the predicted class. "Correct under attack" (pred(x') = y) is the headline robustness; the paper's
"prediction unchanged" (pred(x') = pred(x)) is kept beside it as ``robust_paper``.

Each Top-GAP model is compared with the baseline (and with an FPN-only control, a Top-GAP model with
k=None, when the family has one) on the same images: paired bootstrap 95% intervals on every difference
and a verdict that says "better" only when the interval excludes 0 (:mod:`topgap.eval.stats`). Models
whose training did not converge are marked and get no verdict.

Results (JSON-serialisable, NaN-free)::

    {"dataset", "split", "n_images", "eps", "pgd_steps", "pgd_rule", "attacks", "attack_images",
     "square_queries", "eps_curve", "cam_method", "postprocessing", "l1_resolution": [h, w],
     "localisation_resolution": [H, W], "faithfulness": {"metric", "imputer", "percentiles", "images"},
     "surrogate": str | None, "bootstrap": {"samples", "level", "seed"},
     "shifts": {name: {"dataset", "split", "n_images"}},
     "models": {name: {
        "kind", "backbone", "k", "cam_size", "k_fraction", "converged": bool | None, "convergence": str | None,
        "clean": {"n", "correct", "accuracy"},
        "l1", "iou", "mass_in_mask", "pxap", "maxboxacc_v2", "road",   # own CAM (Top-GAP) or GradCAM (baseline)
        "l1_gradcam", "iou_gradcam", ..., "road_gradcam",              # GradCAM on this model
        "n_masks", "n_road",
        "attacks": {"fgsm" | "pgd<steps>" | "autoattack" | "square" | "transfer":
                    {"n", "clean_correct", "robust_paper", "robust_correct",
                     "clean_accuracy", "robust_paper_rate", "robust_correct_rate"}},
        "eps_curve": [{"eps", "n", "robust_correct", "accuracy"}], "eps_curve_reaches_zero": bool | None,
        "white_box_rate", "black_box_rate", "gradient_masking_suspected",
        "shifts": {name: {"n", "correct", "accuracy", "iou", "mass_in_mask"}},
        "bg_gap": float | None,   # accuracy on shift "mixed_same" minus "mixed_rand" (topgap backgrounds), Xiao et al.
        "comparisons": {reference: {metric: {"diff", "low", "high", "n", "verdict"}}}}}}
"""
from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..cam import METHODS, POSTPROCESSING, baseline_cam, cam_size, postprocess, topgap_cam
from ..config import ModelConfig
from ..metrics import PxAP, best_iou, box_hits, l1_sparsity, mass_in_mask, maxboxacc_v2, pxap_from_histograms
from .attacks import CURVE_RULE, PGD_RULES, gradient_masking_flag, robustness, run_attack, with_rates, wrap01
from .faithfulness import IMPUTERS, ROAD_PERCENTILES, road_scores
from .stats import BOOTSTRAP_SAMPLES, higher_is_better, over_runs, paired_bootstrap, verdict

__all__ = ["ATTACKS", "EPS_CURVE", "evaluate_family", "compare", "select_models", "aggregate_folds", "flat_metrics",
           "parse_eps", "register", "run"]

ATTACKS = ("fgsm", "pgd", "autoattack", "square", "transfer")
WHITE_BOX, BLACK_BOX = ("fgsm", "pgd", "autoattack"), ("square", "transfer")
EPS_CURVE = tuple(e / 255 for e in (1, 2, 4, 8, 16, 32, 64, 128))
MAP_METRICS = ("l1", "iou", "mass_in_mask", "pxap", "maxboxacc_v2", "road")


def parse_eps(text: str | float) -> float:
    """'1/255' -> 0.00392..., '0.03' -> 0.03; must lie in [0, 1]."""
    try:
        eps = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps {text!r} is not a number or a fraction like 1/255") from None
    if not 0 <= eps <= 1:
        raise ValueError(f"eps is a Linf budget on [0, 1] images and must lie in [0, 1] (got {text})")
    return eps


def _eps_or_none(text: str) -> float | str:
    return "none" if text.strip().lower() == "none" else parse_eps(text)


def none_means_empty(values: list, flag: str) -> list:
    """A list option's values, [] for the single value 'none'; 'none' beside other values is refused."""
    if "none" not in values:
        return values
    if len(values) > 1:
        raise ValueError(f"{flag}: 'none' cannot be combined with other values (got {' '.join(map(str, values))})")
    return []


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _loader(dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


class _Maps:
    """Per-image values of one map type (own CAM or GradCAM) of one model.

    `split_level=False` (shifted splits, which report IOU and mass only) skips PxAP and MaxBoxAccV2, the
    latter 100 contour searches per image.
    """

    def __init__(self, split_level: bool = True):
        self.l1, self.iou, self.mass, self.road, self.boxes = [], [], [], [], []
        self.pxap, self.split_level = PxAP(), split_level

    def add(self, l1_maps: np.ndarray, loc_maps: np.ndarray, masks: np.ndarray, has_mask: np.ndarray) -> None:
        self.l1.extend(np.atleast_1d(l1_sparsity(l1_maps)).tolist())
        for i in range(len(loc_maps)):
            obj, ignore = masks[i] == 1, masks[i] == 255
            if not has_mask[i] or not obj.any():
                self.iou.append(float("nan"))
                self.mass.append(float("nan"))
                continue
            self.iou.append(best_iou(loc_maps[i], obj, ignore)[0])
            self.mass.append(mass_in_mask(loc_maps[i], obj, ignore))
            if self.split_level:
                self.pxap.update(loc_maps[i], obj, ignore)
                self.boxes.append(box_hits(loc_maps[i], obj))

    def summary(self, suffix: str = "") -> dict:
        return {f"l1{suffix}": _mean(self.l1), f"iou{suffix}": _mean(self.iou),
                f"mass_in_mask{suffix}": _mean(self.mass), f"pxap{suffix}": self.pxap.summary(),
                f"maxboxacc_v2{suffix}": maxboxacc_v2(self.boxes), f"road{suffix}": _mean(self.road)}


class _Tally:
    """One model's per-image results: what the summaries and the paired intervals are computed from."""

    def __init__(self, topgap: bool):
        self.correct: list[bool] = []
        self.own, self.gradcam = _Maps(), (_Maps() if topgap else None)
        self.attacks: dict[str, dict[str, list]] = {}  # key -> {"correct": [...], "unchanged": [...], "clean": [...]}
        self.curve: dict[float, list[bool]] = {}
        self.shifts: dict[str, dict[str, list]] = {}

    def add_attack(self, key: str, clean: torch.Tensor, attacked: torch.Tensor, y: torch.Tensor) -> None:
        a = self.attacks.setdefault(key, {"correct": [], "unchanged": [], "clean": []})
        a["correct"] += (attacked == y).tolist()
        a["unchanged"] += (attacked == clean).tolist()
        a["clean"] += (clean == y).tolist()


def _attack_counts(a: dict) -> dict:
    return with_rates({"n": len(a["correct"]), "clean_correct": int(sum(a["clean"])),
                       "robust_paper": int(sum(a["unchanged"])), "robust_correct": int(sum(a["correct"]))})


def _predict(net01: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net01(x).argmax(1)


def evaluate_family(models: dict[str, tuple[nn.Module, ModelConfig]], dataset, *, shifts: dict | None = None,
                    surrogate: tuple[nn.Module, ModelConfig] | None = None, attacks=ATTACKS, eps: float = 1 / 255,
                    pgd_steps=(40,), pgd_rule: str = "foolbox", square_queries: int = 1000,
                    attack_images: int | None = 100, eps_curve=EPS_CURVE, curve_steps: int = 10,
                    faithfulness_images: int = 50, imputer: str = "blur", postprocessing: str = "relu-minmax",
                    cam_method: str = "gradcam", batch_size: int = 32, max_images: int | None = None,
                    device: str = "cpu", progress: bool = True, name: str | None = None, split: str | None = None,
                    convergence: dict[str, tuple[bool, str]] | None = None, bootstrap_samples: int = BOOTSTRAP_SAMPLES,
                    seed: int = 0) -> dict:
    """Evaluate every model of a family on `dataset` (items: image in [0, 1], label, mask, has_mask).

    Args:
        models: {name: (model, config)} as :func:`topgap.checkpoint.load_family` returns.
        dataset: the test set. shifts: {name: dataset} of distribution-shifted sets (Table 5).
        surrogate: (model, config) of an independently trained model (e.g. a second-seed baseline) that
            crafts the transfer attack; required for "transfer".
        attacks: any of :data:`ATTACKS`, run (with the eps curve) on the first `attack_images` (default 100;
            None = all): on a CPU, PGD-40 on a 224 px test split costs more than the rest of the evaluation.
        eps: Linf budget on [0, 1] images (paper: 1/255, CIFAR-10 8/255).
        pgd_steps: one PGD run per value (paper: 40; Table 4: 20 and 50); pgd_rule: a key of PGD_RULES.
        square_queries: Square's query budget (>= 1000 for a meaningful masking check).
        eps_curve: budgets of the accuracy-vs-eps curve (PGD, `curve_steps` steps of 2.5 eps / steps); () to skip.
        faithfulness_images: ROAD on the first this many images (0 to skip); imputer: "blur" or "linear".
        postprocessing: :data:`topgap.cam.POSTPROCESSING` switch, applied to every map alike.
        cam_method: the post-hoc CAM (:data:`topgap.cam.METHODS`) for the baseline and "*_gradcam".
        max_images: evaluate only the first this many images.
        convergence: {name: (converged, reason)}; non-converged models get no verdict.
        bootstrap_samples, seed: the paired bootstrap of the comparisons (0: no comparisons, as for the
            validation pass that only chooses k).

    Returns the results dict described in the module docstring.
    """
    attacks = tuple(attacks)
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; choose from {', '.join(ATTACKS)}")
    for value, allowed, what in ((cam_method, METHODS, "CAM method"), (postprocessing, POSTPROCESSING,
                                 "post-processing"), (pgd_rule, PGD_RULES, "PGD step rule"), (imputer, IMPUTERS,
                                 "ROAD imputer")):
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    if not models:
        raise ValueError("no models to evaluate: the family is empty")
    if "pgd" in attacks and (not pgd_steps or min(pgd_steps) < 1):
        raise ValueError(f"pgd_steps must be one or more positive step counts (got {pgd_steps})")
    if "transfer" in attacks and surrogate is None:
        raise ValueError("the transfer attack needs an independently trained surrogate (e.g. --surrogate pointing "
                         "at a baseline trained with another seed); drop 'transfer' from attacks otherwise")
    eps = parse_eps(eps)
    name = name or getattr(dataset, "name", None) or type(dataset).__name__
    split = split or getattr(dataset, "split", None)
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    n_images = len(dataset)
    n_attack = n_images if attack_images is None else min(attack_images, n_images)
    nets = {n: wrap01(m, c.mean, c.std).to(device).eval() for n, (m, c) in models.items()}
    input_size = next(iter(models.values()))[1].input_size
    sizes = {n: cam_size(m, c.input_size) for n, (m, c) in models.items()}
    topgaps = [n for n, (_, c) in models.items() if c.kind == "topgap"]
    l1_size = sizes[topgaps[0]] if topgaps else sizes[next(iter(models))]
    tallies = {n: _Tally(c.kind == "topgap") for n, (_, c) in models.items()}
    sur01 = wrap01(surrogate[0], surrogate[1].mean, surrogate[1].std).to(device).eval() if surrogate else None
    opts = dict(eps=eps, pgd_steps=pgd_steps, pgd_rule=pgd_rule, square_queries=square_queries, eps_curve=eps_curve,
                curve_steps=curve_steps, imputer=imputer, postprocessing=postprocessing, cam_method=cam_method,
                l1_size=l1_size, seed=seed)

    seen = 0
    for batch in tqdm(_loader(dataset, batch_size), desc="evaluate", disable=not progress, unit="batch"):
        x, y = batch["image"].to(device), batch["label"].to(device)
        masks, has_mask = batch["mask"].numpy(), batch["has_mask"].numpy().astype(bool)
        sub = max(0, min(len(y), n_attack - seen))  # images of this batch in the attack subset
        road_n = max(0, min(len(y), faithfulness_images - seen))
        seen += len(y)
        transfer_adv = None
        if "transfer" in attacks and sub:
            transfer_adv = run_attack(sur01, x[:sub], y[:sub], "pgd", eps, steps=max(pgd_steps), rule=pgd_rule,
                                      seed=seed)
        for n, (model, cfg) in models.items():
            _evaluate_batch(tallies[n], nets[n], model, cfg, x, y, masks, has_mask, sub, road_n, transfer_adv,
                            attacks=attacks, **opts)

    for shift, data in (shifts or {}).items():
        for n, (model, cfg) in models.items():
            tallies[n].shifts[shift] = _shifted(nets[n], model, cfg, data, batch_size, device, progress, opts)

    results = {
        "dataset": name, "split": split, "n_images": n_images, "eps": eps,
        "pgd_steps": [int(s) for s in pgd_steps], "pgd_rule": pgd_rule, "attacks": list(attacks),
        "attack_images": n_attack, "square_queries": square_queries, "eps_curve": [float(e) for e in eps_curve],
        "eps_curve_pgd": {"steps": curve_steps, "rule": CURVE_RULE},
        "cam_method": cam_method, "postprocessing": postprocessing, "l1_resolution": list(l1_size),
        "localisation_resolution": list(input_size),
        "faithfulness": {"metric": "ROAD combined (LeRF - MoRF) / 2, softmax of the predicted class",
                         "imputer": imputer, "percentiles": list(ROAD_PERCENTILES),
                         "images": min(faithfulness_images, n_images)},
        "surrogate": None if surrogate is None else surrogate[1].backbone + f" ({surrogate[1].kind}, "
                                                                            f"seed {surrogate[1].recipe.get('seed')})",
        "bootstrap": {"samples": bootstrap_samples, "level": 0.95, "seed": seed},
        "shifts": {s: {"dataset": getattr(d, "name", type(d).__name__), "split": getattr(d, "split", s),
                       "n_images": len(d)} for s, d in (shifts or {}).items()},
        "models": {},
    }
    convergence = convergence or {}
    for n, (_, cfg) in models.items():
        results["models"][n] = _summarise(tallies[n], cfg, sizes[n], attacks, convergence.get(n))
    for n, refs in (compare(models, tallies, convergence, bootstrap_samples, seed) if bootstrap_samples else {}).items():
        results["models"][n]["comparisons"] = refs
    return results


def _maps(model: nn.Module, cfg: ModelConfig, xn: torch.Tensor, *, postprocessing, cam_method, l1_size, size):
    """Predictions and post-processed maps: {"own": (l1 maps, localisation maps)[, "gradcam": ...]}."""
    if cfg.kind == "topgap":
        own_raw, pred, logits = topgap_cam(model, xn, postprocessing=None, with_logits=True)
        gc_raw, _ = baseline_cam(model, xn, targets=pred, method=cam_method, postprocessing=None)
        raws = {"own": own_raw, "gradcam": gc_raw}
    else:
        gc_raw, pred, logits = baseline_cam(model, xn, method=cam_method, postprocessing=None, with_logits=True)
        raws = {"own": gc_raw}
    out = {k: (postprocess(r, l1_size, postprocessing), postprocess(r, size, postprocessing)) for k, r in raws.items()}
    return pred, out


def _evaluate_batch(t: _Tally, net01: nn.Module, model: nn.Module, cfg: ModelConfig, x, y, masks, has_mask, sub,
                    road_n, transfer_adv, *, attacks, eps, pgd_steps, pgd_rule, square_queries, eps_curve,
                    curve_steps, imputer, postprocessing, cam_method, l1_size, seed) -> None:
    xn = net01[0](x)
    pred, maps = _maps(model, cfg, xn, postprocessing=postprocessing, cam_method=cam_method, l1_size=l1_size,
                       size=tuple(masks.shape[-2:]))
    t.correct += (pred == y).tolist()
    for key, (l1_maps, loc) in maps.items():
        tally = t.own if key == "own" else t.gradcam
        tally.add(l1_maps.cpu().numpy(), loc.cpu().numpy(), masks, has_mask)
        if road_n:
            if loc.shape[-2:] != xn.shape[-2:]:
                loc = postprocess(loc, tuple(xn.shape[-2:]), postprocessing)
            tally.road += road_scores(model, xn[:road_n], loc[:road_n], pred[:road_n], imputer=imputer).tolist()

    runs = [("fgsm", "fgsm", {})] if "fgsm" in attacks else []
    runs += [(f"pgd{s}", "pgd", {"steps": int(s), "rule": pgd_rule}) for s in pgd_steps] if "pgd" in attacks else []
    runs += [("autoattack", "autoattack", {})] if "autoattack" in attacks else []
    runs += [("square", "square", {"n_queries": square_queries})] if "square" in attacks else []
    for key, kind, kw in runs if sub else []:
        adv = run_attack(net01, x[:sub], y[:sub], kind, eps, seed=seed, **kw)
        t.add_attack(key, pred[:sub], _predict(net01, adv), y[:sub])
    if transfer_adv is not None:
        t.add_attack("transfer", pred[:sub], _predict(net01, transfer_adv), y[:sub])
    if eps_curve and sub:
        alive = pred[:sub] == y[:sub]  # correct under every budget so far: a larger ball contains the smaller
        for e in sorted(eps_curve):
            idx = alive.nonzero().flatten()
            if len(idx):
                adv = run_attack(net01, x[:sub][idx], y[:sub][idx], "pgd", e, steps=curve_steps, seed=seed,
                                 rule=CURVE_RULE)
                alive[idx] = _predict(net01, adv) == y[:sub][idx]
            t.curve.setdefault(float(e), []).extend(alive.tolist())


def _shifted(net01, model, cfg, data, batch_size, device, progress, opts) -> dict:
    correct, own = [], _Maps(split_level=False)
    for batch in tqdm(_loader(data, batch_size), desc="shifted", disable=not progress, unit="batch"):
        x, y = batch["image"].to(device), batch["label"].to(device)
        masks, has_mask = batch["mask"].numpy(), batch["has_mask"].numpy().astype(bool)
        if has_mask.any():
            pred, maps = _maps(model, cfg, net01[0](x), postprocessing=opts["postprocessing"],
                               cam_method=opts["cam_method"], l1_size=opts["l1_size"], size=tuple(masks.shape[-2:]))
            own.add(maps["own"][0].cpu().numpy(), maps["own"][1].cpu().numpy(), masks, has_mask)
        else:
            pred = _predict(net01, x)
        correct += (pred == y).tolist()
    n = len(correct)
    return {"correct_list": correct, "iou_list": own.iou, "summary": {
        "n": n, "correct": int(sum(correct)), "accuracy": sum(correct) / n if n else None,
        "iou": _mean(own.iou), "mass_in_mask": _mean(own.mass)}}


def _summarise(t: _Tally, cfg: ModelConfig, size: tuple[int, int], attacks, conv) -> dict:
    cam = list(size) if cfg.kind == "topgap" else None
    k_fraction = None
    if cam is not None:
        pixels = cam[0] * cam[1]
        k_fraction = 1.0 if cfg.k is None else min(cfg.k, pixels) / pixels
    n = len(t.correct)
    out = {"kind": cfg.kind, "backbone": cfg.backbone, "k": cfg.k if cfg.kind == "topgap" else None,
           "cam_size": cam, "k_fraction": k_fraction,
           "converged": None if conv is None else bool(conv[0]), "convergence": None if conv is None else conv[1],
           "clean": {"n": n, "correct": int(sum(t.correct)), "accuracy": sum(t.correct) / n if n else None},
           **t.own.summary(), **(t.gradcam or t.own).summary("_gradcam"),
           "n_masks": len(t.own.boxes), "n_road": len(t.own.road),
           "attacks": {key: _attack_counts(a) for key, a in t.attacks.items()}}
    curve = [{"eps": e, "n": len(v), "robust_correct": int(sum(v)), "accuracy": sum(v) / len(v) if v else None}
             for e, v in sorted(t.curve.items())]
    out["eps_curve"] = curve
    out["eps_curve_reaches_zero"] = (curve[-1]["robust_correct"] == 0) if curve else None
    white = [k for k in t.attacks if k.rstrip("0123456789") in WHITE_BOX]
    black = [k for k in t.attacks if k in BLACK_BOX]
    sub = min((len(t.attacks[k]["correct"]) for k in white + black), default=0)
    worst = lambda keys: float(np.mean(np.all([t.attacks[k]["correct"][:sub] for k in keys], 0)))  # noqa: E731
    wb = worst(white) if sub and white and black else None
    bb = worst(black) if sub and black else None
    out.update(white_box_rate=wb, black_box_rate=bb,
               gradient_masking_suspected=None if wb is None or bb is None else
               gradient_masking_flag(wb, bb) or out["eps_curve_reaches_zero"] is False)
    out["shifts"] = {s: v["summary"] for s, v in t.shifts.items()}
    out["bg_gap"] = float(_bg_gap(t).mean()) if _has_bg_gap(t) and t.shifts["mixed_same"]["correct_list"] else None
    return out


# ------------------------------------------------------------------------------------------- comparisons

def _pxap_stat(rows: np.ndarray) -> float:
    half = rows.shape[1] // 2
    return pxap_from_histograms(rows[:, :half].sum(0), rows[:, half:].sum(0))


def _paired(t: _Tally, r: _Tally) -> dict[str, tuple]:
    """metric -> (this model's per-image values, the reference's, statistic or None for the mean)."""
    f = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    out = {"accuracy": (f(t.correct), f(r.correct), None)}
    for key in ("l1", "iou", "mass", "road"):
        a, b = f(getattr(t.own, key)), f(getattr(r.own, key))
        if len(a) and len(a) == len(b):
            out[{"mass": "mass_in_mask"}.get(key, key)] = (a, b, None)
    if t.own.pxap.pos and len(t.own.pxap.pos) == len(r.own.pxap.pos):
        out["pxap"] = (np.hstack(t.own.pxap.per_image()), np.hstack(r.own.pxap.per_image()), _pxap_stat)
    if t.own.boxes and len(t.own.boxes) == len(r.own.boxes):
        out["maxboxacc_v2"] = (np.array(t.own.boxes, dtype=np.float64), np.array(r.own.boxes, dtype=np.float64),
                               lambda h: maxboxacc_v2(h))
    for key, a in t.attacks.items():
        if key in r.attacks and len(a["correct"]) == len(r.attacks[key]["correct"]):
            out[f"{key}_correct"] = (f(a["correct"]), f(r.attacks[key]["correct"]), None)
    for s, v in t.shifts.items():
        if s in r.shifts:
            out[f"{s}_accuracy"] = (f(v["correct_list"]), f(r.shifts[s]["correct_list"]), None)
    if _has_bg_gap(t) and _has_bg_gap(r):
        out["bg_gap"] = (_bg_gap(t), _bg_gap(r), None)
    return out


def _has_bg_gap(t: _Tally) -> bool:
    return {"mixed_same", "mixed_rand"} <= set(t.shifts) and \
        len(t.shifts["mixed_same"]["correct_list"]) == len(t.shifts["mixed_rand"]["correct_list"])


def _bg_gap(t: _Tally) -> np.ndarray:
    """Per image: correct on Mixed-Same minus correct on Mixed-Rand (the same object, Xiao et al.'s BG-Gap)."""
    return (np.asarray(t.shifts["mixed_same"]["correct_list"], dtype=np.float64)
            - np.asarray(t.shifts["mixed_rand"]["correct_list"], dtype=np.float64))


def compare(models: dict, tallies: dict[str, _Tally], convergence: dict, samples: int, seed: int) -> dict:
    """{model: {reference: {metric: interval + verdict}}} for every Top-GAP model against the baseline(s) and the
    FPN-only control(s) (Top-GAP models with k=None); the own CAM of a Top-GAP model against GradCAM on the baseline."""
    refs = [n for n, (_, c) in models.items() if c.kind == "baseline" or (c.kind == "topgap" and c.k is None)]
    out = {}
    for n, (_, cfg) in models.items():
        if cfg.kind != "topgap":
            continue
        out[n] = {}
        for ref in (r for r in refs if r != n):
            out[n][ref] = {}
            ok = all(convergence.get(m, (True, ""))[0] for m in (n, ref))
            for metric, (a, b, stat) in _paired(tallies[n], tallies[ref]).items():
                ci = paired_bootstrap(a, b, **({"statistic": stat} if stat else {}), samples=samples, seed=seed)
                ci["verdict"] = verdict(ci, higher_is_better(metric)) if ok else "not converged: no verdict"
                out[n][ref][metric] = ci
    return out


SELECTION_RULE = ("accuracy, then IOU", "the converged Top-GAP model (k set) of highest validation accuracy; "
                  "ties broken by the higher validation IOU, then by the smaller k")


def select_models(results: dict) -> dict:
    """The one Top-GAP model chosen on these (validation) results by :data:`SELECTION_RULE`."""
    key, rule = SELECTION_RULE
    pool = [((m["clean"]["accuracy"], m.get("iou") if m.get("iou") is not None else -math.inf, -m["k"]), n)
            for n, m in results["models"].items()
            if m["kind"] == "topgap" and m["k"] is not None and m.get("converged") is not False
            and not (m.get("collapsed") or {}).get("flag")]
    by = {}
    if pool:
        (accuracy, iou, _), name = max(pool)
        by[key] = {"model": name, "value": accuracy, "iou": iou if math.isfinite(iou) else None}
    return {"split": results["split"], "dataset": results["dataset"], "rule": rule, "by": by}


NO_SELECTION = "no k chosen on validation data: descriptive only, no verdict"
TEST_LIKE = ("test",)  # a split whose name holds one of these is never used to choose


def check_selection_split(select: str | None, evaluated: str) -> str | None:
    """The validation split that chooses k (None: --select-split none), refusing the evaluated or a test split."""
    if select is None or select.strip().lower() == "none":
        return None
    spelled = select.strip().strip("/\\").removeprefix("./").lower()
    if spelled == evaluated.strip().strip("/\\").removeprefix("./").lower():
        raise ValueError(f"--select-split {select} is the split being reported: choose k on a validation split")
    if any(word in spelled for word in TEST_LIKE):
        raise ValueError(f"--select-split {select} is a test split: choose k on a validation split (e.g. val) or "
                         "on folds of the training data (topgap train --folds)")
    return select


def check_no_shared_images(evaluated, select) -> None:
    """Refuse a selection split that shares images with the split being reported (by image id)."""
    from .subsets import base_dataset, dataset_ids

    if not all(hasattr(base_dataset(d), "ids") for d in (evaluated, select)):
        return  # in-memory data without ids: positions say nothing
    shared = sorted(set(dataset_ids(evaluated)) & set(dataset_ids(select)))
    if shared:
        raise ValueError(f"the selection split and the reported split share {len(shared)} images (e.g. {shared[0]}); "
                         "choose k on images that are not reported")


def withhold_verdicts(results: dict, why: str = NO_SELECTION) -> None:
    """Replace every comparison's verdict by `why` (the intervals stay, as description)."""
    for m in results["models"].values():
        for per_ref in (m.get("comparisons") or {}).values():
            for c in per_ref.values():
                c["verdict"] = why


def aggregate_folds(results_list: list[dict]) -> dict:
    """Mean ± std over folds of every scalar metric of each model (:func:`flat_metrics`).

    Returns {"n_folds": int, "models": {name: {metric: {"mean", "std", "n", "values"}}}} for the models in
    every fold; std is the population std over folds (0 for one fold). Metrics missing in some fold are left out.
    """
    if not results_list:
        raise ValueError("aggregate_folds needs at least one fold's results")
    names = [n for n in results_list[0]["models"] if all(n in r["models"] for r in results_list)]
    return {"n_folds": len(results_list),
            "models": {n: over_runs([flat_metrics(r["models"][n]) for r in results_list]) for n in names}}


def flat_metrics(m: dict) -> dict[str, float | None]:
    """One model's scalar metrics from its results entry: accuracy, map metrics (own and "_gradcam"), attack
    rates ("<attack>_correct", "<attack>_unchanged"), "<shift>_accuracy" and bg_gap; None where not measured."""
    flat = {"accuracy": m["clean"]["accuracy"]}
    for key in MAP_METRICS:
        flat[key], flat[f"{key}_gradcam"] = m.get(key), m.get(f"{key}_gradcam")
    for key, a in m.get("attacks", {}).items():
        flat[f"{key}_correct"], flat[f"{key}_unchanged"] = a["robust_correct_rate"], a["robust_paper_rate"]
    for s, v in (m.get("shifts") or {}).items():
        flat[f"{s}_accuracy"] = v["accuracy"]
    flat["bg_gap"] = m.get("bg_gap")
    return flat


# ----------------------------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    """Add the `evaluate` subcommand."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    doc = ("Evaluate a model family: accuracy, l1, IOU/mass/PxAP/MaxBoxAccV2, ROAD, FGSM/PGD/AutoAttack/Square/"
           "transfer, accuracy against eps and under shift, with paired bootstrap intervals; write a report.")
    p = subparsers.add_parser("evaluate", help=doc, description=doc, formatter_class=fmt)
    p.add_argument("family", help="a family folder: one model folder per k plus baseline/ (or fold*/ from --folds)")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--split", default="test")
    p.add_argument("--shift-splits", nargs="+", default=[], help="distribution-shifted splits (Table 5), e.g. "
                                                                 "test_shifted only_bg (or comma-separated)")
    p.add_argument("--select-split", default="val",
                   help="validation split on which k is chosen by " + SELECTION_RULE[0] + "; never the reported or a "
                        "test split; 'none': no k is chosen and no verdict is printed")
    p.add_argument("--fmt", default="auto", help="dataset format (see topgap.data.open_dataset)")
    p.add_argument("--labels", default="breed", choices=["breed", "species"], help="Oxford-IIIT Pet labels")
    p.add_argument("--eps", type=parse_eps, default="1/255", help="Linf budget on [0, 1] images, e.g. 1/255, 8/255")
    p.add_argument("--pgd-steps", type=int, nargs="+", default=[40])
    p.add_argument("--pgd-rule", default="foolbox", choices=list(PGD_RULES))
    p.add_argument("--attacks", nargs="+", choices=[*ATTACKS, "none"], default=["fgsm", "pgd", "autoattack", "square"],
                   help="attacks to run, or none")
    p.add_argument("--surrogate", default=None, help="model folder of an independently trained model (another seed) "
                                                     "for the transfer attack; adds 'transfer'")
    p.add_argument("--square-queries", type=int, default=1000)
    p.add_argument("--attack-images", type=int, default=100, help="every attack and the eps curve on the first N images")
    p.add_argument("--eps-curve", type=_eps_or_none, nargs="+", default=list(EPS_CURVE),
                   help="budgets of the accuracy-vs-eps curve, or none")
    p.add_argument("--faithfulness-images", type=int, default=50, help="ROAD on the first N images (0: skip)")
    p.add_argument("--imputer", default="blur", choices=list(IMPUTERS), help="ROAD imputation")
    p.add_argument("--postprocessing", default="relu-minmax", choices=list(POSTPROCESSING))
    p.add_argument("--cam-method", default="gradcam", choices=list(METHODS))
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP_SAMPLES, help="bootstrap resamples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--out", default=None, help="report folder (default FAMILY/eval-SPLIT)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def _convergence(folder: Path) -> tuple[bool, str] | None:
    """(converged, reason) from the model folder's training record (:func:`topgap.train.convergence`)."""
    from ..train import LOG, training_record

    if not (folder / LOG).is_file():
        return None
    record = training_record(folder)
    return bool(record["converged"]), record["reason"]


def _evaluate_folder(family: Path, dataset, args, *, surrogate, shifts, split: str) -> dict:
    from ..checkpoint import load_family

    models = load_family(family, device=args.device)
    for n, (_, c) in models.items():
        if list(c.class_names) != list(dataset.class_names):
            raise ValueError(f"model {n} was trained on classes {c.class_names} but {args.data} ({split}) has "
                             f"{dataset.class_names}; labels would not line up")
    conv = {n: v for n in models if (v := _convergence(family / n)) is not None}
    attacks = tuple(args.attacks) + (("transfer",) if surrogate else ())
    return evaluate_family(models, dataset, shifts=shifts, surrogate=surrogate, attacks=attacks, eps=args.eps,
                           pgd_steps=tuple(args.pgd_steps), pgd_rule=args.pgd_rule, square_queries=args.square_queries,
                           attack_images=args.attack_images, eps_curve=tuple(args.eps_curve),
                           faithfulness_images=args.faithfulness_images, imputer=args.imputer,
                           postprocessing=args.postprocessing, cam_method=args.cam_method,
                           batch_size=args.batch_size, max_images=args.max_images, device=args.device,
                           name=Path(args.data).name, split=split, convergence=conv, bootstrap_samples=args.bootstrap)


def run(args: argparse.Namespace) -> dict:
    """Load the family, open the dataset, evaluate, write the report; return a short summary."""
    from ..checkpoint import family_members, load_model
    from ..data import open_dataset
    from .report import write_report

    family = Path(args.family)
    args.attacks, args.eps_curve = none_means_empty(args.attacks, "--attacks"), none_means_empty(args.eps_curve,
                                                                                                  "--eps-curve")
    select = check_selection_split(args.select_split, args.split)
    folds = sorted(p for p in family.glob("fold*") if p.is_dir())
    members = family_members(folds[0] if folds else family)
    cfg = json.loads((members[0] / "config.json").read_text())
    common = dict(input_size=tuple(cfg["input_size"]), fmt=args.fmt, labels=args.labels)
    surrogate = load_model(args.surrogate, device=args.device) if args.surrogate else None
    title = f"Top-GAP evaluation: {family.name} on {Path(args.data).name}"
    out = Path(args.out) if args.out else family / f"eval-{args.split}"
    if folds:
        return _run_folds(family, folds, args, common, surrogate, out, title)
    dataset = open_dataset(args.data, args.split, **common)
    names = [s for text in args.shift_splits for s in text.split(",") if s]
    shifts = {s: open_dataset(args.data, s, **common) for s in names}
    val_set = _selection_set(args, select, common, dataset)
    results = _evaluate_folder(family, dataset, args, surrogate=surrogate, shifts=shifts, split=args.split)
    if val_set is None:
        results["selection"] = None
        withhold_verdicts(results)
    else:
        val_args = argparse.Namespace(**{**vars(args), "attacks": [], "eps_curve": [], "faithfulness_images": 0,
                                         "bootstrap": 0})
        val = _evaluate_folder(family, val_set, val_args, surrogate=None, shifts={}, split=select)
        results["selection"] = select_models(val)
    paths = write_report(results, out, title=title)
    return {"out": str(out), "files": [str(p) for p in paths], "n_images": results["n_images"],
            "models": {n: {"accuracy": m["clean"]["accuracy"], "l1": m["l1"], "iou": m["iou"],
                           "converged": m["converged"], "gradient_masking_suspected": m["gradient_masking_suspected"]}
                       for n, m in results["models"].items()}}


def _selection_set(args, select: str | None, common: dict, evaluated):
    """The opened validation split that chooses k, checked before the long evaluation starts (None: no selection)."""
    from ..data import list_splits, open_dataset

    if select is None:
        return None
    available = list_splits(args.data, fmt=args.fmt)
    if select not in available:
        raise ValueError(f"--select-split {select}: {args.data} has no such split (it has {', '.join(available)}); "
                         "name its validation split, or give --select-split none to report every k without verdicts")
    val_set = open_dataset(args.data, select, **common)
    check_no_shared_images(evaluated, val_set)
    return val_set


def _run_folds(family: Path, folds: list[Path], args, common, surrogate, out: Path, title: str) -> dict:
    """Cross-validation: each fold's models on that fold's held-out images (cv.json), then mean ± std."""
    from ..data import open_dataset
    from .report import write_cv_report

    cv = json.loads((family / "cv.json").read_text()) if (family / "cv.json").is_file() else {}
    held_out = cv.get("held_out")
    if not held_out or len(held_out) != len(folds):
        raise ValueError(f"{family}/cv.json does not list the held-out images of its {len(folds)} folds; "
                         "retrain with this version of topgap train --folds")
    data = open_dataset(args.data, cv.get("train_split", "train"), **common)
    per_fold = []
    for f, idx in zip(folds, held_out):
        part = Subset(data, idx)
        part.class_names = data.class_names
        per_fold.append(_evaluate_folder(f, part, args, surrogate=surrogate, shifts={}, split=f"{f.name} held out"))
    agg = aggregate_folds(per_fold)
    paths = write_cv_report(agg, per_fold, out, title=title + f" ({len(folds)}-fold cross-validation)")
    return {"out": str(out), "files": [str(p) for p in paths], "folds": len(folds),
            "models": {n: {k: v["mean"] for k, v in m.items() if k in ("accuracy", "iou", "l1")}
                       for n, m in agg["models"].items()}}
