"""A variants grid for `topgap study`: arms that each vary one option, on the recipe a finished prior study chose.

The poolings study (reports/poolings/PROTOCOL.md) asks which pooling of the class maps does best under one recipe; its
grid file names the prior study it builds on and, per arm, the options that make the arm and the one option it varies:

    {"kind": "variants", "title": "...", "recipe_from": "reports/prior-study/synthetic.json",
     "arms": {"topgap": {"vary": {"k": [10, 41, 288]}},
              "lse-nol1": {"options": {"pooling": "lse", "k": ["none"], "lam": 0}, "vary": {"pool_r": [1, 5, 20]}},
              "gmp": {"options": {"pooling": "gmp", "k": ["none"]}}}}

The recipe is the cell the prior study judged its family by (optimizer, lr, lam and its schedule, on top of the prior
grid's train options); the data, folds, tolerance and evaluate options are the prior grid's, so both studies measure
alike. Every cell is measured on every fold by :func:`topgap.study.measure` and each arm's cell is chosen by
:data:`topgap.study.RULE`; the records, study.json and study.md have the prior study's format, plus variants.png.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from . import study as prior

__all__ = ["load_variants", "variant_cells", "run_variants", "variant_commands", "plot_variants"]
STAGE = "variants"


def load_variants(path: str | Path) -> dict[str, Any]:
    """The variants grid resolved onto its prior study: the prior grid's data, folds, tolerance, evaluate and train
    options with the judged cell's recipe, and the checked arms. ValueError if the prior study has not chosen yet."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the grid as JSON ({e})") from None
    for key, kind in (("title", str), ("recipe_from", str), ("arms", dict)):
        if not isinstance(spec.get(key), kind):
            raise ValueError(f"{path}: '{key}' must be a {kind.__name__} (see topgap/variants.py)")
    for arm, a in spec["arms"].items():
        vary = a.get("vary", {})
        if set(a) - {"options", "vary"} or not isinstance(vary, dict) or len(vary) > 1 or \
                any(not isinstance(v, list) or not v for v in vary.values()):
            raise ValueError(f"{path}: arm {arm!r} must be {{'options': {{...}}, 'vary': {{option: [values]}}}} "
                             "with at most one varied option and at least one value")
    base = prior.load_grid(spec["recipe_from"])
    done = Path(spec["recipe_from"]).with_suffix("") / "study.json"
    if not done.is_file() or "models" not in (study := json.loads(done.read_text())):
        raise ValueError(f"{path}: its recipe comes from {done}, which has not chosen yet; finish that study first")
    judged = study["stages"]["tuned"]["choice"]["family"]["chosen"]
    recipe = prior._cell(base, judged["arm"], judged["optimizer"], judged["lr"], judged["lam"],
                         judged["schedule"])["options"]
    return {**{k: base[k] for k in ("data", "folds", "tolerance", "evaluate")},
            "test_split": base.get("test_split", "test"), "title": spec["title"], "_path": str(path),
            "recipe": {"from": str(done), "cell": judged["name"]}, "train": {**base["train"], **recipe},
            "arms": spec["arms"], "judged": judged}


def variant_cells(grid: dict) -> list[dict[str, Any]]:
    """Every arm's cells in grid order, named ``<arm>-<option><value>`` (``pool_`` dropped: lse-r5), or ``<arm>``
    for an arm that varies nothing; each with the recipe's optimizer, lr, lam and schedule."""
    j, cells = grid["judged"], []
    for arm, a in grid["arms"].items():
        options = a.get("options", {})
        (key, values), = a["vary"].items() if a.get("vary") else (("", [None]),)
        for value in values:
            given = options | ({key: [value] if key == "k" else value} if key else {})
            name = f"{arm}-{key.removeprefix('pool_')}{value:g}" if key else arm
            lam = given.get("lam", grid["train"].get("lam"))
            cells.append({"name": name, "arm": arm, "options": given, "optimizer": j["optimizer"], "lr": j["lr"],
                          "lam": lam, "schedule": j["schedule"], "value": value})
    return cells


def run_variants(grid: dict, runs: str | Path, report: str | Path, *, plan_only: bool = False) -> dict[str, Any]:
    """Measure every cell on every fold (resuming), choose each arm's cell; study.json, study.md, variants.png."""
    runs, report = Path(runs), Path(report)
    records, cells, folds = report / "folds", variant_cells(grid), list(range(grid["folds"]))
    study = {"title": grid["title"], "grid": grid["_path"], "rule": prior.RULE, "tolerance": grid["tolerance"],
             "folds": grid["folds"], "recipe": grid["recipe"], "stages": {}, "runs_trained": 0,
             "runs_measured": prior._count(records)}
    entry = study["stages"][STAGE] = {"folds": folds, "runs_at_most": len(cells) * len(folds)}
    if plan_only:
        entry["cells"] = [{"name": c["name"], "options": prior.cell_options(grid, c)["train"]} for c in cells]
        return study
    prior.run_cells(grid, cells, folds, runs, records, study, entry, report)
    entry["cells"] = [prior.summarise(c, folds, prior._measured(grid, records, c)) | {"value": c["value"]}
                      for c in cells]
    entry["choice"] = {"arms": {arm: prior.choose([s for s in entry["cells"] if s["arm"] == arm], grid["tolerance"])
                                for arm in grid["arms"]}}
    study["models"] = {arm: c["chosen"] and c["chosen"]["name"] for arm, c in entry["choice"]["arms"].items()}
    study["runs_measured"] = prior._count(records)
    prior._write(study, report)
    plot_variants(entry, report / "variants.png")
    return study


def variant_commands(grid: dict, study: dict, seed: int, out: str) -> list[str]:
    """One ``topgap train`` command per arm with its chosen cell, on the whole training split, seed `seed`, into
    `out`."""
    cells = {c["name"]: c for c in variant_cells(grid)}
    missing = [arm for arm, name in study.get("models", {}).items() if name is None]
    if "models" not in study or missing:
        raise ValueError(f"{grid['_path']}: arms {missing or list(grid['arms'])} have no chosen cell yet; "
                         "run the study to the end (an arm whose every cell is flagged cannot be trained as chosen)")
    return [prior.train_command({**grid["train"], **cells[name]["options"], "seed": seed, "data": grid["data"],
                                 "out": out}) for name in study["models"].values()]


PLOTTED = ("accuracy", "test_accuracy", "l1_paper", "iou_paper", "pxap_paper", "fgsm_correct")


def plot_variants(entry: dict, path: Path) -> Path:
    """variants.png: each metric of :data:`PLOTTED` for every cell (mean ± std over folds), cells grouped by arm;
    flagged cells as crosses at their measured mean, each arm's chosen cell as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write

    cells = [s for s in entry["cells"] if s["mean"]]
    chosen = {c["chosen"]["name"] for c in entry["choice"]["arms"].values() if c["chosen"]}
    colours = dict(zip(dict.fromkeys(s["arm"] for s in cells), itertools.cycle(plt.rcParams["axes.prop_cycle"]
                                                                                .by_key()["color"])))
    fig, axes = plt.subplots(len(PLOTTED), 1, figsize=(max(8.0, 0.42 * len(cells)), 2.3 * len(PLOTTED)),
                             sharex=True, constrained_layout=True)
    for ax, metric in zip(axes, PLOTTED):
        ax.set_ylabel(metric.replace("_", " "), fontsize=9)
        for x, s in enumerate(cells):
            if metric not in s["mean"]:
                continue
            y, c = s["mean"][metric], colours[s["arm"]]
            if s["flag"]:
                ax.scatter([x], [y], marker="x", s=50, color=c)
            else:
                ax.errorbar([x], [y], yerr=[s["std"][metric]], marker="o", capsize=3, color=c)
            if s["name"] in chosen:
                ax.scatter([x], [y], marker="*", s=200, color=c, edgecolors="black", zorder=3)
    axes[-1].set_xticks(range(len(cells)), [s["name"] for s in cells], rotation=60, ha="right", fontsize=8)
    fig.suptitle("mean ± std over folds; x: collapsed, diverged, not converged or unfinished (never chosen); "
                 "star: the arm's chosen cell", fontsize=9)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path
