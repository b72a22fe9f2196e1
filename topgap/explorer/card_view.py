"""A family's model card for people, rendered from the card.json that ``topgap card`` writes (topgap.eval.card).

Schema: {title, data, commands, hardware, training: {model: {kind, k, backbone, input_size, epochs,
val_accuracy, train_seconds, recipe}}, verdicts: [{model, metric, protocol, target, diff, low, high, verdict,
chosen}] (topgap.eval.claims.comparisons),
evaluation: {dataset, split, n_images, eps, protocols, cam_target, attacks, selection, models: {model: {converged,
collapsed: {flag}, clean: {accuracy}, shifts: {split: {accuracy}}, iou_paper, iou_relu, pxap_paper, pxap_relu,
mass_in_mask_paper, mass_in_mask_relu, l1_paper, l1_relu, road, white_box_rate, black_box_rate}}},
plots: ["plots/x.png"]}. Cards written before the two CAM protocols hold one ``postprocessing`` and unsuffixed map
figures (iou, pxap, mass_in_mask, l1); they are shown as such. Missing keys show as "–"; the plots are returned as
files of the family folder that exist.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["render_card", "card_parts", "load_card", "card_figures", "markdown_table", "CardError"]
# paths of the machine a card was made on, as a reader should read them: the data folder and the run folders
LOCAL_PATHS = ((re.compile(r"(\.\./)+shared/data"), "DATA"), (re.compile(r"(?<![\w/.])runs/"), "OUT/"))


class CardError(ValueError):
    """card.json exists but cannot be read as a card."""


def _num(v, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def _get(d: dict | None, *path):
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table without the columns that are empty ("–") in every row (the first column always stays)."""
    keep = [i for i in range(len(header)) if i == 0 or any(r[i] != "–" for r in rows)]
    header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _public(text: str) -> str:
    """`text` with the card machine's paths as placeholders (LOCAL_PATHS): DATA for the data folder, OUT/ for
    the run folders."""
    for pattern, name in LOCAL_PATHS:
        text = pattern.sub(name, text)
    return text


def load_card(folder: str | Path) -> dict | None:
    """The family's card.json as a dict, None when there is none.

    Raises:
        CardError: card.json is not valid JSON or not an object.
    """
    card_file = Path(folder) / "card.json"
    if not card_file.is_file():
        return None
    try:
        card = json.loads(card_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CardError(f"{card_file} is not valid JSON ({e}); rewrite it with topgap card") from None
    if not isinstance(card, dict):
        raise CardError(f"{card_file} holds a {type(card).__name__}, not a card; rewrite it with topgap card")
    return card


def chosen_k(folder: str | Path) -> int | None:
    """The k of the Top-GAP model the family's card marks as chosen on validation data (its verdict rows, from
    topgap.eval.claims.comparisons; the model's k from the card's evaluation, :func:`card_figures`; the smallest where
    seeds chose differently); None without a card, an unreadable one, or no chosen Top-GAP model with a k."""
    try:
        card = load_card(folder)
    except CardError:
        return None
    if card is None:
        return None
    figures = card_figures(card)
    chosen = {v.get("model") for v in figures["verdicts"] if v.get("chosen")}
    ks = sorted(m["k"] for n, m in figures["models"].items()
                if n in chosen and m["kind"] == "topgap" and isinstance(m["k"], int))
    return ks[0] if ks else None

MAP_FIGURES = ("iou", "pxap", "mass_in_mask", "l1")  # each also per CAM protocol: "iou_paper", "iou_relu"
PROTOCOLS = ("paper", "relu")  # topgap.cam.PROTOCOLS, named here so that the app's start skips the CAM stack
FIGURES = (*MAP_FIGURES, *(f"{f}_{p}" for f in MAP_FIGURES for p in PROTOCOLS), "road", "white_box_rate",
           "black_box_rate")


def card_figures(card: dict) -> dict:
    """The card's headline figures, machine-readable: {title, models: {name: {kind, k, accuracy, collapsed, iou,
    pxap, mass_in_mask, l1 (older cards), iou_paper, iou_relu, ..., l1_relu, road, white_box_rate, black_box_rate}},
    verdicts} (missing figures are None)."""
    models = _get(card, "evaluation", "models") or {}
    num = lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None  # noqa: E731
    return {"title": card.get("title"),
            "models": {n: {"kind": m.get("kind"), "k": m.get("k"), "accuracy": num(_get(m, "clean", "accuracy")),
                           "collapsed": bool(_get(m, "collapsed", "flag")), **{f: num(m.get(f)) for f in FIGURES}}
                       for n, m in models.items() if isinstance(m, dict)},
            "verdicts": [v for v in card.get("verdicts") or [] if isinstance(v, dict)]}


def _evaluation_table(ev: dict) -> list[str]:
    """The card's evaluation table: accuracy, shifted accuracy, the map figures (under both CAM protocols side by
    side, or an older card's one post-processing), ROAD and robustness, one row per model."""
    models, shifts, eps = ev.get("models") or {}, list(ev.get("shifts") or {}), ev.get("eps")
    suffixes = [f"_{p}" for p in PROTOCOLS] if ev.get("protocols") else [""]
    names = {"iou": "IOU", "pxap": "PxAP", "mass_in_mask": "mass on object", "l1": "l1"}
    maps = [(f + s, names[f] + s.replace("_", " ")) for f in MAP_FIGURES for s in suffixes]
    how = (f"maps for the {'ground-truth' if ev.get('cam_target') == 'label' else 'predicted'} class, CAM protocols "
           "paper and relu" if ev.get("protocols") else f"maps post-processed {ev.get('postprocessing', '?')}")
    flag = lambda m: " ⚠ not converged" * (m.get("converged") is False) + " ⚠ collapsed" * bool(  # noqa: E731
        _get(m, "collapsed", "flag"))
    return [f"### Evaluation on {ev.get('dataset', '?')} / {ev.get('split', '?')} ({ev.get('n_images', '?')} images"
            + (f", eps = {eps * 255:.0f}/255" if eps else "") + f", {how})", "",
            markdown_table(["model", "k", "accuracy", *(f"{s} acc." for s in shifts), *(h for _, h in maps), "ROAD",
                    "white-box", "black-box"],
                   [[n + flag(m), str(m.get("k") if m.get("k") is not None else "–"),
                     _num(_get(m, "clean", "accuracy")), *(_num(_get(m, "shifts", s, "accuracy")) for s in shifts),
                     *(_num(m.get(k)) for k, _ in maps),
                     _num(m.get("road")), _num(m.get("white_box_rate")), _num(m.get("black_box_rate"))]
                    for n, m in models.items()])]


def _claims(data: dict, folder: Path) -> str:
    """:func:`topgap.eval.claims.render_claims` of a card's results or seeds; CardError when fields are missing."""
    from ..eval.claims import render_claims  # imported here: the evaluation stack stays out of the app's start

    try:
        return render_claims(data)
    except (KeyError, TypeError, AttributeError) as e:
        raise CardError(f"{folder / 'card.json'} has evaluation figures without their fields ({e!r}); rewrite it "
                        "with topgap card") from None


def render_card(folder: str | Path) -> tuple[str, list[tuple[Path, str]]]:
    """(Markdown, [(plot file, caption)]) of the family in `folder`: card_parts' summary and details in one."""
    summary, details, plots = card_parts(folder)
    return summary + ("\n\n" + details if details else ""), plots


def card_parts(folder: str | Path) -> tuple[str, str, list[tuple[Path, str]]]:
    """(summary, details, [(plot file, caption)]) of the family in `folder`: the summary is the title, the data and
    what reproduces and what does not (the verdicts in words, per CAM protocol); the details hold the tables, the
    training and the commands. The card machine's paths are shown as DATA and OUT/. A 'no card yet' line when there
    is no card.json.

    Raises:
        CardError: card.json is not valid JSON or not an object.
    """
    folder = Path(folder)
    card = load_card(folder)
    if card is None:
        return f"No model card yet for **{folder.name}**: run `topgap evaluate` then `topgap card` on it.", "", []
    ev = card.get("evaluation") or {}
    summary, details = [f"## {card.get('title') or folder.name}", "", str(card.get("data") or "")], []
    if card.get("seeds"):  # `topgap card --seeds-report`: the recipe over seeds first, then one seed's report
        from ..eval.seeds import seeds_markdown

        seeds = card["seeds"] if isinstance(card["seeds"], list) else [card["seeds"]]  # one dict in older cards
        for s in seeds:
            table, words = _split_claims(_claims(s, folder))
            summary += ["", "### Across seeds", "", words]
            details += ["", "### Across seeds (mean ± std)", "", *seeds_markdown(s, differences=False), "", table]
    if ev.get("models"):
        seed0 = " (seed 0)" * bool(card.get("seeds"))
        table, words = _split_claims(_claims(ev, folder))
        summary += ["", "### Top-GAP against the baseline" + seed0, "", words] if not card.get("seeds") else []
        details += ["", "### Top-GAP against the baseline" + seed0, "", table, words if card.get("seeds") else "",
                    *_evaluation_table(ev)]
    details += _training(card)
    if card.get("commands"):
        details += ["", "### Reproduce (DATA: the dataset's folder; OUT/: where runs go)", "", "```",
                    *map(str, card["commands"]), "```"]
    inside = lambda p: (folder / p).resolve().is_relative_to(folder.resolve()) and (folder / p).is_file()  # noqa: E731
    plots = [(folder / p, Path(p).stem.replace("_", " ")) for p in card.get("plots") or []
             if isinstance(p, str) and inside(p)]
    return _public("\n".join(summary)), _public("\n".join(details).strip()), plots


def _split_claims(text: str) -> tuple[str, str]:
    """A claims block as (its comparison table, its verdicts in words onwards)."""
    from ..eval.claims import IN_WORDS

    head, sep, words = text.partition(IN_WORDS)
    return (head.strip(), sep + words) if sep else ("", text)


def _training(card: dict) -> list[str]:
    training = card.get("training") or {}
    if not training:
        return []
    return ["", "### Training", "", f"Hardware: {card.get('hardware') or '–'}.", "",
            markdown_table(["model", "kind", "k", "backbone", "input", "epochs", "val acc.", "train s"],
                   [[n, str(t.get("kind", "–")), str(t.get("k") if t.get("k") is not None else "–"),
                     str(t.get("backbone", "–")), "x".join(map(str, t.get("input_size") or [])) or "–",
                     str(t.get("epochs", "–")), _num(t.get("val_accuracy")), _num(t.get("train_seconds"), 0)]
                    for n, t in training.items()])]
