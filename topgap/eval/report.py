"""Reports of `topgap evaluate` results: results.json, results.md laid out like the paper's tables, plots/.

Nothing is computed here beyond formatting: every number, interval and verdict comes from the results
dict of :func:`topgap.eval.evaluate.evaluate_family`. Map metrics are shown under both CAM protocols side by side
("paper", "relu"); results written before the protocols show their one post-processing.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

from ..io import atomic_write, write_json
from .claims import render_claims
from .stats import higher_is_better

__all__ = ["markdown_report", "write_report", "write_cv_report"]

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


def _ci(c: dict | None) -> str:
    """'+0.012 [-0.010, +0.034] no clear difference'."""
    if not c or c.get("diff") is None:
        return "–"
    return f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] {c['verdict']}"


def _rate(m: dict, key: str, definition: str):
    a = m["attacks"].get(key)
    return a[f"{definition}_rate"] if a else None


def _parts(results: dict) -> tuple[str | None, dict]:
    models = results["models"]
    base = next((n for n, m in models.items() if m["kind"] == "baseline"), None)
    return base, {n: m for n, m in models.items() if m["kind"] == "topgap"}


def _collapsed(m: dict) -> bool:
    return bool((m.get("collapsed") or {}).get("flag"))


def _name(n: str, m: dict) -> str:
    return n + " ⚠ not converged" * (m.get("converged") is False) + " ⚠ collapsed" * _collapsed(m)


def _protocols(results: dict) -> list[tuple[str, str]]:
    """(label, key suffix) per CAM protocol: ("paper", "_paper"), ("relu", "_relu"); for results written before the
    protocols, their one post-processing with unsuffixed keys."""
    if results.get("protocols"):
        return [(p, f"_{p}") for p in results["protocols"]]
    return [(results.get("postprocessing") or "?", "")]


def _cmp(m: dict, ref: str | None, metric: str) -> dict | None:
    return ((m.get("comparisons") or {}).get(ref) or {}).get(metric) if ref else None


def _settings_text(results: dict) -> str:
    """The report's first paragraph: data, CAM target and protocols, attacks, samples, intervals."""
    f, samples = results["faithfulness"], results.get("samples") or {}
    if results.get("protocols"):
        target = {"label": "the ground-truth class (GT-known)", "predicted": "the predicted class"}[
            results["cam_target"]]
        maps = (f"Maps for {target}, under both CAM protocols side by side: "
                + "; ".join(f"**{p}**: {text}" for p, text in results["protocols"].items()) + ".")
    else:
        maps = (f"Maps for the predicted class, post-processing **{results['postprocessing']}** for every map (own "
                f"CAM and {results['cam_method']} alike).")
    where = ("a class-stratified sample of {} images (seed {}; ids in results.json, samples)" if samples
             else "the first {} images{}")
    seed = (samples.get("attacks") or samples.get("images") or {}).get("seed", "")
    road = (f"ROAD ({f['imputer']} imputation, percentiles {f['percentiles']}) on {f['images']} of them"
            + (f" ({f['map']})" if f.get("map") else "") + ".")
    sanity = samples.get("sanity")
    return (f"Dataset **{results['dataset']}**" + (f" (split {results['split']})" if results["split"] else "")
            + f", {results['n_images']} images. {maps} l1 at the class-map resolution "
            f"{'x'.join(map(str, results['l1_resolution']))}, localisation at "
            f"{'x'.join(map(str, results['localisation_resolution']))}. "
            f"Attacks at eps = {results['eps']:.5g} ({results['eps'] * 255:.3g}/255); PGD step rule "
            f"**{results['pgd_rule']}**; Square with {results['square_queries']} queries; transfer surrogate: "
            f"{results['surrogate'] or 'none'}; every attack ({', '.join(results['attacks']) or 'none'}) and the eps "
            f"curve on {where.format(results['attack_images'], seed)}. {road} "
            + (f"Sanity check on {sanity['n']} of them. " if sanity else "")
            + f"Intervals: paired bootstrap, {results['bootstrap']['samples']} resamples, 95%; a verdict says better "
            "or worse only when the interval excludes 0.")


def _map_table(results: dict, key: str, label: str) -> str:
    """One map metric of every model under each protocol side by side, each with its difference from the baseline,
    and GradCAM on the Top-GAP models."""
    base, ours = _parts(results)
    b = results["models"].get(base) if base else None
    protocols = _protocols(results)
    arrow = "↑" if higher_is_better(key) else "↓"
    header = ["model", "k", "k/(h*w)"]
    for p, _ in protocols:
        header += [f"{label} {arrow} {p}", f"Δ vs baseline, {p} [95% CI]"]
    rows = []
    for n, m in ([(base, b)] if b else []) + list(ours.items()):
        row = [_name(n, m), m["k"], m["k_fraction"]]
        for _, s in protocols:
            row += [m.get(key + s), _ci(_cmp(m, base, key + s)) if m is not b else ""]
        rows.append(row + [m.get(f"{key}_gradcam") if m["kind"] == "topgap" else None])
    return _table(header + [f"{label} GradCAM on this model"], rows)


def _sanity_lines(results: dict) -> list[str]:
    """Cascading randomisation: rank correlation with the original maps once the head is random, per model."""
    rows = []
    for n, m in results["models"].items():
        for p, s in (m.get("sanity") or {}).items():
            for kind in ("own", "gradcam"):
                stage = (s.get(kind) or {}).get("head")
                if stage:
                    rows.append([_name(n, m), p, "own CAM" if kind == "own" else results["cam_method"],
                                 stage["spearman_abs"], stage["spearman"], stage["ssim"], s["flagged"][kind]])
    if not rows:
        return []
    first = next(s for m in results["models"].values() for s in (m.get("sanity") or {}).values())
    return ["## Sanity: cascading randomisation (Adebayo et al., 2018)", "",
            f"The maps of {first['n']} images after re-initialising the head, against the original maps: Spearman "
            "rank correlation of |M| and of M (raw maps) and SSIM (after the protocol's post-processing). "
            f"{first['threshold']['rule']}: the map survives random weights and does not explain the model.", "",
            _table(["model", "protocol", "map", "ρ(|M|) ↓", "ρ(M)", "SSIM", "flagged"], rows), ""]


def markdown_report(results: dict, title: str = "Top-GAP evaluation", claims: bool = True) -> str:
    """The results as Markdown: settings, the claims (:func:`topgap.eval.claims.render_claims`; `claims` False
    leaves them to the caller, as a card does), then tables laid out like Tables 2, 3, 5, 7."""
    base, ours = _parts(results)
    b = results["models"].get(base) if base else None
    pgd_keys = [f"pgd{s}" for s in results["pgd_steps"]] if "pgd" in results["attacks"] else []
    attack_keys = (["fgsm"] if "fgsm" in results["attacks"] else []) + pgd_keys + [
        k for k in ("autoattack", "square", "transfer") if k in results["attacks"]]
    label = {"fgsm": "FGSM", "autoattack": "AutoAttack", "square": "Square", "transfer": "Transfer",
             **{k: f"PGD-{k[3:]}" for k in pgd_keys}}
    out = [f"# {title}", "", _settings_text(results), ""]
    flagged = [f"- {n}: {m['convergence']}" for n, m in results["models"].items() if m.get("converged") is False]
    if flagged:
        out += ["## Not converged (no verdicts)", "", *flagged, ""]
    collapsed = [f"- {n}: {m['collapsed']['reason']}" for n, m in results["models"].items() if _collapsed(m)]
    if collapsed:
        out += ["## Collapsed predictions (no verdicts, never averaged in)", "", *collapsed, ""]
    if results.get("selection"):
        s = results["selection"]
        out += [f"## Model selection on {s['dataset']}/{s['split']}", "", f"Rule: {s.get('rule', 'per criterion')}.",
                "", *(f"- by {c}: **{v['model']}** ({_fmt(v['value'])})" for c, v in s["by"].items()), ""]
    if claims:
        out += ["## Verdicts against the baseline", "", render_claims(results), ""]
    out += ["## Table 2: l1 sparsity of the CAM (lower is sparser)", "",
            "The baseline's row is GradCAM" + " (the same under every protocol)." * bool(results.get("protocols")), "",
            _map_table(results, "l1", "l1"), ""]

    header, rows = ["model", "k", "clean acc"], []
    for key in attack_keys:
        header += [f"{label[key]} correct ↑", "Δ vs baseline [95% CI]", f"{label[key]} unchanged (paper)"]
    for n, m in ([(base, b)] if b else []) + list(ours.items()):
        row = [_name(n, m), m["k"], m["clean"]["accuracy"]]
        for key in attack_keys:
            row += [_rate(m, key, "robust_correct"), _ci(_cmp(m, base, f"{key}_correct")) if m is not b else "",
                    _rate(m, key, "robust_paper")]
        rows.append(row)
    out += ["## Table 3: accuracy under attack", "",
            "*correct* (headline): the attacked image is still classified correctly. *unchanged* (the paper's "
            "definition, section 4.2): the prediction equals the clean prediction, whether right or wrong.", "",
            _table(header, rows), ""]

    if results.get("shifts"):
        header, rows = ["model", "k"], []
        for s in results["shifts"]:
            arrow = "↑" if higher_is_better(f"{s}_accuracy") else "↓ (background alone)"
            header += [f"{s} acc {arrow}", "Δ vs baseline [95% CI]", *(f"{s} IOU {p}" for p, _ in _protocols(results))]
        for n, m in ([(base, b)] if b else []) + list(ours.items()):
            row = [_name(n, m), m["k"]]
            for s in results["shifts"]:
                v = m["shifts"].get(s, {})
                row += [v.get("accuracy"), _ci(_cmp(m, base, f"{s}_accuracy")) if m is not b else "",
                        *(v.get(f"iou{sfx}") for _, sfx in _protocols(results))]
            rows.append(row)
        out += ["## Table 5: accuracy under distribution shift", "", _table(header, rows), ""]
        if any(m.get("bg_gap") is not None for m in results["models"].values()):
            rows = [[_name(n, m), m["k"], m.get("bg_gap"), _ci(_cmp(m, base, "bg_gap")) if m is not b else ""]
                    for n, m in ([(base, b)] if b else []) + list(ours.items())]
            out += ["## Backgrounds: BG-Gap (Xiao et al., ICLR 2021; lower relies less on the background)", "",
                    "Accuracy on Mixed-Same (the object on a background of its own class) minus Mixed-Rand (on a "
                    "random image's background), the same objects.", "",
                    _table(["model", "k", "BG-Gap ↓", "Δ vs baseline [95% CI]"], rows), ""]

    if any(m["n_masks"] for m in results["models"].values()):
        out += ["## Table 7: localisation against the masks", "",
                "IOU: best threshold per image (the paper's); mass in mask: share of the map's mass on the object; "
                "PxAP and MaxBoxAccV2 (Choe et al., 2020; boxes tight around each mask's object): one threshold "
                "for the whole split. The baseline's row is GradCAM.", ""]
        for key, name in (("iou", "IOU"), ("mass_in_mask", "mass in mask"), ("pxap", "PxAP"),
                          ("maxboxacc_v2", "MaxBoxAccV2")):
            out += [f"### {name} ({results['models'][next(iter(results['models']))]['n_masks']} masks)", "",
                    _map_table(results, key, name), ""]

    if any(m["n_road"] for m in results["models"].values()):
        rows = [[_name(n, m), m["k"], m["n_road"], m["road"], _ci(_cmp(m, base, "road")) if m is not b else "",
                 m["road_gradcam"] if m["kind"] == "topgap" else None]
                for n, m in ([(base, b)] if b else []) + list(ours.items())]
        out += ["## Faithfulness: ROAD (higher is more faithful)", "",
                *([f"Own CAM: {results['faithfulness']['map']}.", ""] if results["faithfulness"].get("map") else []),
                _table(["model", "k", "images", "ROAD ↑", "Δ vs baseline [95% CI]", "ROAD GradCAM on this model"],
                       rows), ""]
    out += _sanity_lines(results)

    if any(m["eps_curve"] for m in results["models"].values()):
        eps = results["eps_curve"]
        rows = [[_name(n, m)] + [c["accuracy"] for c in m["eps_curve"]] + [m["eps_curve_reaches_zero"]]
                for n, m in results["models"].items()]
        pgd = results.get("eps_curve_pgd")  # absent in reports written before the curve had its own step rule
        how = f"PGD-{pgd['steps']}, step {pgd['rule']}" if pgd else "PGD"
        out += [f"## Accuracy against eps ({how}; an image counts as robust at eps when it is correct clean and "
                "under every budget up to eps)", "",
                _table(["model", *(f"{e * 255:.3g}/255" for e in eps), "reaches 0?"], rows),
                "", "A curve that does not reach 0 at the largest budget is flagged as gradient masking.", ""]

    header = ["model", "kind", "k", "cam size", "converged", "collapsed (majority share)", "clean acc",
              "white-box correct", "black-box correct", "gradient masking?"]
    rows = [[n, m["kind"], m["k"], "x".join(map(str, m["cam_size"])) if m["cam_size"] else None, m["converged"],
             _collapse_cell(m), m["clean"]["accuracy"], m["white_box_rate"], m["black_box_rate"],
             m["gradient_masking_suspected"]] for n, m in results["models"].items()]
    out += ["## All models", "",
            "White-/black-box: share of the attack images still correct under every white-box (FGSM, PGD, AutoAttack) "
            "/ every black-box (Square, transfer) attack; gradient masking is suspected when white-box exceeds "
            "black-box by more than 0.1, or when accuracy does not reach 0 as eps grows. Collapsed: one class for "
            "more than 90% of the images, or clean accuracy at most 5 points above chance.", "", _table(header, rows),
            ""]
    return "\n".join(out)


def _collapse_cell(m: dict) -> str | None:
    c = m.get("collapsed")
    if not c or c.get("majority_share") is None:
        return None
    return f"{'yes' if c['flag'] else 'no'} ({c['majority_share']:.2f})"


@contextmanager
def _figure(path: Path, title: str, xlabel: str, ylabel: str, legend: str = "small", ncol: int = 1):
    """A matplotlib axis to draw on; labelled, saved atomically to `path` as PNG and closed afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend, ncol=ncol)
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def _plot(path: Path, results: dict, series: list[tuple[str, callable]], ylabel: str, title: str) -> Path:
    base, ours = _parts(results)
    b = results["models"].get(base) if base else None
    points = sorted(((m["k_fraction"], m) for m in ours.values()
                     if m["k_fraction"] is not None and m.get("converged") is not False and not _collapsed(m)),
                    key=lambda p: p[0])
    with _figure(path, title, "k / (h*w)", ylabel) as ax:
        for i, (label, get) in enumerate(series):
            colour = f"C{i}"
            ax.plot([p for p, _ in points], [_nan(get(m)) for _, m in points], "o-", color=colour, label=label)
            if b is not None and get(b) is not None:
                ax.axhline(get(b), color=colour, linestyle="--", label=f"{label} (baseline)")
        if points:
            ax.set_xscale("log")
    return path


def _nan(v):
    return float("nan") if v is None else v


def _plot_eps_curve(path: Path, results: dict) -> Path:
    with _figure(path, "Accuracy against the attack budget", "eps (x/255)", "accuracy under PGD ↑", "x-small", 2) as ax:
        for i, (name, m) in enumerate(results["models"].items()):
            c = m["eps_curve"]
            ax.plot([p["eps"] * 255 for p in c], [_nan(p["accuracy"]) for p in c], "o-", color=f"C{i}", label=name)
        ax.set_xscale("log", base=2)
    return path


def _plot_pgd_steps(path: Path, results: dict) -> Path:
    """Accuracy of every model against the number of PGD steps, correct and unchanged (like Figure A2)."""
    steps = sorted(results["pgd_steps"])
    title = f"PGD steps, eps = {results['eps'] * 255:.3g}/255 (Figure A2)"
    with _figure(path, title, "PGD steps", "accuracy under attack ↑", "x-small", 2) as ax:
        for i, (name, m) in enumerate(results["models"].items()):
            for definition, style in (("robust_correct", "o-"), ("robust_paper", "s--")):
                ax.plot(steps, [_nan(_rate(m, f"pgd{s}", definition)) for s in steps], style, color=f"C{i}",
                        label=f"{name} ({'correct' if definition == 'robust_correct' else 'unchanged'})")
    return path


def write_report(results: dict, out_dir: str | Path, title: str = "Top-GAP evaluation") -> list[Path]:
    """Write results.json, results.md and plots/{l1,iou,accuracy,robustness[,eps_curve,pgd_steps]}.png, atomically.

    Plots show each metric (map metrics under each protocol) against k/(h*w) for the converged, not collapsed
    Top-GAP models, the baseline as a dashed line (like Figure 3); robustness is accuracy under attack (correct).
    """
    out = Path(out_dir)
    paths = [write_json(out / "results.json", results)]
    text = markdown_report(results, title)
    paths.append(atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(text)))
    plots = out / "plots"
    per_protocol = lambda key, name: [(f"{name} {p}", lambda m, k=key + s: m.get(k))  # noqa: E731
                                      for p, s in _protocols(results)]
    paths.append(_plot(plots / "l1.png", results, per_protocol("l1", "l1 (own CAM) / GradCAM (baseline),"),
                       "l1 of the CAM ↓", "Sparsity (section 4.1)"))
    paths.append(_plot(plots / "iou.png", results, per_protocol("iou", "IOU") + per_protocol("pxap", "PxAP"),
                       "localisation ↑", "Localisation (section 4.4)"))
    acc = [("clean", lambda m: m["clean"]["accuracy"])]
    acc += [(s, lambda m, s=s: (m["shifts"].get(s) or {}).get("accuracy")) for s in results.get("shifts") or {}]
    paths.append(_plot(plots / "accuracy.png", results, acc, "accuracy ↑", "Accuracy (Tables 3, 5)"))
    keys = list(next(iter(results["models"].values()))["attacks"])
    if keys:
        rob = [(k, lambda m, k=k: _rate(m, k, "robust_correct")) for k in keys]
        paths.append(_plot(plots / "robustness.png", results, rob, "accuracy under attack ↑",
                           f"Robustness, eps = {results['eps'] * 255:.3g}/255 (section 4.2)"))
    if any(m["eps_curve"] for m in results["models"].values()):
        paths.append(_plot_eps_curve(plots / "eps_curve.png", results))
    if "pgd" in results["attacks"] and len(results["pgd_steps"]) > 1:
        paths.append(_plot_pgd_steps(plots / "pgd_steps.png", results))
    return paths


def write_cv_report(agg: dict, per_fold: list[dict], out_dir: str | Path, title: str) -> list[Path]:
    """cv.json (mean ± std over folds of every metric, and each fold's results) and cv.md."""
    out = Path(out_dir)
    paths = [write_json(out / "cv.json", {"aggregate": agg, "folds": per_fold})]
    metrics = list(dict.fromkeys(k for m in agg["models"].values() for k in m))
    rows = [[n] + [f"{v['mean']:.3f} ± {v['std']:.3f}" if (v := m.get(k)) else "–" for k in metrics]
            for n, m in agg["models"].items()]
    text = f"# {title}\n\nMean ± std over {agg['n_folds']} folds, each fold's models on its held-out images.\n\n"
    text += _table(["model", *metrics], rows) + "\n"
    paths.append(atomic_write(out / "cv.md", lambda tmp: Path(tmp).write_text(text)))
    return paths
