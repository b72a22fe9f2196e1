"""`topgap seeds`: one recipe trained with several seeds, its evaluation reports combined into mean ± std.

Each report is the results.json that ``topgap evaluate`` wrote for one seed's family, all on the same
dataset and split. Per model and metric (:func:`topgap.eval.evaluate.flat_metrics`): mean, sample std
(ddof=1) and the values over seeds. Per model other than the reference: the difference model − reference
within each seed, its mean and a 95% Student-t interval over seeds (:func:`topgap.eval.stats.t_interval`),
with a verdict only when the interval excludes 0 ("descriptive" when no report chose a k on validation
data). A model whose training did not converge in a seed (``converged: false``) or whose predictions collapsed
(``collapsed.flag``) is left out of that seed, and the seed is listed under ``excluded``. Reports are paired only
when every sample they were computed on (``samples``: the images, attack, ROAD and sanity subsets) holds the same
ids (:func:`topgap.eval.subsets.check_same_sample`).

Example::

    topgap seeds reports/pets-seed0 reports/pets-seed1 reports/pets-seed2 --out reports/pets-seeds --title "Pets"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io import atomic_write, write_json
from .evaluate import NO_SELECTION, flat_metrics
from .report import _table
from .stats import higher_is_better, over_runs, t_interval, verdict
from .subsets import check_same_sample

__all__ = ["combine_seeds", "seeds_markdown", "forest_rows", "plot_differences", "write_seeds_report", "read_reports",
           "register", "run"]

KEY_METRICS = ("accuracy", "l1", "iou", "mass_in_mask", "pxap")  # map metrics also per protocol: "l1_paper", ...


ZERO_SPREAD = "no verdict (zero spread)"  # the same nonzero difference in every seed: see _seed_verdict


def _seed_verdict(ci: dict, metric: str) -> str:
    """:func:`verdict` of the Student-t interval over seeds, except that a nonzero difference equal in every seed
    (std 0 up to rounding, e.g. one image of 60 in each) gets :data:`ZERO_SPREAD`: its zero-width interval says
    nothing about how much another seed would vary, so it is not read as better or worse."""
    if ci.get("low") is not None and ci["high"] - ci["low"] < 1e-9 and abs(ci["diff"]) >= 1e-9:  # float rounding
        return ZERO_SPREAD
    return verdict(ci, higher_is_better(metric))


def _check_same_setup(results_list: list[dict]) -> list[str]:
    """The model names shared by every report; ValueError when the datasets, splits, shifts or models differ."""
    if len(results_list) < 2:
        raise ValueError(f"at least 2 seeds are needed for a std; got {len(results_list)} report(s)")
    first = results_list[0]
    for i, r in enumerate(results_list[1:], 1):
        for key in ("dataset", "split", "cam_target"):
            if r.get(key) != first.get(key):
                raise ValueError(f"seed {i} was evaluated on {key} {r.get(key)!r} but seed 0 on {first.get(key)!r}; "
                                 "combine reports of one dataset and split only")
        if sorted(r.get("shifts") or {}) != sorted(first.get("shifts") or {}):
            raise ValueError(f"seed {i} has shift splits {sorted(r.get('shifts') or {})} but seed 0 has "
                             f"{sorted(first.get('shifts') or {})}; evaluate every seed with the same --shift-splits")
        _check_samples(first.get("samples") or {}, r.get("samples") or {}, i)
    names = list(first["models"])
    for i, r in enumerate(results_list):
        for n in dict.fromkeys([*names, *r["models"]]):
            if n not in r["models"]:
                raise ValueError(f"model {n!r} is missing from seed {i}'s report; every seed needs the same models")
    return names


def _check_samples(first: dict, other: dict, i: int) -> None:
    """ValueError unless seed i's report was computed on the same samples (ids, in order) as seed 0's."""
    if sorted(first) != sorted(other):
        raise ValueError(f"seed {i} records samples {sorted(other) or 'none'} but seed 0 {sorted(first) or 'none'}; "
                         "evaluate every seed with the same options and version of topgap evaluate")
    for purpose in first:
        try:
            check_same_sample(first[purpose], other[purpose])
        except ValueError as e:
            raise ValueError(f"seed {i} against seed 0: {e}") from None


def _exclusion(m: dict) -> str | None:
    """Why a model's entry of one seed is left out: not converged, or collapsed predictions; None to keep it."""
    if m.get("converged") is False:
        return m.get("convergence") or "not converged"
    collapsed = m.get("collapsed") or {}
    return f"collapsed: {collapsed.get('reason')}" if collapsed.get("flag") else None


def combine_seeds(results_list: list[dict], reference: str = "baseline") -> dict:
    """Combine the results of one recipe trained with several seeds (one results dict per seed, seed i = index i).

    Returns {"dataset", "split", "shifts", "n_seeds", "n_images": [per seed], "cam_target", "protocols",
    "selected": [the model each seed's report chose on validation data, or None], "reference",
    "models": {name: {"kind", "k", "seeds": [kept seed indices], "metrics": {metric: {"mean", "std", "n", "values"}},
    "excluded": [{"seed_index", "reason"}], "flagged": bool}},
    "differences": {name: {metric: {"diff", "low", "high", "n", "level", "values", "seeds", "verdict"}}}}.
    """
    names = _check_same_setup(results_list)
    if reference not in names:
        raise ValueError(f"reference model {reference!r} is not in the reports; choose one of {', '.join(names)}")
    kept, models = {}, {}
    for n in names:
        entries = [r["models"][n] for r in results_list]
        excluded = [{"seed_index": i, "reason": why} for i, m in enumerate(entries) if (why := _exclusion(m))]
        kept[n] = [i for i in range(len(entries)) if i not in {e["seed_index"] for e in excluded}]
        models[n] = {"kind": entries[0]["kind"], "k": entries[0]["k"], "seeds": kept[n],
                     **{key: entries[0][key] for key in ("pooling", "pooling_params") if key in entries[0]},
                     "metrics": over_runs([flat_metrics(entries[i]) for i in kept[n]], ddof=1),
                     "excluded": excluded, "flagged": bool(excluded)}
    chosen = [[v["model"] for v in ((r.get("selection") or {}).get("by") or {}).values()] for r in results_list]
    descriptive = all("selection" in r and r["selection"] is None for r in results_list)
    differences = {}
    for n in names:
        if n == reference:
            continue
        seeds = [i for i in kept[n] if i in kept[reference]]
        flats = [(flat_metrics(results_list[i]["models"][n]), flat_metrics(results_list[i]["models"][reference]))
                 for i in seeds]
        differences[n] = {}
        for metric in flats[0][0] if flats else {}:
            pairs = [(a.get(metric), b.get(metric)) for a, b in flats]
            if any(a is None or b is None for a, b in pairs):
                continue
            diffs = [a - b for a, b in pairs]
            ci = t_interval(diffs)
            differences[n][metric] = {**ci, "values": diffs, "seeds": seeds,
                                      "verdict": NO_SELECTION if descriptive else _seed_verdict(ci, metric)}
    first = results_list[0]
    return {"dataset": first["dataset"], "split": first["split"], "shifts": list(first.get("shifts") or {}),
            "n_seeds": len(results_list), "n_images": [r["n_images"] for r in results_list],
            "cam_target": first.get("cam_target"), "protocols": first.get("protocols"),
            "selected": [c[0] if len(c) == 1 else None for c in chosen], "reference": reference, "models": models,
            "differences": differences}


def _key_metrics(combined: dict) -> list[str]:
    """accuracy, l1, iou, mass in mask, PxAP (each per protocol), then shift accuracies, bg_gap and attack correct
    rates when present."""
    present = {k for m in combined["models"].values() for k in m["metrics"]}
    key = [k + s for k in KEY_METRICS for s in ("", "_paper", "_relu")]
    extra = [f"{s}_accuracy" for s in combined["shifts"]] + ["bg_gap"]
    extra += sorted(k for k in present if k.endswith("_correct"))
    return [k for k in (*key, *extra) if k in present]


def _mean_std(v: dict | None) -> str:
    if not v or v["mean"] is None:
        return "–"
    return f"{v['mean']:.3f} ± {v['std']:.3f}" if v["std"] is not None else f"{v['mean']:.3f} (one seed)"


def _difference_table(combined: dict, metrics: list[str], arrow: dict[str, str]) -> list[str]:
    """Model − reference per metric: mean over seeds, 95% Student-t interval, verdict."""
    ref, rows = combined["reference"], []
    for n, diffs in combined["differences"].items():
        for k in metrics:
            c = diffs.get(k)
            if c is not None:
                interval = "–" if c["low"] is None else f"[{c['low']:+.3f}, {c['high']:+.3f}]"
                rows.append([n, f"{k} {arrow[k]}", c["n"], f"{c['diff']:+.3f}", interval, c["verdict"]])
    return [f"Model − {ref} within each seed: mean over seeds and a 95% Student-t interval (df = seeds − 1); "
            "a verdict says better or worse only when the interval excludes 0.", "",
            _table(["model", "metric", "seeds", f"mean diff vs {ref}", "95% interval", "verdict"], rows), ""]


def seeds_markdown(combined: dict, differences: bool = True) -> list[str]:
    """The two tables (model × key metric as mean ± std; differences vs the reference) and the excluded seeds;
    `differences` False leaves the second to the caller (a card renders them as claims)."""
    metrics = _key_metrics(combined)
    arrow = {k: "↑" if higher_is_better(k) else "↓" for k in metrics}
    name = lambda n, m: f"{n} ⚠ {len(m['excluded'])} seed(s) excluded" if m["flagged"] else n  # noqa: E731
    rows = [[name(n, m), len(m["seeds"]), *(_mean_std(m["metrics"].get(k)) for k in metrics)]
            for n, m in combined["models"].items()]
    out = [f"Dataset **{combined['dataset']}** (split {combined['split']}), {combined['n_seeds']} seeds, "
           f"{', '.join(map(str, combined['n_images']))} images per seed. Mean ± sample std (ddof=1) over seeds.", "",
           _table(["model", "seeds", *(f"{k} {arrow[k]}" for k in metrics)], rows), ""]
    if differences:
        out += _difference_table(combined, metrics, arrow)
    excluded = [f"- {n}, seed {e['seed_index']}: {e['reason']}" for n, m in combined["models"].items()
                for e in m["excluded"]]
    out += ["Excluded (did not converge, or predictions collapsed, in that seed):", "", *excluded] if excluded \
        else ["No seed was excluded."]
    return out


def forest_rows(combined: dict, metric: str) -> list[tuple[str, float, float | None, float | None, str]]:
    """(model, mean difference, interval low, high, verdict) of every model compared on `metric`, in report order."""
    return [(n, c["diff"], c["low"], c["high"], c["verdict"]) for n, d in combined["differences"].items()
            if (c := d.get(metric)) is not None]


def plot_differences(combined: dict, path: str | Path, title: str) -> Path:
    """seeds.png: one panel per key metric, each model's mean difference from the reference over seeds with its 95%
    Student-t interval (green: better, red: worse, grey: no verdict), a line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in _key_metrics(combined) if forest_rows(combined, k)]
    cols = min(4, max(1, len(metrics)))
    rows = -(-len(metrics) // cols) or 1
    n_models = max((len(forest_rows(combined, k)) for k in metrics), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 0.9 + (0.28 * n_models + 0.8) * rows),
                             squeeze=False, constrained_layout=True)
    colour = {"better": "tab:green", "worse": "tab:red"}
    for ax, metric in zip(axes.flat, metrics):
        data = forest_rows(combined, metric)
        for y, (_, diff, low, high, said) in enumerate(data):
            c = colour.get(said, "grey")
            if low is not None:
                ax.plot([low, high], [y, y], color=c, lw=2)
            ax.plot([diff], [y], "o", color=c)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(data)), [d[0] for d in data], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{metric} {'↑' if higher_is_better(metric) else '↓'}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"{title}: model − {combined['reference']}, mean over {combined['n_seeds']} seeds, 95% Student-t "
                 "interval (green better, red worse)", fontsize=9)
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return Path(path)


def write_seeds_report(combined: dict, out_dir: str | Path, title: str) -> list[Path]:
    """Write seeds.json (the combined dict), seeds.md (its tables) and seeds.png (the differences), atomically."""
    out = Path(out_dir)
    text = "\n".join([f"# {title}", "", *seeds_markdown(combined), "", "![model − reference](seeds.png)", ""])
    return [write_json(out / "seeds.json", combined),
            atomic_write(out / "seeds.md", lambda tmp: Path(tmp).write_text(text)),
            plot_differences(combined, out / "seeds.png", title)]


def read_reports(folders: list[str | Path]) -> list[dict]:
    """results.json of each report folder, in order; ValueError naming a folder without one."""
    if len(folders) < 2:
        raise ValueError(f"at least 2 seeds are needed for a std: give 2 or more report folders (got {len(folders)})")
    resolved = [Path(f).resolve() for f in folders]
    twice = next((f for f, r in zip(folders, resolved) if resolved.count(r) > 1), None)
    if twice is not None:
        raise ValueError(f"{twice} is given twice; give one report folder per seed")
    out = []
    for folder in map(Path, folders):
        path = folder / "results.json"
        if not path.is_file():
            raise ValueError(f"{folder} has no results.json; run topgap evaluate FAMILY --out {folder} first")
        try:
            out.append(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); rerun topgap evaluate for it") from None
    return out


def run(args: argparse.Namespace) -> dict:
    combined = combine_seeds(read_reports(args.reports), reference=args.reference)
    combined["reports"] = [str(p) for p in args.reports]
    paths = write_seeds_report(combined, args.out, args.title)
    return {"out": str(args.out), "files": [str(p) for p in paths],
            "models": {n: {k: _mean_std(m["metrics"].get(k)) for k in ("accuracy", "iou")}
                       for n, m in combined["models"].items()}}


def register(subparsers) -> None:
    """Add ``topgap seeds``."""
    p = subparsers.add_parser("seeds", help="combine the evaluation reports of several seeds: mean ± std, t-intervals",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="report folders written by topgap evaluate, one per seed")
    p.add_argument("--out", required=True, help="folder for seeds.json and seeds.md")
    p.add_argument("--title", required=True)
    p.add_argument("--reference", default="baseline", help="the model every other one is compared with")
    p.set_defaults(func=run)
