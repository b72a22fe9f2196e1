"""`topgap card`: a model family's card, README.md for people and card.json for the app, from measured files only.

Everything on the card comes from the family's own files: each model's config.json (recipe, training
time) and train_log.json, an evaluation report written by ``topgap evaluate`` (results.json and its
plots) and, optionally, the recipe across seeds from ``topgap seeds`` (seeds.json). The card states plainly,
metric by metric, whether a Top-GAP model (the ones chosen on validation data when the report has a selection)
beats the baseline, with the 95% interval behind each verdict, map metrics under both CAM protocols; a model whose
training did not converge or whose predictions collapsed is flagged and never judged.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import family_members, read_config
from ..io import atomic_write, write_json
from .report import headline, markdown_report
from .seeds import seeds_markdown

__all__ = ["verdicts", "write_card", "register"]

def verdicts(results: dict) -> list[dict[str, Any]]:
    """Every interval-backed comparison of a Top-GAP model with the baseline, as flat rows for the card.

    Only the models chosen on the validation split are listed when the results carry a selection, else
    every converged Top-GAP model with a k. Rows: {"model", "reference", "metric", "diff", "low", "high",
    "verdict"}; the verdict says better/worse only when the 95% interval excludes 0.
    """
    models = results["models"]
    base = next((n for n, m in models.items() if m["kind"] == "baseline"), None)
    chosen = [v["model"] for v in (results.get("selection") or {}).get("by", {}).values()]
    names = list(dict.fromkeys(chosen)) or [n for n, m in models.items() if m["kind"] == "topgap" and m["k"] is not None]
    rows = []
    for n in names:
        for metric, c in ((models[n].get("comparisons") or {}).get(base) or {}).items():
            rows.append({"model": n, "reference": base, "metric": metric, "diff": c["diff"], "low": c["low"],
                         "high": c["high"], "verdict": c["verdict"]})
    return rows


def _read_seeds(folder: str | Path) -> dict:
    path = Path(folder) / "seeds.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no seeds.json; run topgap seeds REPORT REPORT ... --out {folder} first")
    return json.loads(path.read_text())


def write_card(family: str | Path, report: str | Path, *, title: str, data_note: str, commands: list[str],
               hardware: str | None = None, seeds_reports: list[str | Path] = ()) -> list[Path]:
    """Write README.md, card.json and plots/ into the family folder from the evaluation `report` folder.

    `seeds_reports`: folders written by ``topgap seeds`` (e.g. the test split and a shifted benchmark); each adds
    its tables under "Across seeds (mean ± std)" and its seeds.json to the list card.json["seeds"].
    """
    family, report = Path(family), Path(report)
    results = json.loads((report / "results.json").read_text())
    seeds = [_read_seeds(folder) for folder in seeds_reports]
    training = {}
    for folder in family_members(family):
        cfg = read_config(folder)
        training[folder.name] = {"kind": cfg.kind, "k": cfg.k, "backbone": cfg.backbone,
                                 "input_size": list(cfg.input_size), **cfg.metrics, "recipe": cfg.recipe}
    hardware = hardware or f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"
    for plot in sorted((report / "plots").glob("*.png")):
        atomic_write(family / "plots" / plot.name, lambda tmp, plot=plot: shutil.copyfile(plot, tmp))
    judged = verdicts(results)
    card = {"title": title, "data": data_note, "commands": commands, "hardware": hardware, "training": training,
            "verdicts": judged, "evaluation": results,
            "plots": [f"plots/{p.name}" for p in sorted((family / "plots").glob("*.png"))]}
    if seeds:
        card["seeds"] = seeds
    total = sum(t.get("train_seconds", 0) for t in training.values())
    rows = "\n".join(f"| {n} | {t['kind']} | {t['k'] if t['k'] is not None else '–'} | {t.get('epochs', '–')} | "
                     f"{t.get('val_accuracy', float('nan')):.3f} | {t.get('train_seconds', 0):.0f} |"
                     for n, t in training.items())
    tables = markdown_report(results, title).split("\n", 1)[1]  # drop its own title
    text = "\n".join([
        f"# {title}", "",
        "## Data", "", data_note, "",
        *(["## Across seeds (mean ± std)", "", *[line for s in seeds for line in (*seeds_markdown(s), "")]]
          if seeds else []),
        "## How Top-GAP compares with the baseline", "",
        *headline(results), "",
        "## Reproduce", "", "```", *commands, "```", "",
        "## Training", "", f"Hardware: {hardware}. Total training time {total / 60:.1f} min.", "",
        "| model | kind | k | epochs | val accuracy | train seconds |", "|---|---|---|---|---|---|", rows, "",
        "## Evaluation", tables, "",
        "## Plots", "", *(f"![{Path(p).stem}]({p})" for p in card["plots"]), "",
    ])
    return [atomic_write(family / "README.md", lambda tmp: Path(tmp).write_text(text)),
            write_json(family / "card.json", card)]


def run(args: argparse.Namespace) -> dict:
    paths = write_card(args.family, args.report, title=args.title, data_note=args.data_note, commands=args.command,
                       hardware=args.hardware, seeds_reports=args.seeds_report)
    return {"written": [str(p) for p in paths]}


def register(subparsers) -> None:
    """Add ``topgap card``."""
    p = subparsers.add_parser("card", help="write a family's model card from its evaluation report",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("family", help="the family folder (model folders k*/ and baseline/)")
    p.add_argument("--report", required=True, help="the folder topgap evaluate wrote (results.json, plots/)")
    p.add_argument("--title", required=True)
    p.add_argument("--data-note", required=True, help="data provenance and terms, one paragraph of Markdown")
    p.add_argument("--command", action="append", default=[], help="a command that reproduces the family (repeat)")
    p.add_argument("--hardware", default=None, help="where it was trained (default: this machine)")
    p.add_argument("--seeds-report", nargs="+", default=[], metavar="DIR",
                   help="folders written by topgap seeds (seeds.json), e.g. the test split's and a shifted "
                        "benchmark's: each adds the recipe's mean ± std across seeds to the card")
    p.set_defaults(func=run)
