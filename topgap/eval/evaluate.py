"""`topgap evaluate`: a model family (Top-GAP models by k + the baseline) on one dataset.

Measures what the paper reports: l1 sparsity of the CAMs (section 4.1, Table 2, Figure 3), clean
accuracy and FGSM/PGD robustness (4.2, Table 3), accuracy under distribution shift (Table 5), and
IOU with the ground-truth masks (4.4, Table 7); plus Square (black-box) and transfer-from-baseline
robustness to check for gradient masking (:func:`topgap.eval.attacks.gradient_masking_flag`).

CAMs are taken for the predicted class, resized to the dataset's mask size (the input size) and
min-max scaled there, so every map type is measured at one resolution and one scaling: Top-GAP
models by their own CAM (``topgap_cam``) and by GradCAM (``*_gradcam`` keys); the baseline by
GradCAM only. IOU is :func:`topgap.metrics.best_iou` (mask 1 = object, 255 = ignored), averaged
over the images with a non-empty mask.

Results (JSON-serialisable; rates are count / n, NaN-free: None when undefined)::

    {"dataset": str, "split": str | None, "n_images": int, "eps": float, "pgd_steps": [int],
     "attacks": [str], "attack_images": int, "square_queries": int, "cam_method": str,
     "shifted": {"dataset": str, "split": str | None, "n_images": int} | None,
     "models": {name: {
        "kind": "topgap" | "baseline", "backbone": str, "k": int | None,
        "cam_size": [h, w] | None,          # class-map size (Top-GAP), None for the baseline
        "k_fraction": float | None,         # min(k, h*w) / (h*w); 1.0 for GAP (k None)
        "clean": {"n", "correct", "accuracy"},
        "l1": float,                        # own CAM (Top-GAP) or GradCAM (baseline), Table 2
        "l1_gradcam": float,                # GradCAM on this model
        "n_masks": int, "iou", "iou_gradcam", "mass_in_mask", "mass_in_mask_gradcam": float | None,
        "attacks": {"fgsm" | "pgd<steps>" | "square" | "transfer":
                    {"n", "clean_correct", "robust_paper", "robust_correct",
                     "clean_accuracy", "robust_paper_rate", "robust_correct_rate"}},
        "white_box_rate", "black_box_rate": float | None,  # worst case per image, attack subset
        "gradient_masking_suspected": bool | None,
        "shifted": {"n", "correct", "accuracy"} | None}}}

FGSM/PGD run on all images, Square and transfer on the first `attack_images` (they are slow);
``white_box_rate`` counts the images of that subset still correct under every white-box attack,
``black_box_rate`` those still correct under every black-box/transfer attack. Transfer examples
are PGD (the largest of `pgd_steps`) on the family's baseline, crafted once per batch.
"""
from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .attacks import gradient_masking_flag, robustness, run_attack, with_rates, wrap01
from ..cam import METHODS, baseline_cam, topgap_cam
from ..config import ModelConfig
from ..io import atomic_write, write_json
from ..metrics import best_iou, l1_sparsity, mass_in_mask

__all__ = ["ATTACKS", "evaluate_family", "write_report", "aggregate_folds", "parse_eps", "register", "run"]

ATTACKS = ("fgsm", "pgd", "square", "transfer")
WHITE_BOX, BLACK_BOX = ("fgsm", "pgd"), ("square", "transfer")


def parse_eps(text: str | float) -> float:
    """'1/255' -> 0.00392..., '0.03' -> 0.03; must lie in [0, 1]."""
    try:
        eps = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps {text!r} is not a number or a fraction like 1/255") from None
    if not 0 <= eps <= 1:
        raise ValueError(f"eps is a Linf budget on [0, 1] images and must lie in [0, 1] (got {text})")
    return eps


def _cam_size(model: nn.Module, cfg: ModelConfig, device) -> list[int] | None:
    if cfg.kind != "topgap":
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return list(model.class_maps(torch.zeros(1, 3, *cfg.input_size, device=device)).shape[-2:])
    finally:
        model.train(was_training)


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _loader(dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def _add(total: dict, counts: dict) -> None:
    for key in ("n", "clean_correct", "robust_paper", "robust_correct"):
        total[key] = total.get(key, 0) + counts[key]


class _Tally:
    """Running sums of one model's metrics: O(1) memory in the number of images."""

    def __init__(self):
        self.n = self.correct = 0
        self.l1, self.l1_gc, self.iou, self.iou_gc, self.mass, self.mass_gc = [], [], [], [], [], []
        self.attacks: dict[str, dict] = {}
        self.sub_n = self.white = self.black = 0


def evaluate_family(models: dict[str, tuple[nn.Module, ModelConfig]], dataset, *, shifted=None,
                    attacks=ATTACKS, eps: float = 1 / 255, pgd_steps=(40,), square_queries: int = 200,
                    attack_images: int | None = None, cam_method: str = "gradcam", batch_size: int = 32,
                    max_images: int | None = None, device: str = "cpu", progress: bool = True,
                    name: str | None = None, split: str | None = None) -> dict:
    """Evaluate every model of a family on `dataset` (items: image in [0, 1], label, mask, has_mask).

    Args:
        models: {name: (model, config)} as :func:`topgap.checkpoint.load_family` returns.
        dataset: the test set; `shifted`: an optional distribution-shifted set (Table 5).
        attacks: any of "fgsm", "pgd", "square", "transfer" (transfer needs a baseline in `models`).
        eps: Linf budget on [0, 1] images (paper: 1/255, CIFAR-10 8/255).
        pgd_steps: one PGD run per value (paper: 40; Table 4: 20 and 50).
        square_queries: queries of the Square attack.
        attack_images: Square and transfer use only the first this many images (default all).
        cam_method: the post-hoc CAM (:data:`topgap.cam.METHODS`) for the baseline and "*_gradcam".
        max_images: evaluate only the first this many images.
        name, split: recorded in the results (default: the dataset's ``name``/``split`` attributes).

    Returns the results dict described in the module docstring.
    """
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; choose from {', '.join(ATTACKS)}")
    if cam_method not in METHODS:
        raise ValueError(f"unknown CAM method {cam_method!r}; choose one of {', '.join(METHODS)}")
    if not models:
        raise ValueError("no models to evaluate: the family is empty")
    if "pgd" in attacks and (not pgd_steps or min(pgd_steps) < 1):
        raise ValueError(f"pgd_steps must be one or more positive step counts (got {pgd_steps})")
    baselines = [n for n, (_, c) in models.items() if c.kind == "baseline"]
    if "transfer" in attacks and not baselines:
        raise ValueError("the transfer attack needs a baseline model in the family; drop 'transfer' from attacks")
    eps = parse_eps(eps)
    name = name or getattr(dataset, "name", None) or type(dataset).__name__
    split = split or getattr(dataset, "split", None)
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    n_images = len(dataset)
    n_attack = n_images if attack_images is None else min(attack_images, n_images)
    nets = {n: wrap01(m, c.mean, c.std).to(device).eval() for n, (m, c) in models.items()}
    tallies = {n: _Tally() for n in models}
    white = [a for a in attacks if a in WHITE_BOX]
    black = [a for a in attacks if a in BLACK_BOX]
    transfer_steps = max(pgd_steps) if pgd_steps else 40

    seen = 0
    for batch in tqdm(_loader(dataset, batch_size), desc="evaluate", disable=not progress, unit="batch"):
        x, y = batch["image"].to(device), batch["label"].to(device)
        masks, has_mask = batch["mask"].numpy(), batch["has_mask"].numpy().astype(bool)
        sub = max(0, min(len(y), n_attack - seen))  # images of this batch in the attack subset
        seen += len(y)
        transfer_adv = None
        if "transfer" in attacks and sub:
            transfer_adv = run_attack(nets[baselines[0]], x[:sub], y[:sub], "pgd", eps, steps=transfer_steps)
        for n, (model, cfg) in models.items():
            _evaluate_batch(tallies[n], nets[n], model, cfg, x, y, masks, has_mask, sub, transfer_adv,
                            white=white, black=black, attacks=attacks, eps=eps, pgd_steps=pgd_steps,
                            square_queries=square_queries, cam_method=cam_method)

    shifted_acc = {n: _accuracy(nets[n], shifted, batch_size, device, progress) for n in models} if shifted else {}
    results = {
        "dataset": name, "split": split, "n_images": n_images, "eps": eps,
        "pgd_steps": [int(s) for s in pgd_steps], "attacks": list(attacks), "attack_images": n_attack,
        "square_queries": square_queries, "cam_method": cam_method,
        "shifted": None if shifted is None else {"dataset": getattr(shifted, "name", type(shifted).__name__),
                                                 "split": getattr(shifted, "split", None), "n_images": len(shifted)},
        "models": {},
    }
    for n, (model, cfg) in models.items():
        results["models"][n] = _summarise(tallies[n], model, cfg, device, white, black, shifted_acc.get(n))
    return results


def _evaluate_batch(t: _Tally, net01: nn.Module, model: nn.Module, cfg: ModelConfig, x, y, masks, has_mask, sub,
                    transfer_adv, *, white, black, attacks, eps, pgd_steps, square_queries, cam_method) -> None:
    with torch.no_grad():
        pred = net01(x).argmax(1)
    t.n += len(y)
    t.correct += int((pred == y).sum())
    xn, size = net01[0](x), tuple(masks.shape[-2:])
    gradcam, _ = baseline_cam(model, xn, targets=pred, method=cam_method, size=size)
    own = topgap_cam(model, xn, targets=pred, size=size)[0] if cfg.kind == "topgap" else gradcam
    own, gradcam = own.cpu().numpy(), gradcam.cpu().numpy()
    t.l1.extend(np.atleast_1d(l1_sparsity(own)).tolist())
    t.l1_gc.extend(np.atleast_1d(l1_sparsity(gradcam)).tolist())
    for i in np.flatnonzero(has_mask):
        obj, ignore = masks[i] == 1, masks[i] == 255
        if not obj.any():
            continue
        t.iou.append(best_iou(own[i], obj, ignore)[0])
        t.iou_gc.append(best_iou(gradcam[i], obj, ignore)[0])
        t.mass.append(mass_in_mask(own[i], obj, ignore))
        t.mass_gc.append(mass_in_mask(gradcam[i], obj, ignore))

    white_ok = torch.ones(sub, dtype=torch.bool, device=y.device)
    black_ok = torch.ones(sub, dtype=torch.bool, device=y.device)
    runs = [("fgsm", "fgsm", {})] if "fgsm" in attacks else []
    runs += [(f"pgd{s}", "pgd", {"steps": int(s)}) for s in pgd_steps] if "pgd" in attacks else []
    for key, kind, kw in runs:
        adv = run_attack(net01, x, y, kind, eps, **kw)
        _add(t.attacks.setdefault(key, {}), robustness(net01, x, y, adv))
        if sub:
            with torch.no_grad():
                white_ok &= net01(adv[:sub]).argmax(1) == y[:sub]
    if sub:
        for key in black:
            adv = (run_attack(net01, x[:sub], y[:sub], "square", eps, n_queries=square_queries)
                   if key == "square" else transfer_adv)
            _add(t.attacks.setdefault(key, {}), robustness(net01, x[:sub], y[:sub], adv))
            with torch.no_grad():
                black_ok &= net01(adv).argmax(1) == y[:sub]
        t.sub_n += sub
        t.white += int(white_ok.sum())
        t.black += int(black_ok.sum())


def _accuracy(net01: nn.Module, dataset, batch_size: int, device, progress: bool) -> dict:
    correct = n = 0
    with torch.no_grad():
        for batch in tqdm(_loader(dataset, batch_size), desc="shifted", disable=not progress, unit="batch"):
            pred = net01(batch["image"].to(device)).argmax(1).cpu()
            correct += int((pred == batch["label"]).sum())
            n += len(pred)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else None}


def _summarise(t: _Tally, model, cfg: ModelConfig, device, white, black, shifted) -> dict:
    cam_size = _cam_size(model, cfg, device)
    k_fraction = None
    if cam_size is not None:
        pixels = cam_size[0] * cam_size[1]
        k_fraction = 1.0 if cfg.k is None else min(cfg.k, pixels) / pixels
    wb = t.white / t.sub_n if t.sub_n and white else None
    bb = t.black / t.sub_n if t.sub_n and black else None
    return {
        "kind": cfg.kind, "backbone": cfg.backbone, "k": cfg.k if cfg.kind == "topgap" else None,
        "cam_size": cam_size, "k_fraction": k_fraction,
        "clean": {"n": t.n, "correct": t.correct, "accuracy": t.correct / t.n if t.n else None},
        "l1": _mean(t.l1), "l1_gradcam": _mean(t.l1_gc), "n_masks": len(t.iou),
        "iou": _mean(t.iou), "iou_gradcam": _mean(t.iou_gc),
        "mass_in_mask": _mean(t.mass), "mass_in_mask_gradcam": _mean(t.mass_gc),
        "attacks": {key: with_rates(c) for key, c in t.attacks.items()},
        "white_box_rate": wb, "black_box_rate": bb,
        "gradient_masking_suspected": None if wb is None or bb is None else gradient_masking_flag(wb, bb),
        "shifted": shifted,
    }


# ----------------------------------------------------------------------------------------------- report

def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(m: dict, key: str, definition: str):
    a = m["attacks"].get(key)
    return a[f"{definition}_rate"] if a else None


def _split(results: dict) -> tuple[dict | None, dict]:
    models = results["models"]
    base = next((m for m in models.values() if m["kind"] == "baseline"), None)
    return base, {n: m for n, m in models.items() if m["kind"] == "topgap"}


def markdown_report(results: dict, title: str = "Top-GAP evaluation") -> str:
    """The results as Markdown tables laid out like the paper's Tables 2, 3, 5 and 7, plus a full table."""
    base, ours = _split(results)
    b = base or {"l1": None, "iou": None, "clean": {"accuracy": None}, "attacks": {}, "shifted": None}
    pgd_keys = [f"pgd{s}" for s in results["pgd_steps"]] if "pgd" in results["attacks"] else []
    wb_keys = (["fgsm"] if "fgsm" in results["attacks"] else []) + pgd_keys
    label = {"fgsm": "FGSM", **{k: f"PGD^{k[3:]}" for k in pgd_keys}}
    split = f" (split {results['split']})" if results["split"] else ""
    out = [f"# {title}", "",
           f"Dataset **{results['dataset']}**{split}, {results['n_images']} images, "
           f"eps = {results['eps']:.5g} ({results['eps'] * 255:.3g}/255), CAM baseline: {results['cam_method']}. "
           "Rows: the Top-GAP models by k; the baseline columns repeat the unmodified model.", ""]

    out += ["## Table 2: l1 sparsity of the CAM (lower is sparser)", "",
            _table(["model", "k", "k/(h*w)", "l1 ↓ (GradCAM, baseline)", "l1 ↓ (ours)"],
                   [[n, m["k"], m["k_fraction"], b["l1"], m["l1"]] for n, m in ours.items()]), ""]

    header = ["model", "k"]
    for key in wb_keys:
        header += [f"{label[key]} ↑ unchanged", f"{label[key]} ↑ correct",
                   f"{label[key]} ↑ (ours) unchanged", f"{label[key]} ↑ (ours) correct"]
    header += ["Clean Acc", "Clean Acc (ours)"]
    rows = []
    for n, m in ours.items():
        row = [n, m["k"]]
        for key in wb_keys:
            row += [_rate(b, key, "robust_paper"), _rate(b, key, "robust_correct"),
                    _rate(m, key, "robust_paper"), _rate(m, key, "robust_correct")]
        rows.append(row + [b["clean"]["accuracy"], m["clean"]["accuracy"]])
    out += ["## Table 3: robust accuracy under white-box attacks", "",
            "*unchanged*: prediction on the attacked image equals the clean prediction (the paper's definition); "
            "*correct*: the attacked image is still classified correctly.", "", _table(header, rows), ""]

    if results.get("shifted"):
        s = results["shifted"]
        out += [f"## Table 5: accuracy under distribution shift ({results['dataset']}/{results['split']} → "
                f"{s['dataset']}/{s['split']})", "",
                _table(["model", "k", "Acc ↑", "Acc ↑ (ours)"],
                       [[n, m["k"], (b["shifted"] or {}).get("accuracy"), (m["shifted"] or {}).get("accuracy")]
                        for n, m in ours.items()]), ""]

    if any(m["n_masks"] for m in results["models"].values()):
        out += ["## Table 7: IOU with the ground-truth masks (best threshold per image)", "",
                _table(["model", "k", "IOU ↑ (GradCAM, baseline)", "IOU ↑ (ours)"],
                       [[n, m["k"], b["iou"], m["iou"]] for n, m in ours.items()]), ""]

    attack_keys = wb_keys + [k for k in ("square", "transfer") if k in results["attacks"]]
    header = ["model", "kind", "k", "cam size", "k/(h*w)", "clean acc", "shifted acc", "l1", "l1 GradCAM",
              "IOU", "IOU GradCAM", "mass in mask", "mass GradCAM"]
    header += [f"{label.get(k, k.capitalize())} unchanged / correct" for k in attack_keys]
    header += ["white-box", "black-box", "gradient masking?"]
    rows = []
    for n, m in results["models"].items():
        row = [n, m["kind"], m["k"], "x".join(map(str, m["cam_size"])) if m["cam_size"] else None, m["k_fraction"],
               m["clean"]["accuracy"], (m["shifted"] or {}).get("accuracy"), m["l1"], m["l1_gradcam"],
               m["iou"], m["iou_gradcam"], m["mass_in_mask"], m["mass_in_mask_gradcam"]]
        row += [f"{_fmt(_rate(m, k, 'robust_paper'))} / {_fmt(_rate(m, k, 'robust_correct'))}" for k in attack_keys]
        rows.append(row + [m["white_box_rate"], m["black_box_rate"], m["gradient_masking_suspected"]])
    out += ["## All models", "",
            f"Square ({results['square_queries']} queries) and transfer (PGD on the baseline) use the first "
            f"{results['attack_images']} images. White-/black-box: share of those images still correct under every "
            "white-box / every black-box attack; gradient masking is suspected when white-box exceeds black-box by "
            "more than 0.1.", "", _table(header, rows), ""]
    return "\n".join(out)


def _plot(path: Path, results: dict, series: list[tuple[str, callable]], ylabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    base, ours = _split(results)
    points = sorted((m["k_fraction"], m) for m in ours.values() if m["k_fraction"] is not None)
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for i, (label, get) in enumerate(series):
            colour = f"C{i}"
            ax.plot([p for p, _ in points], [_nan(get(m)) for _, m in points], "o-", color=colour, label=label)
            if base is not None and get(base) is not None:
                ax.axhline(get(base), color=colour, linestyle="--", label=f"{label} (baseline)")
        ax.set_xlabel("k / (h*w)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def _nan(v):
    return float("nan") if v is None else v


def write_report(results: dict, out_dir: str | Path, title: str = "Top-GAP evaluation") -> list[Path]:
    """Write results.json, results.md and plots/{l1,iou,accuracy,robustness}.png to `out_dir`, atomically;
    with several PGD step counts also plots/pgd_steps.png (Figure A2).

    Plots show each metric against k/(h*w) for the Top-GAP models, the baseline as a dashed line
    (like Figure 3); robustness uses the paper's definition (prediction unchanged).
    """
    out = Path(out_dir)
    paths = [write_json(out / "results.json", results)]
    text = markdown_report(results, title)
    paths.append(atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(text)))
    plots = out / "plots"
    paths.append(_plot(plots / "l1.png", results, [("l1 (ours) / GradCAM (baseline)", lambda m: m["l1"])],
                       "l1 of the CAM ↓", "Sparsity (section 4.1)"))
    paths.append(_plot(plots / "iou.png", results, [("IOU (ours) / GradCAM (baseline)", lambda m: m["iou"])],
                       "IOU ↑", "Localisation (section 4.4)"))
    acc = [("clean", lambda m: m["clean"]["accuracy"])]
    if results.get("shifted"):
        acc.append(("shifted", lambda m: (m["shifted"] or {}).get("accuracy")))
    paths.append(_plot(plots / "accuracy.png", results, acc, "accuracy ↑", "Accuracy (Tables 3, 5)"))
    keys = [k for k in next(iter(results["models"].values()))["attacks"] if k != "transfer"]
    rob = [(k.upper() if k == "fgsm" else k.capitalize() if k == "square" else f"PGD^{k[3:]}",
            lambda m, k=k: _rate(m, k, "robust_paper")) for k in keys]
    paths.append(_plot(plots / "robustness.png", results, rob, "robust accuracy (prediction unchanged) ↑",
                       f"Robustness, eps = {results['eps'] * 255:.3g}/255 (section 4.2)"))
    if "pgd" in results["attacks"] and len(results["pgd_steps"]) > 1:
        paths.append(_plot_pgd_steps(plots / "pgd_steps.png", results))
    return paths


def _plot_pgd_steps(path: Path, results: dict) -> Path:
    """Robust accuracy of every model against the number of PGD steps, both definitions (like Figure A2)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = sorted(results["pgd_steps"])
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for i, (name, m) in enumerate(results["models"].items()):
            for definition, style in (("robust_paper", "o-"), ("robust_correct", "s--")):
                ax.plot(steps, [_nan(_rate(m, f"pgd{s}", definition)) for s in steps], style, color=f"C{i}",
                        label=f"{name} ({'unchanged' if definition == 'robust_paper' else 'correct'})")
        ax.set_xlabel("PGD steps")
        ax.set_ylabel("robust accuracy ↑")
        ax.set_title(f"Robust accuracy against PGD steps, eps = {results['eps'] * 255:.3g}/255 (Figure A2)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2)
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def aggregate_folds(results_list: list[dict]) -> dict:
    """Mean ± std over folds (Table 3: 5 folds) of each model's accuracies, robust rates, l1 and IOU.

    Returns {"n_folds": int, "models": {name: {metric: {"mean", "std", "values"}}}} for the models
    present in every fold; metrics: "accuracy", "shifted_accuracy", "l1", "iou", and
    "<attack>_paper" / "<attack>_correct" robust rates. std is the sample standard deviation
    (ddof=1; 0 for a single fold). Metrics missing in some fold are left out.
    """
    if not results_list:
        raise ValueError("aggregate_folds needs at least one fold's results")
    names = [n for n in results_list[0]["models"] if all(n in r["models"] for r in results_list)]
    metrics = {
        "accuracy": lambda m: m["clean"]["accuracy"],
        "shifted_accuracy": lambda m: (m.get("shifted") or {}).get("accuracy"),
        "l1": lambda m: m.get("l1"), "iou": lambda m: m.get("iou"),
    }
    for key in results_list[0]["models"][names[0]]["attacks"] if names else []:
        metrics[f"{key}_paper"] = lambda m, key=key: _rate(m, key, "robust_paper")
        metrics[f"{key}_correct"] = lambda m, key=key: _rate(m, key, "robust_correct")
    out = {}
    for n in names:
        out[n] = {}
        for metric, get in metrics.items():
            values = [get(r["models"][n]) for r in results_list]
            if any(v is None for v in values):
                continue
            std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            out[n][metric] = {"mean": float(np.mean(values)), "std": std, "values": [float(v) for v in values]}
    return {"n_folds": len(results_list), "models": out}


# ----------------------------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    """Add the `evaluate` subcommand."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    doc = "Evaluate a model family: l1, IOU, accuracy, FGSM/PGD/Square/transfer robustness; write a report."
    p = subparsers.add_parser("evaluate", help=doc, description=doc, formatter_class=fmt)
    p.add_argument("family", help="a family folder: one model folder per k plus baseline/")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--split", default="test")
    p.add_argument("--shifted-split", default=None, help="a distribution-shifted split for Table 5")
    p.add_argument("--fmt", default="auto", help="dataset format (see topgap.data.open_dataset)")
    p.add_argument("--eps", type=parse_eps, default="1/255", help="Linf budget on [0, 1] images, e.g. 1/255, 8/255")
    p.add_argument("--pgd-steps", type=int, nargs="+", default=[40])
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    p.add_argument("--square-queries", type=int, default=200)
    p.add_argument("--attack-images", type=int, default=None, help="Square/transfer on the first N images (all)")
    p.add_argument("--cam-method", default="gradcam", choices=list(METHODS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--out", default=None, help="report folder (default FAMILY/eval-SPLIT)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    """Load the family, open the dataset, evaluate, write the report; return a short summary."""
    from ..checkpoint import load_family
    from ..data import open_dataset

    models = load_family(args.family, device=args.device)
    cfg = next(iter(models.values()))[1]
    dataset = open_dataset(args.data, args.split, input_size=cfg.input_size, fmt=args.fmt)
    for n, (_, c) in models.items():
        if list(c.class_names) != list(dataset.class_names):
            raise ValueError(f"model {n} was trained on classes {c.class_names} but {args.data} ({args.split}) has "
                             f"{dataset.class_names}; labels would not line up")
    shifted = (open_dataset(args.data, args.shifted_split, input_size=cfg.input_size, fmt=args.fmt)
               if args.shifted_split else None)
    results = evaluate_family(models, dataset, shifted=shifted, attacks=tuple(args.attacks), eps=args.eps,
                              pgd_steps=tuple(args.pgd_steps), square_queries=args.square_queries,
                              attack_images=args.attack_images, cam_method=args.cam_method,
                              batch_size=args.batch_size, max_images=args.max_images, device=args.device,
                              name=Path(args.data).name, split=args.split)
    if args.shifted_split:
        results["shifted"].update(dataset=Path(args.data).name, split=args.shifted_split)
    out = Path(args.out) if args.out else Path(args.family) / f"eval-{args.split}"
    paths = write_report(results, out, title=f"Top-GAP evaluation: {Path(args.family).name} on {Path(args.data).name}")
    return {"out": str(out), "files": [str(p) for p in paths], "n_images": results["n_images"],
            "models": {n: {"accuracy": m["clean"]["accuracy"], "l1": m["l1"], "iou": m["iou"],
                           "gradient_masking_suspected": m["gradient_masking_suspected"]}
                       for n, m in results["models"].items()}}
