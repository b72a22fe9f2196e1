"""The bias table with one command: shifted accuracy against the background-class agreement p (Table 5's idea).

For each p and seed: ``topgap synth`` (seeded, --bg-agreement p); ``topgap train`` of the baseline and Top-GAP at k
matched to the train split's mean object area in class-map pixels and at a mismatched k (factor --mismatch, capped
at half the map); a second ``topgap train`` of the FPN-only control (FPN head, plain GAP: k = h*w, lam = 0; Table 8's
"fpn" row); ``topgap evaluate`` of both on test with ``--shift-splits test_shifted,only_bg``. Then
``summary.json``, ``bias_table.md`` (mean +- std over seeds), ``shifted_vs_p.png`` and ``differences.png`` (each
seed's paired difference) in --work.

    python bench/bias_table.py --work runs/bias                 # p = 0.5 0.9 0.99, seeds 0 1 2 (~1.2 h on 2 cores)
    python bench/bias_table.py --work runs/bias --ps 0.9 --seeds 0
    python bench/bias_table.py --work runs/bias --table-only    # the table of what has run so far

The default recipe learns the shapes (chosen on val): ImageNet-pretrained EfficientNet-Lite0 cut after its
stride-16 stage (24x24 class maps at 96 px), 3 epochs, lam ramped over the first, no augmentation (a random crop can
cut the object out). From scratch (mobilenetv3_small_075, 10 epochs) every model learned the background only.

Every step is skipped when its output exists (synth.json, a trained model folder, results.json), so a killed run
continues where it stopped. Settings are the CLI's; choose them on the val split, never on test_shifted.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROLES = {"baseline": "baseline", "fpn_only": "FPN only (GAP, lam 0)", "topgap_matched": "Top-GAP, k matched",
         "topgap_mismatched": "Top-GAP, k mismatched"}
RECIPE = "--pretrained --augment none --warmup-epochs 0.5 --lam-warmup 1 --half"  # topgap train options of the table
SPLITS = {"clean": "test", "shifted": "test_shifted", "only_bg": "only_bg"}
COMPARISONS = [("topgap_matched", "baseline"), ("topgap_matched", "fpn_only"), ("topgap_mismatched", "baseline"),
               ("fpn_only", "baseline")]


def class_map_pixels(backbone: str, num_maps: int, fpn_channels: int, size: int, last_stage: int | None = None) -> int:
    """h*w of the Top-GAP class map for a size x size input."""
    import torch

    from topgap import TopGapNet

    net = TopGapNet(backbone, num_classes=2, k=None, num_maps=num_maps, fpn_channels=fpn_channels,
                    last_stage=last_stage).eval()
    with torch.no_grad():
        h, w = net.class_maps(torch.zeros(1, 3, size, size)).shape[-2:]
    return h * w


def ks_for(meta: dict, hw: int, mismatch: float) -> dict[str, int]:
    """k per role: matched = the train split's mean object area (a fraction of the image) * h*w, so that no test
    mask sets it; mismatched = `mismatch` times that, <= h*w / 2; the control pools all h*w."""
    area = meta["splits"]["train"]["object_pixels_mean"] / meta["size"] ** 2
    matched = max(1, round(area * hw))
    return {"topgap_matched": matched, "topgap_mismatched": max(1, min(hw // 2, round(mismatch * matched))),
            "fpn_only": hw}


def trained_ks(run: Path, ks: dict[str, int]) -> dict[str, int]:
    """The k the family of `run` was trained with (its train_args.json: matched, mismatched), else `ks`: a table
    reads what ran, even where the rule that picks k changed since."""
    args = run / "family" / "train_args.json"
    if not args.is_file():
        return ks
    matched, mismatched = json.loads(args.read_text())["k"]
    return ks | {"topgap_matched": int(matched), "topgap_mismatched": int(mismatched)}


def commands(args: argparse.Namespace, p: float, seed: int, run: Path, ks: dict[str, int] | None) -> dict[str, list]:
    """The CLI calls of one (p, seed): synth, then (once k is known) train, train the control, evaluate both."""
    topgap = [sys.executable, "-m", "topgap"]
    data = run / "data"
    out = {"synth": topgap + ["synth", str(data), "--seed", str(seed), "--bg-agreement", str(p), "--size",
                              str(args.size), "--n-train", str(args.n_train), "--n-val", str(args.n_val),
                              "--n-test", str(args.n_test), "--object-area", *map(str, args.object_area)]}
    if ks is None:
        return out
    train = topgap + ["train", "--data", str(data), "--backbone", args.backbone, "--fpn-channels",
                      str(args.fpn_channels), "--num-maps", str(args.num_maps), "--image-size", str(args.size),
                      "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                      "--seed", str(seed), "--workers", str(args.workers),
                      *(["--last-stage", str(args.last_stage)] if args.last_stage is not None else []),
                      *shlex.split(args.train_extra)]
    out["train"] = train + ["--out", str(run / "family"), "--baseline", "--k", str(ks["topgap_matched"]),
                            str(ks["topgap_mismatched"])]
    out["train_control"] = train + ["--out", str(run / "control"), "--k", str(ks["fpn_only"]), "--lam", "0"]
    for fam in ("family", "control"):
        out[f"evaluate_{fam}"] = topgap + [
            "evaluate", str(run / fam), "--data", str(data), "--split", "test",
            "--shift-splits", "test_shifted,only_bg", "--attacks", "fgsm", "--eps-curve", "none", "--faithfulness-images", "0",
            "--out", str(run / f"report-{fam}"),
            *shlex.split(args.eval_extra)]
    return out


def split_accuracy(results: dict, model: dict, split: str) -> float:
    """Accuracy of one model of a results.json on `split`: the test split, an extra split of --shift-splits
    (``model["shifts"][split]``), or the single --shifted-split of older reports."""
    if split == results.get("split"):
        return model["clean"]["accuracy"]
    if split in (model.get("shifts") or {}):
        return model["shifts"][split]["accuracy"]
    if (results.get("shifted") or {}).get("split") == split:
        return model["shifted"]["accuracy"]
    raise KeyError(f"no accuracy on {split} in the report; evaluate with --shift-splits test_shifted,only_bg")


def measure(run: Path, ks: dict[str, int]) -> dict[str, dict[str, float]]:
    """Role -> {clean, shifted, only_bg, iou, mass_in_mask, k, converged} from the two reports of one (p, seed)."""
    names = {"baseline": ("family", "baseline"), "topgap_matched": ("family", f"k{ks['topgap_matched']}"),
             "topgap_mismatched": ("family", f"k{ks['topgap_mismatched']}"),
             "fpn_only": ("control", f"k{ks['fpn_only']}-nol1")}  # lam 0: topgap.train.pooling_name adds -nol1
    out = {}
    for role, (fam, name) in names.items():
        results = json.loads((run / f"report-{fam}" / "results.json").read_text())
        m = results["models"][name]
        out[role] = {key: split_accuracy(results, m, split) for key, split in SPLITS.items()}
        # the relu protocol's maps: the post-processing older reports used for every map (unsuffixed keys)
        out[role] |= {"iou": m.get("iou_relu", m.get("iou")), "mass_in_mask": m.get("mass_in_mask_relu",
                                                                                     m.get("mass_in_mask")),
                      "k": m["k"], "converged": m.get("converged", True) is not False
                      and not (m.get("collapsed") or {}).get("flag")}  # a collapsed model is left out alike
    return out


def summarise(runs: list[dict]) -> dict:
    """{p: {role: {metric: [mean, std, n]}}} over seeds (std with ddof 1; 0 for one seed).

    A model whose training did not converge in a seed is left out of that seed (flagged, never averaged in).
    """
    table: dict = {}
    for r in runs:
        for role, metrics in r["metrics"].items():
            if not metrics.get("converged", True):
                continue
            for key, value in metrics.items():
                if key not in ("k", "converged") and value is not None:
                    table.setdefault(r["p"], {}).setdefault(role, {}).setdefault(key, []).append(value)
    from topgap.eval.stats import mean_std

    def cell(values: list[float]) -> list:
        m = mean_std(values, ddof=1)
        return [m["mean"], m["std"] or 0.0, m["n"]]

    return {p: {role: {key: cell(v) for key, v in metrics.items()} for role, metrics in roles.items()}
            for p, roles in sorted(table.items())}


def higher_is_better(metric: str) -> bool:
    """topgap's one rule (topgap.eval.stats.higher_is_better) for a column of the table: an accuracy column is
    named by its split (only_bg, without the object: lower is better)."""
    from topgap.eval.stats import higher_is_better as rule

    return rule(f"{SPLITS[metric]}_accuracy" if metric in SPLITS else metric)


def paired(runs: list[dict], a: str, b: str, metric: str, p: float) -> list[tuple[int, float]]:
    """(seed, a - b) of `metric` at `p` for each seed where both models converged and were measured."""
    out = []
    for r in runs:
        x, y = r["metrics"].get(a), r["metrics"].get(b)
        if r["p"] == p and x and y and x.get("converged", True) and y.get("converged", True) \
                and x[metric] is not None and y[metric] is not None:
            out.append((r["seed"], x[metric] - y[metric]))
    return out


def differences(runs: list[dict], metrics=("shifted", "only_bg", "clean", "iou")) -> list[dict]:
    """Paired by seed: each COMPARISONS pair's difference per p and metric, mean with a 95% Student-t interval.

    Seeds where either model did not converge are left out of that pair. Higher is better for every metric here
    except only_bg (accuracy without the object: lower means less reliance on the background).
    """
    from topgap.eval.stats import t_interval, verdict

    rows = []
    for p in sorted({r["p"] for r in runs}):
        for a, b in COMPARISONS:
            for metric in metrics:
                ci = t_interval([d for _, d in paired(runs, a, b, metric, p)])
                rows.append({"p": p, "model": a, "reference": b, "metric": metric, **ci,
                             "verdict": verdict(ci, higher_is_better=higher_is_better(metric))})
    return rows


def markdown(summary: dict) -> str:
    """Mean ± std per p and model; the last column counts the seeds (std is 0 for one seed: no spread measured)."""
    cols = ["clean", "shifted", "only_bg", "iou", "mass_in_mask"]
    lines = ["| p | model | " + " | ".join(cols) + " | seeds |", "|---|---|" + "---|" * (len(cols) + 1)]
    for p, roles in summary.items():
        for role, label in ROLES.items():
            m = roles.get(role, {})
            cells = [f"{m[c][0]:.3f} ± {m[c][1]:.3f}" if c in m else "" for c in cols]
            lines.append(f"| {p} | {label} | " + " | ".join(cells) + f" | {m['clean'][2] if m else 0} |")
    return "\n".join(lines) + "\n\nMean ± std over the seeds of each row (data and training seeded alike).\n"


def markdown_differences(rows: list[dict]) -> str:
    """The paired differences as a table: p, comparison, metric, mean [95% interval], verdict, seeds."""
    lines = ["| p | comparison | metric | difference [95% CI] | verdict | seeds |", "|---|---|---|---|---|---|"]
    for r in rows:
        ci = f"{r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]" if r["low"] is not None else (
            f"{r['diff']:+.3f}" if r["diff"] is not None else "–")
        lines.append(f"| {r['p']} | {ROLES[r['model']]} − {ROLES[r['reference']]} | {r['metric']} | {ci} | "
                     f"{r['verdict']} | {r['n']} |")
    return "\n".join(lines) + ("\n\nPaired by seed, Student-t over seeds; only_bg: lower is better (less "
                               "reliance on the background alone).\n")


def plot(summary: dict, path: Path) -> Path:
    """Shifted accuracy against p, one line per model, mean +- std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from topgap.io import atomic_write

    ps = sorted(summary)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (role, label) in enumerate(ROLES.items()):
        pts = [(p, *summary[p][role]["shifted"][:2]) for p in ps if role in summary[p]]
        if pts:
            x, mean, std = map(np.array, zip(*pts))
            ax.errorbar(x + (i - 1.5) * 0.004, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.axhline(0.25, color="grey", lw=0.8, ls=":", label="chance (4 classes)")
    ax.set_xlabel("background-class agreement p in training")
    ax.set_ylabel("accuracy on test_shifted")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_differences(runs: list[dict], rows: list[dict], path: Path, metrics=("shifted", "only_bg")) -> Path:
    """One panel per metric: every seed's paired difference (a dot) and the mean with its 95% interval (a bar),
    per p and comparison: how much of a mean difference one seed carries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from topgap.io import atomic_write

    ps = sorted({r["p"] for r in runs})
    ci = {(r["p"], r["model"], r["reference"], r["metric"]): r for r in rows}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (a, b) in enumerate(COMPARISONS):
            dx = (i - (len(COMPARISONS) - 1) / 2) * 0.18
            for j, p in enumerate(ps):
                d = [v for _, v in paired(runs, a, b, metric, p)]
                ax.scatter([j + dx] * len(d), d, s=10, alpha=0.6, color=f"C{i}",
                           label=f"{ROLES[a]} − {ROLES[b]}" if j == 0 else None)
                c = ci.get((p, a, b, metric))
                if c and c["low"] is not None:
                    ax.errorbar(j + dx + 0.05, c["diff"], yerr=[[c["diff"] - c["low"]], [c["high"] - c["diff"]]],
                                color=f"C{i}", marker="_", capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(ps)), [f"p = {p}" for p in ps])
        better = "(higher)" if higher_is_better(metric) else "(lower: less background)"
        ax.set_ylabel(f"Δ {metric} accuracy {better}")
    axes[0][0].legend(fontsize=6, loc="lower left")
    fig.suptitle("Paired by seed: dots are seeds, bars the mean with its 95% t interval", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def _call(cmd: list[str], done: bool) -> None:
    print(("# done: " if done else "$ ") + shlex.join(["topgap", *cmd[3:]]), flush=True)
    if not done:
        subprocess.run(cmd, check=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/bias", help="folder for data, families, reports and the table")
    p.add_argument("--ps", type=float, nargs="+", default=[0.5, 0.9, 0.99], help="background-class agreements")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    g = p.add_argument_group("data (topgap synth)")
    g.add_argument("--size", type=int, default=96)
    g.add_argument("--n-train", type=int, default=1200)
    g.add_argument("--n-val", type=int, default=300)
    g.add_argument("--n-test", type=int, default=300)
    g.add_argument("--object-area", type=float, nargs=2, default=[0.04, 0.10], metavar=("MIN", "MAX"))
    g = p.add_argument_group("models (topgap train)")
    g.add_argument("--backbone", default="tf_efficientnet_lite0")
    g.add_argument("--fpn-channels", type=int, default=64)
    g.add_argument("--num-maps", type=int, default=3)
    g.add_argument("--last-stage", type=int, default=3, help="cut the backbones after this feature stage (topgap train)")
    g.add_argument("--mismatch", type=float, default=8.0, help="mismatched k = this times the matched k")
    g.add_argument("--epochs", type=int, default=3)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=0.02)
    g.add_argument("--workers", type=int, default=0)
    g.add_argument("--train-extra", default=RECIPE, help="more topgap train options, one string")
    g.add_argument("--eval-extra", default="", help="more topgap evaluate options, one string")
    p.add_argument("--table-only", action="store_true", help="run nothing: the table, differences and plot of the "
                                                             "(p, seed) runs already evaluated")
    return p


def main() -> None:
    args = build_parser().parse_args()
    work, t0 = Path(args.work), time.perf_counter()
    hw = class_map_pixels(args.backbone, args.num_maps, args.fpn_channels, args.size, args.last_stage)
    runs = []
    for prob in args.ps:
        for seed in args.seeds:
            run = work / f"p{prob}-seed{seed}"
            evaluated = all((run / f"report-{f}" / "results.json").is_file() for f in ("family", "control"))
            if args.table_only and not evaluated:
                print(f"# not run yet, left out of the table: p = {prob}, seed {seed}", flush=True)
                continue
            if not args.table_only:
                _call(commands(args, prob, seed, run, None)["synth"], (run / "data" / "synth.json").is_file())
            ks = trained_ks(run, ks_for(json.loads((run / "data" / "synth.json").read_text()), hw, args.mismatch))
            if not args.table_only:
                cmds = commands(args, prob, seed, run, ks)
                _call(cmds["train"], all((run / "family" / n / "model.safetensors").is_file() for n in
                                         ("baseline", f"k{ks['topgap_matched']}", f"k{ks['topgap_mismatched']}")))
                _call(cmds["train_control"], (run / "control" / f"k{hw}-nol1" / "model.safetensors").is_file())
                for fam in ("family", "control"):
                    _call(cmds[f"evaluate_{fam}"], (run / f"report-{fam}" / "results.json").is_file())
            runs.append({"p": prob, "seed": seed, "ks": ks, "metrics": measure(run, ks)})
    if not runs:
        sys.exit(f"no (p, seed) run in {work} has both reports yet; run without --table-only")
    summary, diffs = summarise(runs), differences(runs)
    from topgap.io import atomic_write, write_json

    write_json(work / "summary.json", {"class_map_pixels": hw, "args": vars(args), "runs": runs,
                                       "summary": {str(k): v for k, v in summary.items()}, "differences": diffs})
    flagged = [f"p = {r['p']}, seed {r['seed']}: {ROLES[role]}" for r in runs
               for role, m in r["metrics"].items() if not m.get("converged", True)]
    table = markdown(summary) + "\n" + markdown_differences(diffs) + (
        "\nDid not converge (left out of the means and differences): " + "; ".join(flagged) + "\n" if flagged else "")
    atomic_write(work / "bias_table.md", lambda tmp: Path(tmp).write_text(table))
    print(table, f"plot: {plot(summary, work / 'shifted_vs_p.png')}",
          f"plot: {plot_differences(runs, diffs, work / 'differences.png')}",
          f"{(time.perf_counter() - t0) / 60:.1f} min", sep="\n")


if __name__ == "__main__":
    main()
