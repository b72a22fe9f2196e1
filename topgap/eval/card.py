"""`topgap card`: a model family's card, README.md for people and card.json for the app, from measured files only.

Everything on the card comes from the family's own files: each model's config.json (recipe, training
time) and train_log.json, an evaluation report written by ``topgap evaluate`` (results.json and its
plots) and, optionally, the recipe across seeds from ``topgap seeds`` (seeds.json). Its claims are
:mod:`topgap.eval.claims`' rendering: every comparison of every model with the baseline, better and worse alike,
under both CAM protocols, with the 95% interval behind each verdict; a model whose training did not converge or
whose predictions collapsed is flagged and never judged. README.md is a function of card.json alone
(:func:`card_markdown`), which ``topgap claims`` checks.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

from ..checkpoint import family_members, read_config
from ..io import atomic_write, write_json
from .claims import comparisons, render_claims
from .evaluate import CHANCE_MARGIN
from .stats import COLLAPSE_SHARE
from .report import markdown_report
from .seeds import seeds_markdown

__all__ = ["card_markdown", "claims_block", "write_card", "register"]


def claims_block(source: str, data: dict) -> list[str]:
    """The rendered claims of `data` between the markers that ``topgap claims`` checks (source: where it reads)."""
    return [f"<!-- claims: {source} -->", render_claims(data), "<!-- /claims -->"]


def _read_seeds(folder: str | Path) -> dict:
    path = Path(folder) / "seeds.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no seeds.json; run topgap seeds REPORT REPORT ... --out {folder} first")
    return json.loads(path.read_text())


def _recipe(training: dict) -> str:
    """The optimizer and learning rate a member was trained with (arms tuned apart differ), '–' if not recorded."""
    recipe = training.get("recipe") or {}
    return f"{recipe['optimizer']} {recipe['lr']:g}" if "optimizer" in recipe and "lr" in recipe else "–"


def _figure(value) -> str:
    return "–" if value is None else f"{value:.3f}"  # a model trained without a validation split has none


def card_markdown(card: dict) -> str:
    """README.md of a family from its card.json alone, so that ``topgap claims`` can check one against the other."""
    results, seeds, training = card["evaluation"], card.get("seeds") or [], card["training"]
    rows = [f"| {n} | {t['kind']} | {t['k'] if t['k'] is not None else '–'} | {_recipe(t)} | {t.get('epochs', '–')} | "
            f"{_figure(t.get('val_accuracy'))} | {t.get('train_seconds', 0):.0f} |" for n, t in training.items()]
    across = [line for i, s in enumerate(seeds) for line in (*seeds_markdown(s, differences=False), "",
                                                               "Against the baseline:", "",
                                                               *claims_block(f"card.json#/seeds/{i}", s), "")]
    return "\n".join([
        f"# {card['title']}", "", "<!-- figures: card.json -->", "",
        "## Data", "", card["data"], "",
        *(["## Across seeds (mean ± std)", "", *across] if seeds else []),
        "## How Top-GAP compares with the baseline" + (" (seed 0)" if seeds else ""), "",
        *claims_block("card.json#/evaluation", results), "",
        "## Reproduce", "", "```", *card["commands"], "```", "",
        "## Training", "", f"Hardware: {card['hardware']}. Total training time {card['training_minutes']:.1f} min.", "",
        "| model | kind | k | optimizer, lr | epochs | val accuracy | train seconds |", "|---|---|---|---|---|---|---|",
        *rows, "",
        "## Evaluation", markdown_report(results, card["title"], claims=False).split("\n", 1)[1], "",  # its title cut
        "## Plots", "", *(f"![{Path(p).stem}]({p})" for p in card["plots"]), "",
    ])


def write_card(family: str | Path, report: str | Path, *, title: str, data_note: str, commands: list[str],
               hardware: str | None = None, seeds_reports: list[str | Path] = ()) -> list[Path]:
    """Write card.json, README.md (:func:`card_markdown` of it) and plots/ into the family folder from the
    evaluation `report` folder.

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
                                 "input_size": list(cfg.input_size), "num_maps": cfg.num_maps,
                                 "fpn_channels": cfg.fpn_channels, "lam": cfg.lam, **cfg.metrics, "recipe": cfg.recipe}
    hardware = hardware or f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"
    for plot in sorted((report / "plots").glob("*.png")):
        atomic_write(family / "plots" / plot.name, lambda tmp, plot=plot: shutil.copyfile(plot, tmp))
    card = {"title": title, "data": data_note, "commands": commands, "hardware": hardware, "training": training,
            "training_minutes": round(sum(t.get("train_seconds", 0) for t in training.values()) / 60, 1),
            "verdicts": comparisons(results), "evaluation": results,
            "thresholds": {"collapse_share": COLLAPSE_SHARE, "chance_margin": CHANCE_MARGIN},  # the reports' rules
            "plots": [f"plots/{p.name}" for p in sorted((family / "plots").glob("*.png"))]}
    if seeds:
        card["seeds"] = seeds
    text = card_markdown(card)
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
