"""`topgap study`: a grid of training settings written down first, each chosen on folds of the training data by one rule.

A grid file (JSON, e.g. reports/prior-study/synthetic.json; its PROTOCOL.md says why each value) runs three stages:

- ``pilot``: one learning rate per optimizer. The pilot arm at every lr of ``pilot.lr`` ({optimizer: [lr]}),
  on ``pilot.folds``; each optimizer's lrs are ranked by :data:`RULE`.
- ``prior``: the l1 strength and schedule. The prior arm at every lam x schedule x optimizer (at its pilot lr).
- ``tuned``: every arm of the family (baseline, FPN-only control, each k) at optimizer x its two best pilot lrs,
  Top-GAP arms at the prior's chosen lam and schedule, each arm chosen by :data:`RULE`.

A cell is one setting of one arm; it trains one model per fold (:func:`topgap.train.fold_splits` of the train
split) and measures it on the fold's held-out images (:func:`topgap.eval.evaluate.evaluate_family` with the grid's
``evaluate`` options: accuracy, the map metrics under both protocols, the attacks) and its accuracy on the test
split (reported, never used to choose). Folds run in order, fold 0 of every cell of a stage first; a cell whose
fold-0 model collapsed, diverged or did not converge is flagged and not run on later folds (it cannot be chosen). Each
fold's measurement is written atomically once, into the report (``folds/<cell>/fold<i>.json``, a few KB, meant to be
committed: checkpoints under ``--runs`` are disposable, the record is not), and training resumes, so the same command
continues a killed study, on this machine or on a fresh checkout; a cell folder that holds a model of other options is
refused by :func:`topgap.train.train_model`.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from .io import write_json

__all__ = ["RULE", "load_grid", "stage_cells", "choose", "rank", "summarise", "measure", "cell_options", "run_study",
           "chosen_family", "train_commands", "register"]

RULE = ("among the cells whose every fold was run and none collapsed, diverged or failed to converge, those whose mean "
        "fold accuracy is within `tolerance` of the best; of these, the lowest mean l1 of the model's own CAM under the "
        "paper's protocol (GradCAM's for the baseline); ties to the higher mean paper-protocol IOU, then grid order")
STAGES = ("pilot", "prior", "tuned")
METRICS = ("accuracy", "test_accuracy", "l1_paper", "l1_relu", "iou_paper", "iou_relu", "mass_in_mask_paper",
           "mass_in_mask_relu", "pxap_paper", "pxap_relu", "fgsm_correct")
REQUIRED = {"title": str, "data": str, "folds": int, "tolerance": float, "train": dict, "evaluate": dict,
            "pilot": dict, "prior": dict, "tuned": dict}


def load_grid(path: str | Path) -> dict[str, Any]:
    """The grid file, checked: every key of :data:`REQUIRED`, pilot {arm, lam, schedule, folds, lr}, prior {arm,
    lam, schedules}, tuned {arms}; arms are {name: topgap train options} that train exactly one model."""
    path = Path(path)
    try:
        grid = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the grid as JSON ({e})") from None
    for key, kind in REQUIRED.items():
        if not isinstance(grid.get(key), (int, float) if kind is float else kind):
            raise ValueError(f"{path}: '{key}' must be a {kind.__name__} (see topgap/study.py)")
    for stage, keys in (("pilot", ("arm", "lam", "schedule", "folds", "lr")), ("prior", ("arm", "lam", "schedules")),
                        ("tuned", ("arms",))):
        missing = [k for k in keys if k not in grid[stage]]
        if missing:
            raise ValueError(f"{path}: '{stage}' lacks {missing}")
    if grid["pilot"]["schedule"] not in grid["prior"]["schedules"]:
        raise ValueError(f"{path}: pilot.schedule {grid['pilot']['schedule']!r} is not one of prior.schedules")
    for name, lrs in grid["pilot"]["lr"].items():
        if name not in ("sgd", "adamw") or not lrs:
            raise ValueError(f"{path}: pilot.lr must map sgd and/or adamw to a list of learning rates")
    grid["_path"] = str(path)
    return grid


def _cell(grid: dict, arm: str, optimizer: str, lr: float, lam: float, schedule: str) -> dict[str, Any]:
    """One cell: its name (cells of equal options share it, so a stage reuses another's runs) and train options."""
    options = dict(grid["tuned"]["arms"].get(arm) or {"k": [int(arm.removeprefix("k"))]})
    topgap = not (options.get("baseline") or options.get("control"))
    options |= {"optimizer": optimizer, "lr": lr}
    name = f"{arm}-{optimizer}-lr{lr:g}"
    if topgap:
        options |= {"lam": lam, **grid["prior"]["schedules"][schedule]}
        name += f"-lam{lam:g}-{schedule}"
    return {"name": name, "arm": arm, "options": options, "optimizer": optimizer, "lr": lr,
            "lam": lam if topgap else None, "schedule": schedule if topgap else None}


def stage_cells(grid: dict, stage: str, choices: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells of `stage` in grid order, given the earlier stages' `choices` (:func:`run_study` records them)."""
    if stage == "pilot":
        p = grid["pilot"]
        return [_cell(grid, p["arm"], opt, lr, p["lam"], p["schedule"]) for opt, lrs in p["lr"].items() for lr in lrs]
    lrs = choices["pilot"]["lr"]  # {optimizer: [best lr, second]}
    if stage == "prior":
        p = grid["prior"]
        return [_cell(grid, p["arm"], opt, ranked[0], lam, schedule) for schedule in p["schedules"]
                for opt, ranked in lrs.items() for lam in p["lam"]]
    prior = choices["prior"]["chosen"]
    return [_cell(grid, arm, opt, lr, prior["lam"], prior["schedule"]) for arm in grid["tuned"]["arms"]
            for opt, ranked in lrs.items() for lr in ranked[:2]]


def summarise(cell: dict, folds: list[int], measured: dict[int, dict]) -> dict[str, Any]:
    """Mean and std over the cell's measured folds of every metric of :data:`METRICS`, and its flag: why it cannot
    be chosen (None when it can): a fold that collapsed or did not converge, or folds not yet run."""
    from .eval.stats import over_runs

    runs = [measured[f] for f in folds if f in measured]
    bad = [f"fold {r['fold']}: {r['flag']}" for r in runs if r.get("flag")]
    missing = [f for f in folds if f not in measured]
    flag = "; ".join(bad) or (f"folds {missing} not run" if missing else None)
    stats = over_runs([{m: r["metrics"].get(m) for m in METRICS} for r in runs]) if runs else {}
    return {**{k: cell[k] for k in ("name", "arm", "optimizer", "lr", "lam", "schedule")}, "folds": folds,
            "measured": [f for f in folds if f in measured], "flag": flag, "collapsed": bool(bad),
            "mean": {m: s["mean"] for m, s in stats.items()}, "std": {m: s["std"] for m, s in stats.items()}}


def choose(summaries: list[dict], tolerance: float) -> dict[str, Any]:
    """The cell :data:`RULE` picks: {"chosen": summary or None, "within": names within `tolerance`, "best_accuracy",
    "rule", "tolerance"}."""
    pool = [s for s in summaries if s["flag"] is None and s["mean"].get("accuracy") is not None]
    out = {"rule": RULE, "tolerance": tolerance, "chosen": None, "within": [], "best_accuracy": None}
    if not pool:
        return out
    best = max(s["mean"]["accuracy"] for s in pool)
    within = [s for s in pool if s["mean"]["accuracy"] >= best - tolerance - 1e-12]
    key = lambda s: (_or_inf(s["mean"].get("l1_paper")), -_or_inf(s["mean"].get("iou_paper"), -1))  # noqa: E731
    return out | {"chosen": min(within, key=key), "within": [s["name"] for s in within], "best_accuracy": best}


def _or_inf(value: float | None, sign: int = 1) -> float:
    return sign * math.inf if value is None else value


def rank(summaries: list[dict], tolerance: float) -> list[dict]:
    """The eligible summaries in the order :func:`choose` picks them (the chosen, then the choice among the rest...)."""
    left, order = list(summaries), []
    while (pick := choose(left, tolerance)["chosen"]) is not None:
        order.append(pick)
        left = [s for s in left if s["name"] != pick["name"]]
    return order


# ------------------------------------------------------------------------------------------- one fold of one cell

def cell_options(grid: dict, cell: dict) -> dict[str, Any]:
    """Everything a fold's measurement depends on: its train and evaluate options, the folds and the test split."""
    return {"train": {**grid["train"], **cell["options"], "data": grid["data"]}, "evaluate": grid["evaluate"],
            "folds": grid["folds"], "test_split": grid.get("test_split", "test")}


def _train_args(grid: dict, cell: dict, folder: Path) -> argparse.Namespace:
    from .cli import parse_with_values

    values = {**cell_options(grid, cell)["train"], "out": str(folder), "folds": 0}
    return parse_with_values(["train"], values, f"{grid['_path']} (cell {cell['name']})")


def measure(grid: dict, cell: dict, fold: int, runs: Path, records: Path) -> dict[str, Any]:
    """Train `cell` on the training part of `fold` under `runs` (resuming) and measure it; the fold's record,
    written once to `records`/<cell>/fold<i>.json."""
    import torch
    from torch.utils.data import Subset

    from .data import open_dataset
    from .eval.subsets import dataset_labels
    from .train import DivergedError, fold_splits, plan, train_model

    folder, path = runs / cell["name"] / f"fold{fold}", _record_path(records, cell, fold)
    if (done := _measured(grid, records, cell).get(fold)) is not None:
        return done
    args = _train_args(grid, cell, folder)
    p = plan(args)
    if len(p["configs"]) != 1:
        raise ValueError(f"{grid['_path']}: arm {cell['arm']} trains {len(p['configs'])} models "
                         f"({', '.join(p['configs'])}); an arm trains exactly one")
    (name, cfg), = p["configs"].items()
    data = {k: v for k, v in p["data"].items() if k not in ("root", "train_split")}
    held = open_dataset(p["data"]["root"], p["data"]["train_split"], **data)  # the same images, not augmented
    tr, va = fold_splits(dataset_labels(p["train_set"]), grid["folds"], p["recipe"].seed)[fold]
    part = Subset(held, va.tolist())
    part.class_names = held.class_names
    record = {"cell": cell["name"], "fold": fold, "options": cell_options(grid, cell), "n_held_out": len(va)}
    try:
        trained = train_model(cfg, p["recipe"], Subset(p["train_set"], tr.tolist()), folder / name, val_set=part,
                              dtype=torch.float16 if args.half else None)
    except DivergedError as e:  # a setting that diverges is a result: flagged, never chosen, the study goes on
        record |= {"metrics": {}, "converged": False, "convergence": str(e), "flag": f"diverged ({e})"}
        write_json(path, record)
        return record
    results = _evaluate(grid, folder, part, f"fold {fold} held out")["models"][name]
    test = open_dataset(p["data"]["root"], grid.get("test_split", "test"), **data)
    record |= {"n_test": len(test), "metrics": _flat(results) | {"test_accuracy": test_accuracy(folder / name, test)},
               "converged": results["converged"], "convergence": results["convergence"],
               "collapsed": results["collapsed"], "flag": _flag(results),
               "train_seconds": trained.get("train_seconds"), "kept_epoch": trained.get("kept_epoch")}
    write_json(path, record)
    return record


def _evaluate(grid: dict, folder: Path, dataset, split: str) -> dict:
    from .cli import parse_with_values
    from .eval.evaluate import evaluate_folder, none_means_empty

    args = parse_with_values(["evaluate", str(folder), "--data", grid["data"]], grid["evaluate"],
                             f"{grid['_path']} (evaluate)")
    args.attacks, args.eps_curve = none_means_empty(args.attacks, "--attacks"), none_means_empty(args.eps_curve,
                                                                                                  "--eps-curve")
    return evaluate_folder(folder, dataset, args, surrogate=None, shifts={}, split=split)


def _flat(results: dict) -> dict:
    from .eval.evaluate import flat_metrics

    return {k: v for k, v in flat_metrics(results).items() if v is not None}


def _flag(results: dict) -> str | None:
    if results["converged"] is False:
        return f"did not converge ({results['convergence']})"
    if results["collapsed"]["flag"]:
        return f"collapsed ({results['collapsed']['reason']})"
    return None


def test_accuracy(folder: Path, dataset, batch_size: int = 64) -> float:
    """Clean accuracy of the model folder on `dataset`, with training's own validation pass."""
    from torch.utils.data import DataLoader

    from .checkpoint import load_model
    from .train import _evaluate as validate, Trainable, make_accelerator

    model, cfg = load_model(folder)
    acc = make_accelerator()
    return validate(acc, Trainable(model, cfg), DataLoader(dataset, batch_size=batch_size))["val_accuracy"]


# ------------------------------------------------------------------------------------------------ the stages

def _record_path(records: Path, cell: dict, fold: int) -> Path:
    return records / cell["name"] / f"fold{fold}.json"


def _measured(grid: dict, records: Path, cell: dict) -> dict[int, dict]:
    """{fold: its record} of the cell, refusing a measurement made with other options than the grid's."""
    out, asked = {}, json.loads(json.dumps(cell_options(grid, cell)))
    for path in sorted((records / cell["name"]).glob("fold*.json")):
        record = json.loads(path.read_text())
        if record.get("options") != asked:
            from .train import _differences

            diff = _differences(record.get("options"), asked, "options")
            raise ValueError(f"{path} was measured with other options ({'; '.join(diff[:4])}); the grid changed "
                             "after it ran: give another --report, or record the change under Deviations and delete "
                             f"{path.parent} (and its checkpoints under --runs)")
        out[record["fold"]] = record
    return out


def _stage_folds(grid: dict, stage: str) -> list[int]:
    return list(grid["pilot"]["folds"]) if stage == "pilot" else list(range(grid["folds"]))


def _choices(grid: dict, stage: str, summaries: list[dict]) -> dict[str, Any]:
    tol = grid["tolerance"]
    if stage == "pilot":
        ranked = {opt: rank([s for s in summaries if s["optimizer"] == opt], tol) for opt in grid["pilot"]["lr"]}
        missing = [opt for opt, r in ranked.items() if not r]
        if missing:
            raise ValueError(f"pilot: no learning rate of {missing} trained a usable model; widen pilot.lr")
        return {"lr": {opt: [s["lr"] for s in r] for opt, r in ranked.items()}, "rule": RULE, "tolerance": tol}
    if stage == "prior":
        pick = choose(summaries, tol)
        if pick["chosen"] is None:
            raise ValueError("prior: no cell is complete and usable; nothing can be chosen")
        return pick
    arms = {arm: choose([s for s in summaries if s["arm"] == arm], tol) for arm in grid["tuned"]["arms"]}
    topgap = [c["chosen"] for c in arms.values() if c["chosen"] and c["chosen"]["lam"] is not None]
    return {"arms": arms, "family": choose(topgap, tol)}  # family: the Top-GAP model the family is judged by


def run_study(grid: dict, runs: str | Path, report: str | Path, *, until: str = "tuned",
              plan_only: bool = False) -> dict[str, Any]:
    """Run the stages up to `until`, fold 0 of every cell first, training under `runs`; write each fold's record
    to report/folds/, report/study.json (after every fold), study.md and prior.png (after every stage).
    `plan_only`: list the cells and count the runs, train nothing."""
    runs, report = Path(runs), Path(report)
    records = report / "folds"
    study = {"title": grid["title"], "grid": grid["_path"], "rule": RULE, "tolerance": grid["tolerance"],
             "folds": grid["folds"], "stages": {}, "runs_trained": 0, "runs_measured": _count(records)}
    choices: dict[str, Any] = {}
    for stage in STAGES[:STAGES.index(until) + 1]:
        cells, folds = stage_cells(grid, stage, choices), _stage_folds(grid, stage)
        entry = study["stages"][stage] = {"folds": folds, "runs_at_most": len(cells) * len(folds)}
        if not plan_only:
            run_cells(grid, cells, folds, runs, records, study, entry, report)
        entry["cells"] = [summarise(c, folds, _measured(grid, records, c)) for c in cells]
        study["runs_measured"] = _count(records)
        try:
            entry["choice"] = choices[stage] = _choices(grid, stage, entry["cells"])
        except ValueError:
            if plan_only:
                break  # the later stages' cells depend on this stage's choice
            raise
        if not plan_only:
            _write(study, report)
    if choices.get("tuned", {}).get("family", {}).get("chosen"):
        study |= chosen_family(grid, choices["tuned"])
    study["runs_measured"] = _count(records)
    if not plan_only:
        _write(study, report)
    return study


def run_cells(grid: dict, cells: list[dict], folds: list[int], runs: Path, records: Path, study: dict, entry: dict,
              report: Path) -> None:
    """Measure every cell on every fold, fold 0 of every cell first; a cell measured already is skipped, one flagged
    on the first fold is never run further (it cannot be chosen). study.json is rewritten after every fold."""
    for fold in folds:
        for cell in cells:
            done = _measured(grid, records, cell)
            if fold in done or (fold != folds[0] and (folds[0] not in done or done[folds[0]]["flag"])):
                continue
            measure(grid, cell, fold, runs, records)
            study["runs_trained"], study["runs_measured"] = study["runs_trained"] + 1, _count(records)
            entry["cells"] = [summarise(c, folds, _measured(grid, records, c)) for c in cells]
            _write(study, report, progress=True)


def _count(records: Path) -> int:
    """Fold runs measured so far (each cell's fold counted once, whichever stages share it)."""
    return len(list(records.glob("*/fold*.json"))) if records.is_dir() else 0


def chosen_family(grid: dict, tuned: dict) -> dict[str, Any]:
    """{"models": {arm: chosen cell}, "selection": the k the family is judged by}, in the shape of a report's
    selection, so that ``topgap evaluate --selection-from study.json`` judges the shipped family by it."""
    pick = tuned["family"]["chosen"]
    split = grid["train"].get("train_split", "train")
    return {"models": {arm: c["chosen"] and c["chosen"]["name"] for arm, c in tuned["arms"].items()},
            "selection": {"split": f"{grid['folds']} folds of {split}", "dataset": Path(grid["data"]).name,
                          "rule": f"{RULE}; the family is judged by the same rule over the Top-GAP arms' chosen cells",
                          "by": {"prior study": {"model": pick["arm"], "value": pick["mean"]["accuracy"],
                                                 "cell": pick["name"]}}}}


def train_commands(grid: dict, study: dict, seed: int, out: str) -> list[str]:
    """One ``topgap train`` command per arm with its chosen setting, on the whole fold split, seed `seed`, into
    `out` (the family folder): how the shipped family is trained."""
    cells = {c["name"]: c for c in stage_cells(grid, "tuned", {"pilot": study["stages"]["pilot"]["choice"],
                                                               "prior": study["stages"]["prior"]["choice"]})}
    commands = []
    for arm, name in study["models"].items():
        if name is None:
            raise ValueError(f"arm {arm} has no chosen cell (every cell flagged); it cannot be trained as chosen")
        commands.append(train_command({**grid["train"], **cells[name]["options"], "seed": seed, "data": grid["data"],
                                       "out": out}))
    return commands


def train_command(values: dict[str, Any]) -> str:
    """The ``topgap train`` command line of `values` ({long option with _: value}; True is a bare flag, False and
    None are left out, a list gives several values)."""
    import shlex

    argv = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, *map(str, value if isinstance(value, list) else [value])]
    return "topgap train " + " ".join(shlex.quote(a) for a in argv)


# ------------------------------------------------------------------------------------------------ the report

def _write(study: dict, report: Path, progress: bool = False) -> None:
    write_json(report / "study.json", study)
    if not progress:
        from .io import atomic_write

        text = study_markdown(study)
        atomic_write(report / "study.md", lambda tmp: Path(tmp).write_text(text))
        if "prior" in study["stages"] and study["stages"]["prior"].get("cells"):
            plot_prior(study["stages"]["prior"], report / "prior.png")


COLUMNS = (("accuracy", "fold accuracy"), ("test_accuracy", "test accuracy"), ("l1_paper", "l1 paper"),
           ("l1_relu", "l1 relu"), ("iou_paper", "IOU paper"), ("iou_relu", "IOU relu"),
           ("pxap_paper", "PxAP paper"), ("fgsm_correct", "FGSM correct"))


def _cell_row(s: dict, chosen: set[str]) -> str:
    values = [f"{s['mean'][m]:.3f} ± {s['std'][m]:.3f}" if m in s["mean"] else "–" for m, _ in COLUMNS]
    name = f"**{s['name']}**" if s["name"] in chosen else s["name"]
    return f"| {name} | {len(s['measured'])}/{len(s['folds'])} | " + " | ".join(values) + f" | {s['flag'] or ''} |"


def study_markdown(study: dict) -> str:
    """study.md: every cell of every stage (mean ± std over its folds; the chosen in bold) and each choice."""
    lines = [f"# {study['title']}", "", f"Grid: `{study['grid']}`. Rule: {study['rule']} (tolerance "
             f"{study['tolerance']:g}). Test accuracy is reported, never used to choose.", "",
             f"Fold runs measured: {study.get('runs_measured', 0)}.", ""]
    for stage, entry in study["stages"].items():
        choice = entry.get("choice") or {}
        picks = [choice] if "chosen" in choice else list(choice.get("arms", {}).values())
        chosen = {c["chosen"]["name"] for c in picks if c.get("chosen")}
        lines += [f"## {stage} (folds {', '.join(map(str, entry['folds']))})", "",
                  "| cell | folds | " + " | ".join(t for _, t in COLUMNS) + " | flag |",
                  "|---" * (len(COLUMNS) + 3) + "|", *(_cell_row(s, chosen) for s in entry.get("cells", [])), ""]
        if stage == "pilot" and "lr" in choice:
            lines += ["Learning rates, best first: " + "; ".join(f"{o}: {', '.join(f'{lr:g}' for lr in r)}"
                                                                 for o, r in choice["lr"].items()), ""]
        lines += [f"Chosen: **{c['chosen']['name']}** (best mean fold accuracy {c['best_accuracy']:.3f}; within "
                  f"tolerance: {', '.join(c['within'])})" if c.get("chosen") else "Chosen: none" for c in picks]
        if choice.get("family", {}).get("chosen"):
            lines += ["", f"The family is judged by **{choice['family']['chosen']['name']}** (the rule among the "
                          f"Top-GAP arms' chosen cells: {', '.join(choice['family']['within'])} within tolerance)"]
        lines.append("")
    return "\n".join(lines)


PLOTTED = ("accuracy", "test_accuracy", "l1_paper", "l1_relu", "iou_paper", "iou_relu", "pxap_paper", "pxap_relu",
           "fgsm_correct")


def plot_prior(entry: dict, path: Path) -> Path:
    """prior.png: each metric of :data:`PLOTTED` against lam (log axis), one line per schedule and optimizer, mean ±
    std over folds; cells that collapsed, diverged or did not converge as crosses, unfinished ones as rings (at their
    measured mean), the chosen one as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write

    fig, axes = plt.subplots(3, 3, figsize=(13, 10), constrained_layout=True)
    picked = ((entry.get("choice") or {}).get("chosen") or {}).get("name")
    lines = sorted({(s["schedule"], s["optimizer"]) for s in entry["cells"]})
    for ax, metric in zip(axes.flat, PLOTTED):
        ax.set_title(metric.replace("_", " "))
        if not any(metric in s["mean"] for s in entry["cells"]):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            continue
        for schedule, opt in lines:
            cells = sorted((s for s in entry["cells"] if (s["schedule"], s["optimizer"]) == (schedule, opt)
                            and metric in s["mean"]), key=lambda s: s["lam"])
            ok = [s for s in cells if not s["flag"]]
            line = ax.errorbar([s["lam"] for s in ok], [s["mean"][metric] for s in ok],
                               yerr=[s["std"][metric] for s in ok], marker="o", capsize=3, label=f"{schedule}, {opt}")
            colour = line[0].get_color()
            bad = [s for s in cells if s["collapsed"]]
            ax.scatter([s["lam"] for s in bad], [s["mean"][metric] for s in bad], marker="x", s=60, color=colour)
            todo = [s for s in cells if s["flag"] and not s["collapsed"]]
            ax.scatter([s["lam"] for s in todo], [s["mean"][metric] for s in todo], marker="o", s=40,
                       facecolors="none", edgecolors=colour)
            chosen = [s for s in cells if s["name"] == picked]
            ax.scatter([s["lam"] for s in chosen], [s["mean"][metric] for s in chosen], marker="*", s=220,
                       color=colour, edgecolors="black", zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel("lam")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels) or 1, fontsize=9,
               title="mean ± std over folds; x: collapsed, diverged or not converged (never chosen); o: folds still "
                     "to run; star: chosen", title_fontsize=9)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------- CLI

def _is_variants(path: str | Path) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("kind") == "variants"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False  # load_grid says what is wrong


def run(args: argparse.Namespace) -> dict[str, Any]:
    from . import variants

    kind = variants if _is_variants(args.grid) else None
    grid = variants.load_variants(args.grid) if kind else load_grid(args.grid)
    name = Path(args.grid).stem
    runs = Path(args.runs or f"runs/study/{Path(args.grid).parent.name}-{name}")
    report = Path(args.report or Path(args.grid).parent / name)
    if args.train_commands is not None:
        done = json.loads((report / "study.json").read_text()) if (report / "study.json").is_file() else {}
        if "models" not in done:
            raise ValueError(f"{report / 'study.json'}: the study has not chosen every arm yet; run it to the end")
        make = variants.variant_commands if kind else train_commands
        return {"commands": [c for seed in args.seeds for c in make(grid, done, seed,
                                                                    args.train_commands.format(seed=seed))]}
    if kind:
        study = variants.run_variants(grid, runs, report, plan_only=args.plan)
    else:
        study = run_study(grid, runs, report, until=args.until, plan_only=args.plan)
    return {"report": str(report), "runs": str(runs), "runs_trained": study["runs_trained"],
            "runs_measured": study["runs_measured"],
            "stages": {s: {"runs_at_most": e["runs_at_most"], "chosen": _chosen_names(e.get("choice"))}
                       for s, e in study["stages"].items()}}


def _chosen_names(choice: dict | None) -> Any:
    if not choice:
        return None
    if "lr" in choice:
        return choice["lr"]
    if "chosen" in choice:
        return choice["chosen"] and choice["chosen"]["name"]
    family = choice.get("family", {}).get("chosen")
    return {**({"family": family["name"]} if family else {}),
            **{arm: c["chosen"] and c["chosen"]["name"] for arm, c in choice["arms"].items()}}


def register(subparsers) -> None:
    """Add ``topgap study``."""
    p = subparsers.add_parser("study", help="a grid of training settings chosen on folds by one rule (pilot, l1 prior, "
                                            "tuned arms)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help="the grid file (JSON), e.g. reports/prior-study/synthetic.json")
    p.add_argument("--runs", help="where the cells train (default runs/study/<grid folder>-<grid name>, e.g. "
                                    "runs/study/poolings-synthetic); resumable")
    p.add_argument("--report", help="study.json, study.md, prior.png and folds/ (each fold's record: commit it) "
                                     "(default: beside the grid, <grid name>/)")
    p.add_argument("--until", choices=STAGES, default="tuned", help="the last stage to run")
    p.add_argument("--plan", action="store_true", help="list the cells and count the runs; train nothing")
    p.add_argument("--train-commands", metavar="OUT", help="print the topgap train commands of the chosen family "
                                                          "into OUT ({seed} is replaced), e.g. runs/pets/seed{seed}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of --train-commands")
    p.set_defaults(func=run)
