"""The claims of every summary, rendered from one results.json or seeds.json: nothing picked, nothing left out.

Every comparison of every Top-GAP model (and the FPN-only control) with the baseline is rendered, better and worse
alike, in one fixed order decided before any result (:data:`METRIC_ORDER`, models by k, controls last), each with
its CAM protocol (paper / relu), its CAM target and its 95% interval. Then plain words per model, which only restate
the verdicts ("better under relu, not under paper"), and the paper's claims (:data:`PAPER_CLAIMS`) that do not
reproduce. README.md, every models/*/README.md and the app's Card tab show this rendering, between the markers
``<!-- claims: SOURCE -->`` and ``<!-- /claims -->``; ``topgap claims`` fails when a block differs from it.

Pure Python and numpy: the app's Card tab imports it without torch.
"""
from __future__ import annotations

import re

from .stats import MAP_METRICS, higher_is_better, is_control

__all__ = ["METRIC_ORDER", "PAPER_CLAIMS", "PROMISE", "comparisons", "render_claims"]

PROTOCOL_ORDER = ("paper", "relu")
METRIC_ORDER = ("accuracy", *MAP_METRICS, "road", "attacks", "shifts", "bg_gap")  # "attacks"/"shifts": their keys
LABELS = {"accuracy": "accuracy", "l1": "l1", "iou": "IOU", "mass_in_mask": "mass in mask", "pxap": "PxAP",
          "maxboxacc_v2": "MaxBoxAccV2", "road": "ROAD", "bg_gap": "BG-Gap"}
JUDGED = ("better", "worse", "no clear difference")  # verdicts; anything else says why there is none
TARGETS = {"label": "ground-truth class", "predicted": "predicted class"}

# The paper's claims, Top-GAP against the unmodified model: (metric prefix, what the paper reports, verdict needed).
PAPER_CLAIMS = (
    ("accuracy", "comparable clean accuracy (Table 3)", ("better", "no clear difference")),
    ("l1", "a sparser CAM than GradCAM on the baseline (Table 2)", ("better",)),
    ("iou", "a higher IOU than GradCAM on the baseline (Table 7)", ("better",)),
    ("fgsm", "more images survive FGSM (Table 3; judged here on 'still correct', the paper counts 'unchanged')",
     ("better",)),
    ("pgd", "more images survive PGD (Tables 3, 4; 'still correct')", ("better",)),
    ("shift", "higher accuracy under distribution shift (Table 5)", ("better",)),
)


def _split_key(key: str) -> tuple[str, str | None]:
    """'l1_paper' -> ('l1', 'paper'); 'fgsm_correct' -> ('fgsm_correct', None)."""
    for p in PROTOCOL_ORDER:
        if key.endswith(f"_{p}") and key.removesuffix(f"_{p}") in MAP_METRICS:
            return key.removesuffix(f"_{p}"), p
    return key, None


def _rank(metric: str, shifts: list[str]) -> tuple | None:
    """Sort key of a base metric in :data:`METRIC_ORDER`; None for figures left out: GradCAM on a Top-GAP model,
    and the paper's 'unchanged' attack rate (results.json compares 'still correct' only; its tables show both)."""
    if metric in METRIC_ORDER:
        return (METRIC_ORDER.index(metric), 0, "")
    attack = re.fullmatch(r"(fgsm|pgd(\d+)|autoattack|square|transfer)_correct", metric)
    if attack:
        order = ("fgsm", "pgd", "autoattack", "square", "transfer")
        name = re.sub(r"\d+", "", attack.group(1))
        return (METRIC_ORDER.index("attacks"), order.index(name), f"{int(attack.group(2) or 0):06d}")
    shift = metric.removesuffix("_accuracy")
    if metric.endswith("_accuracy") and shift in shifts:
        return (METRIC_ORDER.index("shifts"), shifts.index(shift), "")
    return None


def _models(models: dict) -> list[str]:
    """Top-GAP models by k, then other poolings by name, then the FPN-only controls; the baseline is the reference,
    not a column."""
    ours = [n for n, m in models.items() if m.get("kind") == "topgap" and not is_control(m)]
    return sorted((n for n in ours if models[n].get("k") is not None), key=lambda n: models[n]["k"]) + \
        sorted(n for n in ours if models[n].get("k") is None) + [n for n, m in models.items() if is_control(m)]


def _chosen(data: dict) -> list[str]:
    """The models chosen on validation data: a results.json's selection, or seeds.json's per-seed selections."""
    if "differences" in data:
        return list(dict.fromkeys(s for s in data.get("selected") or [] if s))
    return [v["model"] for v in ((data.get("selection") or {}).get("by") or {}).values()]


def _choice_words(data: dict) -> str:
    """'k64' for one report; 'k64 in 2 of 3 seeds, k1024 in 1' when the seeds chose differently."""
    if "differences" not in data:
        return ", ".join(_chosen(data))
    picks = [s for s in data.get("selected") or [] if s]
    counts = {n: picks.count(n) for n in dict.fromkeys(picks)}
    if len(counts) == 1:
        return f"{picks[0]} in every seed" if len(picks) == data["n_seeds"] else f"{picks[0]} in {len(picks)} seeds"
    return ", ".join(f"{n} in {c} of {data['n_seeds']} seeds" for n, c in counts.items())


def comparisons(data: dict) -> list[dict]:
    """Every comparison with the baseline, in the fixed order: [{"model", "metric", "protocol", "target", "diff",
    "low", "high", "verdict", "chosen"}]. `data`: a results.json (bootstrap intervals over images) or a seeds.json
    (Student-t intervals over seeds)."""
    models, shifts = data["models"], list(data.get("shifts") or [])
    if "differences" in data:
        per_model = {n: data["differences"].get(n) or {} for n in _models(models)}
    else:
        base = next((n for n, m in models.items() if m.get("kind") == "baseline"), None)
        per_model = {n: ((models[n].get("comparisons") or {}).get(base) or {}) for n in _models(models)}
    target, chosen = data.get("cam_target"), set(_chosen(data))
    rows = []
    for n, cmp in per_model.items():
        for key, c in cmp.items():
            metric, protocol = _split_key(key)
            rank = _rank(metric, shifts)
            if rank is None or c.get("diff") is None:
                continue
            rows.append({"model": n, "metric": metric, "protocol": protocol,
                         "target": target if metric in MAP_METRICS else None, "diff": c["diff"], "low": c.get("low"),
                         "high": c.get("high"), "verdict": c["verdict"], "chosen": n in chosen,
                         "_rank": (rank, PROTOCOL_ORDER.index(protocol) if protocol else -1)})
    order = {n: i for i, n in enumerate(per_model)}
    rows.sort(key=lambda r: (r["_rank"], order[r["model"]]))
    return [{k: v for k, v in r.items() if k != "_rank"} for r in rows]


def _label(metric: str) -> str:
    if metric in LABELS:
        return LABELS[metric]
    if metric.endswith("_correct"):
        name = metric.removesuffix("_correct")
        name = f"PGD-{name[3:]}" if name.startswith("pgd") else {"fgsm": "FGSM", "autoattack": "AutoAttack"}.get(
            name, name.capitalize())
        return f"{name} correct"
    return f"{metric.removesuffix('_accuracy')} accuracy" if metric.endswith("_accuracy") else metric


def _cell(r: dict) -> str:
    if r["low"] is None:
        return f"{r['diff']:+.3f} {r['verdict']}"
    word = f"**{r['verdict']}**" if r["verdict"] in ("better", "worse") else r["verdict"]
    return f"{r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}] {word}"


def _table(rows: list[dict], names: list[str], chosen: set[str]) -> list[str]:
    header = ["metric", "protocol", *(f"{n} (chosen)" if n in chosen else n for n in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = list(dict.fromkeys((r["metric"], r["protocol"]) for r in rows))
    for metric, protocol in keys:
        cells = {r["model"]: _cell(r) for r in rows if (r["metric"], r["protocol"]) == (metric, protocol)}
        arrow = "↑" if higher_is_better(metric) else "↓"
        lines.append("| " + " | ".join([f"{_label(metric)} {arrow}", protocol or "–",
                                        *(cells.get(n, "–") for n in names)]) + " |")
    return lines


def _in_words(rows: list[dict], names: list[str]) -> list[str]:
    """Per model: the metrics it is better / worse on, with the protocols where that holds."""
    out = []
    for n in names:
        mine = [r for r in rows if r["model"] == n]
        parts = []
        for word in ("better", "worse"):
            items = []
            for metric in dict.fromkeys(r["metric"] for r in mine):
                hits = [r for r in mine if r["metric"] == metric]
                yes = [r["protocol"] for r in hits if r["verdict"] == word]
                if not yes:
                    continue
                if len(yes) == len(hits):
                    where = " (both protocols)" if len(hits) > 1 else f" ({yes[0]})" * bool(yes[0])
                    items.append(_label(metric) + where)
                else:
                    items.append(f"{_label(metric)} (under {', '.join(yes)}, not under "
                                 f"{', '.join(r['protocol'] for r in hits if r['verdict'] != word)})")
            parts.append(f"{word} on {', '.join(items)}" if items else f"{word} on nothing")
        if mine and all(r["verdict"] not in JUDGED for r in mine):
            parts = [f"no verdicts ({mine[0]['verdict']})"]
        out.append(f"- **{n}**: " + "; ".join(parts) + ".")
    return out


def _not_reproduced(rows: list[dict], names: list[str], chosen: list[str], controls: set[str]) -> list[str]:
    """Each of the paper's claims that a judged model does not show, one line per claim with the figures."""
    judged = [n for n in (chosen or names) if n in names and n not in controls]
    if all(r["verdict"] == "descriptive" for r in rows if r["model"] in judged):
        return ["- no verdicts: no k was chosen on validation data."]
    out = []
    for prefix, claim, needed in PAPER_CLAIMS:
        misses = []
        for r in rows:
            kind = "shift" if r["metric"].endswith("_accuracy") and r["metric"] != "accuracy" else r["metric"]
            if r["model"] not in judged or not kind.startswith(prefix) or r["verdict"] in needed:
                continue
            if r["verdict"] not in JUDGED:
                continue  # not converged or collapsed: no verdict, shown as such in the table
            if kind == "shift" and not higher_is_better(r["metric"]):
                continue  # accuracy on the background alone: the paper claims nothing about it
            where = ", ".join(x for x in (_label(r["metric"]) if prefix in ("shift", "pgd") else "", r["protocol"])
                              if x)
            misses.append(f"**{r['model']}**{f' ({where})' if where else ''} {_cell(r)}")
        if misses:
            out.append(f"- {claim}: " + "; ".join(misses) + ".")
    return out


PROTOCOL_WORDS = {"paper": "paper protocol (min-max of the raw map)", "relu": "ReLU-first"}
PROMISE = ("l1", "iou", "mass_in_mask")  # the promise is judged on the first two; mass in mask is shown beside them


def _promise(rows: list[dict], chosen: list[str], names: list[str]) -> list[str]:
    """Per protocol, for each chosen model: is its own CAM sparser **and** more on the object than GradCAM on the
    baseline (l1 and IOU both better, reports/prior-study/PROTOCOL.md)? One line per protocol, figures beside it."""
    judged = [n for n in chosen if n in names]
    if not judged:
        return ["- not answered: no k was chosen on validation data."]
    out = []
    for n in judged:
        for protocol in PROTOCOL_ORDER:
            hits = {r["metric"]: r for r in rows if r["model"] == n and r["protocol"] == protocol
                    and r["metric"] in PROMISE}
            if not {"l1", "iou"} <= set(hits):
                continue
            verdicts = {hits[m]["verdict"] for m in ("l1", "iou")}
            answer = ("**yes**" if verdicts == {"better"} else
                      f"not answered ({hits['l1']['verdict']})" if not verdicts & set(JUDGED) else "**no**")
            figures = "; ".join(f"{_label(m)} {_cell(hits[m])}" for m in PROMISE if m in hits)
            out.append(f"- **{n}**, {PROTOCOL_WORDS[protocol]}: {answer} ({figures}).")
    return out or ["- not answered: this report has no l1 and IOU comparison of the chosen model."]


IN_WORDS = "In words (the verdicts above, nothing else):"  # the claims block's summary starts here


def render_claims(data: dict) -> str:
    """The claims block: the comparison table, the verdicts in words, what does not reproduce (Markdown)."""
    rows, names = comparisons(data), _models(data["models"])
    chosen = _chosen(data)
    seeds = "differences" in data
    target = TARGETS.get(data.get("cam_target"))
    how = (f"{data['n_seeds']} seeds: mean of the per-seed differences, 95% Student-t interval over seeds" if seeds
           else f"{data['n_images']} images: 95% paired bootstrap interval")
    if not rows:
        return "No comparison with a baseline in this report."
    verdicts = {r["verdict"] for r in rows}
    maps = f"CAMs for the {target}" if target else "CAMs for the class the report names"
    out = [f"Model minus baseline on {data['dataset']} / {data['split']} ({how}); {maps}, the baseline's by GradCAM. "
           "better / worse only when the interval excludes 0"
           + ("; 'descriptive': no k was chosen on validation data, so no verdict." if "descriptive" in verdicts
              else ".")
           + (f" Chosen on validation data: {_choice_words(data)}." if chosen else ""), "",
           *_table(rows, names, set(chosen)), "", IN_WORDS, "",
           *_in_words(rows, names), ""]
    controls = {n for n in names if is_control(data["models"][n])}
    missing = _not_reproduced(rows, names, chosen, controls)
    scope = ("the chosen model" if len(chosen) == 1 else "the models chosen in some seed") if chosen else \
        "every Top-GAP model"
    out += [f"What the paper reports that does not reproduce here ({scope}):", "",
            *(missing or ["- nothing: every claim of the paper that this report measures holds."]), "",
            "The promise: is the chosen model's own CAM sparser **and** more on the object than GradCAM on the baseline "
            "(yes only when l1 and IOU are both better)?", "", *_promise(rows, chosen, names)]
    return "\n".join(out)
