"""`topgap evaluate`: a model family (Top-GAP models by k + the baseline) on one dataset. Computes; writes nothing.

Measures what the paper reports, on equal terms for both sides:

- accuracy, clean (Table 3) and on each distribution-shifted split (Table 5);
- l1 sparsity of the CAM (4.1, Table 2), at the family's class-map resolution (the paper measures the
  raw class map, e.g. 56x56 for 224 px with 4 maps; the baseline's GradCAM map is resized to it);
- localisation against the masks at the mask resolution (the input size): the paper's best-threshold
  IOU (4.4, Table 7), mass-in-mask (energy pointing game), PxAP and MaxBoxAccV2 (Choe et al., 2020);
- faithfulness: ROAD (:mod:`topgap.eval.faithfulness`);
- robustness (4.2): FGSM and PGD by default; AutoAttack, Square and transfer from an independently trained
  surrogate on request; robust accuracy against eps (:func:`topgap.eval.attacks.eps_curve`, its one definition);
- sanity: cascading randomisation of the maps (Adebayo et al., :mod:`topgap.eval.sanity`).

Maps. Both CAM protocols of :data:`topgap.cam.PROTOCOLS`, side by side, never one picked: "paper" (the own CAM is
min-max of the raw class map, section 3.1) and "relu" (ReLU, then min-max); GradCAM (on the baseline, and on the
Top-GAP models under ``*_gradcam``) is pytorch-grad-cam's standard output under both. Every map metric M is stored as
``M_paper`` and ``M_relu`` (the baseline's two are its one GradCAM value) and compared under both. ROAD ranks pixels,
which both protocols order alike except that ReLU ties every pixel with X_c <= 0 at 0 (and pytorch-grad-cam's ROAD
removes a tie whole): it is computed once, on the paper map (the raw map's order), as ``road``. Maps are scored for
the ground-truth class by default ("GT-known", Choe et al.), for the predicted class with ``cam_target="predicted"``.

Samples. Every subset is a seeded class-stratified sample (:func:`topgap.eval.subsets.stratified_indices`), drawn
once per report from the split's labels, nested (sanity and ROAD within the attacks within ``max_images``), the same
for every model and for every seed's report of the split; ``samples`` records each one's ids and class counts.

A model whose predictions collapse (one class for more than 90% of the images, or clean accuracy at most 5 points
above chance 1/C) is flagged (``collapsed``) and, like one whose training did not converge, gets no verdict.
"Correct under attack" (pred(x') = y) is the headline robustness; the paper's "prediction unchanged"
(pred(x') = pred(x), ``robust_paper``) is only ever shown beside it and the clean accuracy: a model that always
predicts one class is "unchanged" under any attack.

Each Top-GAP model is compared with the baseline (and with an FPN-only control, a Top-GAP model with
k=None, when the family has one) on the same images: paired bootstrap 95% intervals on every difference
and a verdict that says "better" only when the interval excludes 0 (:mod:`topgap.eval.stats`).

Results (JSON-serialisable, NaN-free)::

    {"dataset", "split", "n_images", "eps", "pgd_steps", "pgd_rule", "attacks", "attack_images",
     "square_queries", "eps_curve", "eps_curve_pgd": {"steps", "rule"}, "cam_method", "cam_target": "label" |
     "predicted", "protocols": {"paper" | "relu": description}, "l1_resolution": [h, w],
     "localisation_resolution": [H, W], "faithfulness": {"metric", "map", "imputer", "percentiles", "images"},
     "samples": {"images" | "attacks" | "road" | "sanity": topgap.eval.subsets.sample_record},
     "surrogate": str | None, "bootstrap": {"samples", "level", "seed"},
     "shifts": {name: {"dataset", "split", "n_images"}},
     "models": {name: {
        "kind", "backbone", "k", "cam_size", "k_fraction", "converged": bool | None, "convergence": str | None,
        "clean": {"n", "correct", "accuracy"}, "collapsed": {"flag", "reason", "majority_share", "majority_class"},
        "l1_paper", "l1_relu", "iou_paper", "iou_relu", "mass_in_mask_paper", ..., "maxboxacc_v2_relu",
                                            # own CAM (Top-GAP) or GradCAM (baseline), per protocol
        "l1_gradcam", "iou_gradcam", "mass_in_mask_gradcam", "pxap_gradcam", "maxboxacc_v2_gradcam",  # GradCAM
        "road", "road_gradcam", "n_masks", "n_road",
        "attacks": {"fgsm" | "pgd<steps>" | "autoattack" | "square" | "transfer":
                    {"n", "clean_correct", "robust_paper", "robust_correct",
                     "clean_accuracy", "robust_paper_rate", "robust_correct_rate"}},
        "eps_curve": [{"eps", "n", "robust_correct", "accuracy"}], "eps_curve_reaches_zero": bool | None,
        "white_box_rate", "black_box_rate", "gradient_masking_suspected",
        "sanity": {"paper" | "relu": topgap.eval.sanity.cascading_randomisation} (when run),
        "shifts": {name: {"n", "correct", "accuracy", "iou_paper", "iou_relu", "mass_in_mask_paper",
                          "mass_in_mask_relu"}},
        "bg_gap": float | None,   # accuracy on shift "mixed_same" minus "mixed_rand" (topgap backgrounds), Xiao et al.
        "comparisons": {reference: {metric: {"diff", "low", "high", "n", "verdict"}}}}}}

Reports written before the protocols (one ``postprocessing`` switch, maps for the predicted class) hold unsuffixed
map keys ("l1", "iou", ...); the readers (:func:`flat_metrics`, the report, seeds and card) take both.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ..cam import GRADCAM_POSTPROCESSING, METHODS, PROTOCOLS, baseline_cam, cam_size, postprocess, topgap_cam
from ..config import ModelConfig
from ..metrics import PxAP, best_iou, box_hits, l1_sparsity, mass_in_mask, maxboxacc_v2, pxap_from_histograms
from .attacks import CURVE_RULE, CURVE_STEPS, PGD_RULES
from .attacks import eps_curve as _eps_curve
from .attacks import gradient_masking_flag, outcomes, predict, run_attack, transfer_examples, with_rates, wrap01
from .faithfulness import IMPUTERS, ROAD_PERCENTILES, road_scores
from .stats import (BOOTSTRAP_SAMPLES, COLLAPSE_SHARE, MAP_METRICS, finite_mean, higher_is_better, is_control,
                    majority, over_runs, paired_bootstrap, verdict)
from .subsets import dataset_labels, sample_record, stratified_indices

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "EPS_CURVE", "CAM_TARGETS", "evaluate_family", "draw_samples", "collapse",
           "compare", "select_models", "aggregate_folds", "flat_metrics", "parse_eps", "evaluate_folder", "register", "run"]

ATTACKS = ("fgsm", "pgd", "autoattack", "square", "transfer")
DEFAULT_ATTACKS = ("fgsm", "pgd")  # AutoAttack and Square cost minutes per 224 px image on a CPU: on request
WHITE_BOX, BLACK_BOX = ("fgsm", "pgd", "autoattack"), ("square", "transfer")
EPS_CURVE = (1 / 255, 8 / 255, 64 / 255)  # short: each budget attacks the survivors only; 64/255 must reach 0
CAM_TARGETS = ("label", "predicted")
CHANCE_MARGIN = 0.05  # see collapse()
PROTOCOL_TEXT = {"paper": "own CAM: min-max of the raw class map (section 3.1, Fig. 2); GradCAM: pytorch-grad-cam's "
                          "standard output (ReLU, min-max)",
                 "relu": "own CAM: ReLU, then min-max; GradCAM: pytorch-grad-cam's standard output (ReLU, min-max)"}
ROAD_MAP = ("own CAM: the paper protocol's map (the raw class map's pixel order; the relu map orders pixels alike "
            "except that it ties every pixel <= 0 at 0, and ROAD removes a tie whole), computed once for both "
            "protocols; GradCAM: its standard map")


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


def _batches(dataset, indices: list[int], batch_size: int, desc: str, progress: bool, first: int = 0):
    """(indices, collated batch) for the items `indices` of `dataset`, in order, `batch_size` at a time; with
    `first`, the first batch holds that many (a quick first measurement)."""
    chunks = [indices[:first]] if first else []
    chunks += [indices[i:i + batch_size] for i in range(first, len(indices), batch_size)]
    loader = DataLoader(dataset, batch_sampler=[c for c in chunks if c], num_workers=0)
    yield from tqdm(zip(chunks, loader), total=len(chunks), desc=desc, disable=not progress, unit="batch")


def _unpack(batch: dict, device: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    return (batch["image"].to(device), batch["label"].to(device), batch["mask"].numpy(),
            batch["has_mask"].numpy().astype(bool))


def draw_samples(dataset, *, max_images: int | None = None, attack_images: int | None = None,
                 faithfulness_images: int = 0, sanity_images: int = 0, seed: int = 0) -> dict[str, list[int]]:
    """The images each part runs on: {"images", "attacks", "road", "sanity"} -> ascending indices into `dataset`.

    One seeded class-stratified draw (:func:`topgap.eval.subsets.stratified_indices`): a smaller sample lies inside
    a larger one, so sanity and ROAD images are attacked images and all lie within the `max_images` sample. It
    depends on the labels and the seed only: every model and every seed's report of the split get the same ids.
    Size 0 leaves a part out; None takes every image (of the `max_images` sample).
    """
    labels = dataset_labels(dataset)
    n = len(labels) if max_images is None else min(max_images, len(labels))
    sizes = {"attacks": n if attack_images is None else min(attack_images, n),
             "road": min(faithfulness_images, n), "sanity": min(sanity_images, n)}
    return {"images": stratified_indices(labels, n, seed),
            **{part: stratified_indices(labels, k, seed) for part, k in sizes.items() if k}}


class _Maps:
    """Per-image values of one map type (own CAM under one protocol, or GradCAM) of one model.

    `split_level=False` (shifted splits, which report IOU and mass only) skips PxAP and MaxBoxAccV2, the
    latter 100 contour searches per image.
    """

    def __init__(self, split_level: bool = True):
        self.l1, self.iou, self.mass, self.boxes = [], [], [], []
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

    def summary(self, suffix: str) -> dict:
        return {f"l1{suffix}": finite_mean(self.l1), f"iou{suffix}": finite_mean(self.iou),
                f"mass_in_mask{suffix}": finite_mean(self.mass), f"pxap{suffix}": self.pxap.summary(),
                f"maxboxacc_v2{suffix}": maxboxacc_v2(self.boxes)}


class _Tally:
    """One model's per-image results: what the summaries and the paired intervals are computed from.

    maps: {"paper", "relu", "gradcam"} -> _Maps; road: {"paper", "gradcam"} -> ROAD scores. A baseline's keys all
    share one object: its map is GradCAM's standard output under every protocol.
    """

    def __init__(self, topgap: bool):
        self.pred: list[int] = []
        self.correct: list[bool] = []
        keys = (*PROTOCOLS, "gradcam")
        self.maps = {k: _Maps() for k in keys} if topgap else dict.fromkeys(keys, _Maps())
        self.road = {k: [] for k in ("paper", "gradcam")} if topgap else dict.fromkeys(("paper", "gradcam"), [])
        self.attacks: dict[str, dict[str, list]] = {}  # key -> {"correct": [...], "unchanged": [...], "clean": [...]}
        self.curve: dict[float, list[int]] = {}  # eps -> [n, robust_correct]
        self.shifts: dict[str, dict[str, list]] = {}

    def add_attack(self, key: str, o: dict[str, torch.Tensor]) -> None:
        """Append :func:`topgap.eval.attacks.outcomes` of one batch."""
        a = self.attacks.setdefault(key, {"correct": [], "unchanged": [], "clean": []})
        for k in a:
            a[k] += o[k].tolist()

    def add_curve(self, curve: list[dict]) -> None:
        """Add one batch's :func:`topgap.eval.attacks.eps_curve` counts."""
        for c in curve:
            n_correct = self.curve.setdefault(c["eps"], [0, 0])
            n_correct[0] += c["n"]
            n_correct[1] += c["robust_correct"]


def _attack_counts(a: dict) -> dict:
    return with_rates({"n": len(a["correct"]), "clean_correct": int(sum(a["clean"])),
                       "robust_paper": int(sum(a["unchanged"])), "robust_correct": int(sum(a["correct"]))})


def collapse(pred: list[int], correct: list[bool], class_names: list[str]) -> dict:
    """Whether a model's predictions collapsed: one class for more than :data:`COLLAPSE_SHARE` (90%) of the images,
    or clean accuracy at most :data:`CHANCE_MARGIN` (5 points) above chance, acc <= 1/C + 0.05.

    Returns {"flag", "reason" (None unless flagged), "majority_share", "majority_class"}; such a model gets no
    verdict and is left out of every mean over seeds: a dead model cannot look good (e.g. "unchanged" under attack).
    """
    if not pred:
        return {"flag": False, "reason": None, "majority_share": None, "majority_class": None}
    cls, share = majority(pred)
    acc, chance = sum(correct) / len(pred), 1 / len(class_names)
    reason = None
    if share > COLLAPSE_SHARE:
        reason = f"predicts {class_names[cls]} for {share:.0%} of the images (> {COLLAPSE_SHARE:.0%})"
    elif acc <= chance + CHANCE_MARGIN:
        reason = (f"clean accuracy {acc:.3f} is at most {CHANCE_MARGIN * 100:.0f} points above chance "
                  f"(1/{len(class_names)} = {chance:.3f})")
    return {"flag": reason is not None, "reason": reason, "majority_share": share, "majority_class": class_names[cls]}


def _check_options(models: dict, attacks: tuple, pgd_steps, surrogate, choices: dict[str, tuple]) -> None:
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; choose from {', '.join(ATTACKS)}")
    for what, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    if not models:
        raise ValueError("no models to evaluate: the family is empty")
    if "pgd" in attacks and (not pgd_steps or min(pgd_steps) < 1):
        raise ValueError(f"pgd_steps must be one or more positive step counts (got {pgd_steps})")
    if "transfer" in attacks and surrogate is None:
        raise ValueError("the transfer attack needs an independently trained surrogate (e.g. --surrogate pointing "
                         "at a baseline trained with another seed); drop 'transfer' from attacks otherwise")


def evaluate_family(models: dict[str, tuple[nn.Module, ModelConfig]], dataset, *, shifts: dict | None = None,
                    surrogate: tuple[nn.Module, ModelConfig] | None = None, attacks=DEFAULT_ATTACKS,
                    eps: float = 1 / 255, pgd_steps=(10,), pgd_rule: str = "2.5eps/steps", square_queries: int = 1000,
                    attack_images: int | None = 30, eps_curve=EPS_CURVE, curve_steps: int = CURVE_STEPS,
                    faithfulness_images: int = 20, sanity_images: int = 6, imputer: str = "blur",
                    cam_method: str = "gradcam", cam_target: str = "label", batch_size: int = 32,
                    max_images: int | None = None, sample_seed: int = 0, device: str = "cpu", progress: bool = True,
                    name: str | None = None, split: str | None = None,
                    convergence: dict[str, tuple[bool, str]] | None = None, bootstrap_samples: int = BOOTSTRAP_SAMPLES,
                    seed: int = 0) -> dict:
    """Evaluate every model of a family on `dataset` (items: image in [0, 1], label, mask, has_mask).

    Args:
        models: {name: (model, config)} as :func:`topgap.checkpoint.load_family` returns.
        dataset: the test set. shifts: {name: dataset} of distribution-shifted sets (Table 5), evaluated whole.
        surrogate: (model, config) of an independently trained model (e.g. a second-seed baseline) that
            crafts the transfer attack; required for "transfer".
        attacks: any of :data:`ATTACKS` (default FGSM and PGD; AutoAttack and Square cost minutes per image on a
            CPU), run with the eps curve on a stratified sample of `attack_images` (None = all); an estimate of
            their time is printed after the first image.
        eps: Linf budget on [0, 1] images (paper: 1/255, CIFAR-10 8/255).
        pgd_steps: one PGD run per value; pgd_rule: a key of PGD_RULES (default 10 steps of 2.5 eps / 10, which
            reach the ball's boundary; the paper's Foolbox PGD-40 is ``pgd_steps=(40,), pgd_rule="foolbox"``).
        square_queries: Square's query budget (>= 1000 for a meaningful masking check).
        eps_curve: budgets of :func:`topgap.eval.attacks.eps_curve` (`curve_steps` PGD steps each); () to skip.
        faithfulness_images: ROAD on a stratified sample of this many (0 to skip); imputer: "blur" or "linear".
        sanity_images: cascading randomisation on a stratified sample of this many (0 to skip).
        cam_method: the post-hoc CAM (:data:`topgap.cam.METHODS`) for the baseline and "*_gradcam".
        cam_target: "label" (ground-truth class, default) or "predicted": the class every map is scored for.
        max_images: evaluate a stratified sample of this many; sample_seed: the seed of every sample.
        convergence: {name: (converged, reason)}; non-converged models get no verdict.
        bootstrap_samples, seed: the paired bootstrap of the comparisons (0: no comparisons, as for the
            validation pass that only chooses k); seed also seeds the attacks and the randomisation.

    Returns the results dict described in the module docstring.
    """
    attacks = tuple(attacks)
    _check_options(models, attacks, pgd_steps, surrogate, {
        "CAM method": (cam_method, METHODS), "CAM target": (cam_target, CAM_TARGETS),
        "PGD step rule": (pgd_rule, PGD_RULES), "ROAD imputer": (imputer, IMPUTERS)})
    eps = parse_eps(eps)
    samples = draw_samples(dataset, max_images=max_images, attack_images=attack_images if attacks or eps_curve else 0,
                           faithfulness_images=faithfulness_images, sanity_images=sanity_images, seed=sample_seed)
    nets = {n: wrap01(m, c.mean, c.std).to(device).eval() for n, (m, c) in models.items()}
    sizes = {n: cam_size(m, c.input_size) for n, (m, c) in models.items()}
    topgaps = [n for n, (_, c) in models.items() if c.kind == "topgap"]
    l1_size = sizes[topgaps[0]] if topgaps else sizes[next(iter(models))]
    tallies = {n: _Tally(c.kind == "topgap") for n, (_, c) in models.items()}
    opts = dict(eps=eps, attacks=attacks, pgd_steps=pgd_steps, pgd_rule=pgd_rule, square_queries=square_queries,
                eps_curve=tuple(eps_curve), curve_steps=curve_steps, imputer=imputer, cam_method=cam_method,
                cam_target=cam_target, l1_size=l1_size, seed=seed, batch_size=batch_size, device=device,
                progress=progress)
    _maps_pass(models, nets, tallies, dataset, samples, opts)
    if "attacks" in samples:
        sur01 = wrap01(surrogate[0], surrogate[1].mean, surrogate[1].std).to(device).eval() if surrogate else None
        _attack_pass(nets, tallies, dataset, samples["attacks"], sur01, opts)
    sanity = _sanity_pass(models, nets, dataset, samples["sanity"], opts) if "sanity" in samples else {}
    for shift, data in (shifts or {}).items():
        for n, (model, cfg) in models.items():
            tallies[n].shifts[shift] = _shifted(nets[n], model, cfg, data, opts)
    results = _settings(models, dataset, samples, shifts, surrogate, opts, name=name, split=split,
                        bootstrap={"samples": bootstrap_samples, "level": 0.95, "seed": seed}, sample_seed=sample_seed)
    convergence = convergence or {}
    for n, (_, cfg) in models.items():
        results["models"][n] = _summarise(tallies[n], cfg, sizes[n], convergence.get(n))
        if n in sanity:
            results["models"][n]["sanity"] = sanity[n]
    if bootstrap_samples:
        for n, refs in compare(models, tallies, _no_verdict(results["models"]), bootstrap_samples, seed).items():
            results["models"][n]["comparisons"] = refs
    return results


def _settings(models, dataset, samples, shifts, surrogate, opts, *, name, split, bootstrap, sample_seed) -> dict:
    """The results dict's settings: everything but the models."""
    attacks, input_size = opts["attacks"], next(iter(models.values()))[1].input_size
    return {
        "dataset": name or getattr(dataset, "name", None) or type(dataset).__name__,
        "split": split or getattr(dataset, "split", None), "n_images": len(samples["images"]), "eps": opts["eps"],
        "pgd_steps": [int(s) for s in opts["pgd_steps"]], "pgd_rule": opts["pgd_rule"], "attacks": list(attacks),
        "attack_images": len(samples.get("attacks", ())), "square_queries": opts["square_queries"],
        "eps_curve": [float(e) for e in sorted(opts["eps_curve"])] if "attacks" in samples else [],
        "eps_curve_pgd": {"steps": opts["curve_steps"], "rule": CURVE_RULE},
        "cam_method": opts["cam_method"], "cam_target": opts["cam_target"], "protocols": dict(PROTOCOL_TEXT),
        "l1_resolution": list(opts["l1_size"]), "localisation_resolution": list(input_size),
        "faithfulness": {"metric": "ROAD combined (LeRF - MoRF) / 2, softmax of the map's target class",
                         "map": ROAD_MAP, "imputer": opts["imputer"], "percentiles": list(ROAD_PERCENTILES),
                         "images": len(samples.get("road", ()))},
        "samples": {part: sample_record(dataset, idx, seed=sample_seed, purpose=part) for part, idx in samples.items()},
        "surrogate": None if surrogate is None else surrogate[1].backbone + f" ({surrogate[1].kind}, "
                                                                            f"seed {surrogate[1].recipe.get('seed')})",
        "bootstrap": bootstrap,
        "shifts": {s: {"dataset": getattr(d, "name", type(d).__name__), "split": getattr(d, "split", s),
                       "n_images": len(d)} for s, d in (shifts or {}).items()},
        "models": {},
    }


def _maps(model: nn.Module, cfg: ModelConfig, xn: torch.Tensor, targets, *, cam_method, l1_size, size):
    """(predictions, target classes, maps): maps {"paper", "relu", "gradcam"} -> (l1 maps, localisation maps).

    A Top-GAP model: its own CAM under each protocol (:data:`topgap.cam.PROTOCOLS`) and GradCAM; the baseline:
    GradCAM only (standard under both protocols). `targets` None: the predicted class.
    """
    if cfg.kind == "topgap":
        own, t, logits = topgap_cam(model, xn, targets, postprocessing=None, with_logits=True)
        gc, _ = baseline_cam(model, xn, targets=t, method=cam_method, postprocessing=None)
        raws = {**{p: (own, mode) for p, mode in PROTOCOLS.items()}, "gradcam": (gc, GRADCAM_POSTPROCESSING)}
    else:
        gc, t, logits = baseline_cam(model, xn, targets=targets, method=cam_method, postprocessing=None,
                                     with_logits=True)
        raws = {"gradcam": (gc, GRADCAM_POSTPROCESSING)}
    maps = {k: (postprocess(r, l1_size, mode), postprocess(r, size, mode)) for k, (r, mode) in raws.items()}
    return logits.argmax(1), t, maps


def _maps_pass(models, nets, tallies, dataset, samples, opts) -> None:
    """Clean predictions and every map metric on the image sample; ROAD on its sample (the same batches)."""
    road = set(samples.get("road", ()))
    for chunk, batch in _batches(dataset, samples["images"], opts["batch_size"], "maps", opts["progress"]):
        x, y, masks, has_mask = _unpack(batch, opts["device"])
        rows = torch.tensor([i in road for i in chunk], dtype=torch.bool, device=x.device)
        for n, (model, cfg) in models.items():
            _maps_batch(tallies[n], nets[n], model, cfg, x, y, masks, has_mask, rows, opts)


def _maps_batch(t: _Tally, net01, model, cfg, x, y, masks, has_mask, road_rows, opts) -> None:
    xn = net01[0](x)
    pred, target, maps = _maps(model, cfg, xn, y if opts["cam_target"] == "label" else None,
                               cam_method=opts["cam_method"], l1_size=opts["l1_size"], size=tuple(masks.shape[-2:]))
    t.pred += pred.tolist()
    t.correct += (pred == y).tolist()
    for key, (l1_maps, loc) in maps.items():
        t.maps[key].add(l1_maps.cpu().numpy(), loc.cpu().numpy(), masks, has_mask)
    for key in ("paper", "gradcam") if road_rows.any() else ():
        if key in maps:  # ROAD ranks the paper map's pixels (the raw order) once, for both protocols
            loc = maps[key][1]
            loc = loc if loc.shape[-2:] == xn.shape[-2:] else postprocess(loc, tuple(xn.shape[-2:]), "minmax")
            t.road[key] += road_scores(model, xn[road_rows], loc[road_rows], target[road_rows],
                                       imputer=opts["imputer"]).tolist()


def _attack_runs(opts) -> list[tuple[str, str, dict]]:
    """(results key, kind, run_attack options) of every requested attack but transfer."""
    attacks = opts["attacks"]
    runs = [("fgsm", "fgsm", {})] if "fgsm" in attacks else []
    runs += [(f"pgd{s}", "pgd", {"steps": int(s), "rule": opts["pgd_rule"]}) for s in opts["pgd_steps"]] \
        if "pgd" in attacks else []
    runs += [("autoattack", "autoattack", {})] if "autoattack" in attacks else []
    return runs + ([("square", "square", {"n_queries": opts["square_queries"]})] if "square" in attacks else [])


def _attack_pass(nets, tallies, dataset, idx: list[int], sur01, opts) -> None:
    """Every attack and the eps curve on the attack sample, through :mod:`topgap.eval.attacks`. The first batch is
    one image: its time, printed, estimates the rest before it runs."""
    runs, start, eps, seed = _attack_runs(opts), time.perf_counter(), opts["eps"], opts["seed"]
    for b, (_, batch) in enumerate(_batches(dataset, idx, opts["batch_size"], "attacks", opts["progress"], first=1)):
        x, y = batch["image"].to(opts["device"]), batch["label"].to(opts["device"])
        adv_t = transfer_examples(sur01, x, y, eps, steps=max(opts["pgd_steps"]), rule=opts["pgd_rule"],
                                  seed=seed) if "transfer" in opts["attacks"] else None
        for n, net01 in nets.items():
            for key, kind, kw in runs:
                tallies[n].add_attack(key, outcomes(net01, x, y, run_attack(net01, x, y, kind, eps, seed=seed, **kw)))
            if adv_t is not None:
                tallies[n].add_attack("transfer", outcomes(net01, x, y, adv_t))
            if opts["eps_curve"]:
                tallies[n].add_curve(_eps_curve(net01, x, y, opts["eps_curve"], steps=opts["curve_steps"], seed=seed))
        if b == 0 and len(idx) > 1 and opts["progress"]:
            took = time.perf_counter() - start
            what = ", ".join([k for k, _, _ in runs] + ["transfer"] * (adv_t is not None)
                             + ["eps curve"] * bool(opts["eps_curve"]))
            print(f"attacks ({what}) x {len(nets)} models: {took:.1f} s on the first image -> about "
                  f"{took * (len(idx) - 1) / 60:.1f} min for the other {len(idx) - 1}", file=sys.stderr, flush=True)


def _sanity_pass(models, nets, dataset, idx: list[int], opts) -> dict[str, dict]:
    """{model: {protocol: :func:`topgap.eval.sanity.cascading_randomisation`}} on the sanity sample, for the maps'
    target classes."""
    from .sanity import randomisation_by_protocol

    x, y, _, _ = _unpack(next(iter(DataLoader(dataset, batch_sampler=[idx]))), opts["device"])
    out = {}
    for n, (model, cfg) in tqdm(models.items(), desc="sanity", disable=not opts["progress"], unit="model"):
        targets = y if opts["cam_target"] == "label" else predict(nets[n], x)
        out[n] = randomisation_by_protocol(model, cfg, x, targets, protocols=tuple(PROTOCOLS),
                                           cam_method=opts["cam_method"], seed=opts["seed"],
                                           batch_size=opts["batch_size"])
    return out


def _shifted(net01, model, cfg, data, opts) -> dict:
    correct, maps = [], {p: _Maps(split_level=False) for p in PROTOCOLS}
    for _, batch in _batches(data, list(range(len(data))), opts["batch_size"], "shifted", opts["progress"]):
        x, y, masks, has_mask = _unpack(batch, opts["device"])
        if has_mask.any():
            pred, _, m = _maps(model, cfg, net01[0](x), y if opts["cam_target"] == "label" else None,
                               cam_method=opts["cam_method"], l1_size=opts["l1_size"], size=tuple(masks.shape[-2:]))
            for p in PROTOCOLS:
                l1_maps, loc = m.get(p, m["gradcam"])
                maps[p].add(l1_maps.cpu().numpy(), loc.cpu().numpy(), masks, has_mask)
        else:
            pred = predict(net01, x)
        correct += (pred == y).tolist()
    n = len(correct)
    return {"correct_list": correct, "summary": {
        "n": n, "correct": int(sum(correct)), "accuracy": sum(correct) / n if n else None,
        **{f"{k}_{p}": finite_mean(getattr(maps[p], a)) for k, a in (("iou", "iou"), ("mass_in_mask", "mass"))
           for p in PROTOCOLS}}}


def _summarise(t: _Tally, cfg: ModelConfig, size: tuple[int, int], conv) -> dict:
    cam = list(size) if cfg.kind == "topgap" else None
    k_fraction = None
    if cam is not None:
        pixels = cam[0] * cam[1]
        k_fraction = min(cfg.k, pixels) / pixels if cfg.k else {"gap": 1.0, "gmp": 1 / pixels}.get(cfg.pooling)
    n = len(t.correct)
    out = {"kind": cfg.kind, "backbone": cfg.backbone, "k": cfg.k if cfg.kind == "topgap" else None,
           "pooling": cfg.pooling, "pooling_params": cfg.pooling_params,
           "cam_size": cam, "k_fraction": k_fraction,
           "converged": None if conv is None else bool(conv[0]), "convergence": None if conv is None else conv[1],
           "clean": {"n": n, "correct": int(sum(t.correct)), "accuracy": sum(t.correct) / n if n else None},
           "collapsed": collapse(t.pred, t.correct, list(cfg.class_names)),
           **{k: v for p in PROTOCOLS for k, v in t.maps[p].summary(f"_{p}").items()},
           **t.maps["gradcam"].summary("_gradcam"),
           "road": finite_mean(t.road["paper"]), "road_gradcam": finite_mean(t.road["gradcam"]),
           "n_masks": len(t.maps["paper"].boxes), "n_road": len(t.road["paper"]),
           "attacks": {key: _attack_counts(a) for key, a in t.attacks.items()}}
    curve = [{"eps": e, "n": n_e, "robust_correct": c, "accuracy": c / n_e if n_e else None}
             for e, (n_e, c) in sorted(t.curve.items())]
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


def _paired_maps(t: _Maps, r: _Maps, suffix: str) -> dict[str, tuple]:
    """The map metrics of :func:`_paired` for one protocol, keys "<metric><suffix>"."""
    f = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    out = {}
    for key, metric in (("l1", "l1"), ("iou", "iou"), ("mass", "mass_in_mask")):
        a, b = f(getattr(t, key)), f(getattr(r, key))
        if len(a) and len(a) == len(b):
            out[metric + suffix] = (a, b, None)
    if t.pxap.pos and len(t.pxap.pos) == len(r.pxap.pos):
        out["pxap" + suffix] = (np.hstack(t.pxap.per_image()), np.hstack(r.pxap.per_image()), _pxap_stat)
    if t.boxes and len(t.boxes) == len(r.boxes):
        out["maxboxacc_v2" + suffix] = (f(t.boxes), f(r.boxes), maxboxacc_v2)
    return out


def _paired(t: _Tally, r: _Tally) -> dict[str, tuple]:
    """metric -> (this model's per-image values, the reference's, statistic or None for the mean): accuracy, every
    map metric under both protocols, ROAD, attacks, shifts, BG-Gap."""
    f = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    out = {"accuracy": (f(t.correct), f(r.correct), None)}
    for p in PROTOCOLS:
        out.update(_paired_maps(t.maps[p], r.maps[p], f"_{p}"))
    if t.road["paper"] and len(t.road["paper"]) == len(r.road["paper"]):
        out["road"] = (f(t.road["paper"]), f(r.road["paper"]), None)
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


def _no_verdict(models: dict) -> dict[str, str]:
    """{model: why it gets no verdict} from its summary: training did not converge, or its predictions collapsed."""
    out = {n: "collapsed predictions: no verdict" for n, m in models.items() if m["collapsed"]["flag"]}
    return out | {n: "not converged: no verdict" for n, m in models.items() if m["converged"] is False}


def compare(models: dict, tallies: dict[str, _Tally], blocked: dict[str, str], samples: int, seed: int) -> dict:
    """{model: {reference: {metric: interval + verdict}}} for every Top-GAP model against the baseline(s) and the
    FPN-only control(s) (Top-GAP models with k=None); the own CAM of a Top-GAP model against GradCAM on the baseline.
    `blocked`: {model: reason} of the models that get no verdict (:func:`_no_verdict`), on either side."""
    refs = [n for n, (_, c) in models.items() if c.kind == "baseline" or c.control]
    out = {}
    for n, (_, cfg) in models.items():
        if cfg.kind != "topgap":
            continue
        out[n] = {}
        for ref in (r for r in refs if r != n):
            out[n][ref] = {}
            why = blocked.get(n) or blocked.get(ref)
            for metric, (a, b, stat) in _paired(tallies[n], tallies[ref]).items():
                ci = paired_bootstrap(a, b, **({"statistic": stat} if stat else {}), samples=samples, seed=seed)
                ci["verdict"] = why or verdict(ci, higher_is_better(metric))
                out[n][ref][metric] = ci
    return out


SELECTION_RULE = ("accuracy, then IOU", "the converged, not collapsed Top-GAP model (any pooling but the GAP control) "
                  "of highest validation accuracy; ties broken by the higher validation IOU (paper protocol), then by "
                  "the smaller k")


def select_models(results: dict) -> dict:
    """The one Top-GAP model chosen on these (validation) results by :data:`SELECTION_RULE`."""
    key, rule = SELECTION_RULE
    def iou(m: dict) -> float:
        value = m.get("iou_paper", m.get("iou"))  # reports older than the protocols: "iou"
        return -math.inf if value is None else value

    pool = [((m["clean"]["accuracy"], iou(m), -(m["k"] or 0)), n) for n, m in results["models"].items()
            if m["kind"] == "topgap" and not is_control(m) and m.get("converged") is not False
            and not (m.get("collapsed") or {}).get("flag")]
    by = {}
    if pool:
        (accuracy, iou, _), name = max(pool)
        by[key] = {"model": name, "value": accuracy, "iou": iou if math.isfinite(iou) else None}
    return {"split": results["split"], "dataset": results["dataset"], "rule": rule, "by": by}


NO_SELECTION = "descriptive"  # the verdict of every comparison when no k was chosen on validation data
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


def adopted_selection(report: str | Path, models: list[str], evaluated: str) -> dict:
    """The selection of another report of the same family (`report`: its results.json or folder), for a benchmark
    without a validation split of its own; ValueError unless that choice was made on validation data by the same
    models."""
    path = Path(report) / "results.json" if Path(report).is_dir() else Path(report)
    try:
        other = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--selection-from {report}: cannot read a results.json there ({e})") from None
    chosen = other.get("selection")
    if not chosen:
        raise ValueError(f"--selection-from {report}: that report chose no k (it was run with --select-split none)")
    check_selection_split(chosen["split"], evaluated)
    if sorted(other["models"]) != sorted(models):
        raise ValueError(f"--selection-from {report}: its models ({', '.join(sorted(other['models']))}) are not "
                         f"this family's ({', '.join(sorted(models))})")
    return {**chosen, "from": str(path)}


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
    """One model's scalar metrics from its results entry: accuracy, map metrics per protocol ("<metric>_paper",
    "<metric>_relu") and GradCAM's ("<metric>_gradcam"), ROAD ("road", "road_gradcam"), attack rates
    ("<attack>_correct", "<attack>_unchanged"), "<shift>_accuracy" and bg_gap; None where not measured. Results
    written before the protocols keep their unsuffixed map keys ("l1", ...)."""
    flat = {"accuracy": m["clean"]["accuracy"]}
    suffixes = [f"_{p}" for p in PROTOCOLS] if f"l1_{next(iter(PROTOCOLS))}" in m else [""]
    for key in MAP_METRICS:
        flat |= {key + s: m.get(key + s) for s in suffixes}
        flat[f"{key}_gradcam"] = m.get(f"{key}_gradcam")
    flat["road"], flat["road_gradcam"] = m.get("road"), m.get("road_gradcam")
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
    p.add_argument("--selection-from", default=None, metavar="REPORT",
                   help="take the k chosen in another report of this family (its results.json or folder), e.g. a "
                        "benchmark without a validation split judged by the choice made on the dataset's val split; "
                        "replaces --select-split")
    p.add_argument("--fmt", default="auto", help="dataset format (see topgap.data.open_dataset)")
    p.add_argument("--labels", default="breed", choices=["breed", "species"], help="Oxford-IIIT Pet labels")
    p.add_argument("--eps", type=parse_eps, default="1/255", help="Linf budget on [0, 1] images, e.g. 1/255, 8/255")
    p.add_argument("--pgd-steps", type=int, nargs="+", default=[10],
                   help="PGD step counts, one run each (the paper's: 40 with --pgd-rule foolbox; slow on a CPU)")
    p.add_argument("--pgd-rule", default="2.5eps/steps", choices=list(PGD_RULES),
                   help="PGD step size: 2.5 eps / steps reaches the eps ball in any step count; foolbox (eps/30, the "
                        "paper's library) needs 30 steps for it")
    p.add_argument("--attacks", nargs="+", choices=[*ATTACKS, "none"], default=list(DEFAULT_ATTACKS),
                   help="attacks to run, or none (autoattack and square cost minutes per 224 px image on a CPU)")
    p.add_argument("--surrogate", default=None, help="model folder of an independently trained model (another seed) "
                                                     "for the transfer attack; adds 'transfer'")
    p.add_argument("--square-queries", type=int, default=1000)
    p.add_argument("--attack-images", type=int, default=30,
                   help="every attack and the eps curve on a class-stratified sample of N images (ids in the report)")
    p.add_argument("--eps-curve", type=_eps_or_none, nargs="+", default=list(EPS_CURVE),
                   help="budgets of the accuracy-vs-eps curve, or none")
    p.add_argument("--faithfulness-images", type=int, default=20,
                   help="ROAD on a class-stratified sample of N images, within the attacks' (0: skip)")
    p.add_argument("--imputer", default="blur", choices=list(IMPUTERS), help="ROAD imputation")
    p.add_argument("--sanity-images", type=int, default=6,
                   help="cascading randomisation (Adebayo et al.) on a class-stratified sample of N images (0: skip)")
    p.add_argument("--cam-method", default="gradcam", choices=list(METHODS))
    p.add_argument("--cam-target", default="label", choices=list(CAM_TARGETS),
                   help="the class every map is scored for: the ground truth (Choe et al.'s GT-known) or predicted")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of every class-stratified sample")
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP_SAMPLES, help="bootstrap resamples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-images", type=int, default=None, help="evaluate a class-stratified sample of N images")
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


def evaluate_folder(family: Path, dataset, args, *, surrogate, shifts, split: str) -> dict:
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
                           faithfulness_images=args.faithfulness_images, sanity_images=args.sanity_images,
                           imputer=args.imputer, cam_method=args.cam_method, cam_target=args.cam_target,
                           batch_size=args.batch_size, max_images=args.max_images, sample_seed=args.sample_seed,
                           device=args.device,
                           name=Path(args.data).name, split=split, convergence=conv, bootstrap_samples=args.bootstrap)


def run(args: argparse.Namespace) -> dict:
    """Load the family, open the dataset, evaluate, write the report; return a short summary."""
    from ..checkpoint import family_members, load_model
    from ..data import open_dataset
    from .report import write_report

    family = Path(args.family)
    args.attacks, args.eps_curve = none_means_empty(args.attacks, "--attacks"), none_means_empty(args.eps_curve,
                                                                                                  "--eps-curve")
    select = None if args.selection_from else check_selection_split(args.select_split, args.split)
    folds = sorted(p for p in family.glob("fold*") if p.is_dir())
    members = family_members(folds[0] if folds else family)
    cfg = json.loads((members[0] / "config.json").read_text())
    adopted = adopted_selection(args.selection_from, [m.name for m in members], args.split) if args.selection_from \
        else None
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
    results = evaluate_folder(family, dataset, args, surrogate=surrogate, shifts=shifts, split=args.split)
    if adopted:
        results["selection"] = adopted
    elif val_set is None:
        results["selection"] = None
        withhold_verdicts(results)
    else:
        val_args = argparse.Namespace(**{**vars(args), "attacks": [], "eps_curve": [], "faithfulness_images": 0,
                                         "sanity_images": 0, "bootstrap": 0})
        val = evaluate_folder(family, val_set, val_args, surrogate=None, shifts={}, split=select)
        results["selection"] = select_models(val)
    paths = write_report(results, out, title=title)
    return {"out": str(out), "files": [str(p) for p in paths], "n_images": results["n_images"],
            "models": {n: {"accuracy": m["clean"]["accuracy"], **{k: m[k] for k in ("l1_paper", "l1_relu", "iou_paper",
                                                                                   "iou_relu")},
                           "converged": m["converged"], "collapsed": m["collapsed"]["flag"],
                           "gradient_masking_suspected": m["gradient_masking_suspected"]}
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
        per_fold.append(evaluate_folder(f, part, args, surrogate=surrogate, shifts={}, split=f"{f.name} held out"))
    agg = aggregate_folds(per_fold)
    paths = write_cv_report(agg, per_fold, out, title=title + f" ({len(folds)}-fold cross-validation)")
    return {"out": str(out), "files": [str(p) for p in paths], "folds": len(folds),
            "models": {n: {k: v["mean"] for k, v in m.items() if k in ("accuracy", "iou_paper", "iou_relu", "l1_paper",
                                                                        "l1_relu")}
                       for n, m in agg["models"].items()}}
