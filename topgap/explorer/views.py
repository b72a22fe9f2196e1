"""What the explorer's tabs say, as text and tables, from a stored Result (no model runs, no gradio)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .audit import BOUNDS, COLUMNS
from .card_view import markdown_table
from .explain import PROTOCOL_NAMES, InputError, MapResult, Result
from .session import Session, warning
from .sizeprior import SizeAdvice, advise, mask_fraction, parse_fraction, picture_share

__all__ = ["METHOD_INFO", "SIZE_HINT", "AUDIT_HELP", "metrics_md", "bias_rows", "bias_md", "audit_md", "size_advice",
           "road_md", "attack_md", "write_downloads"]

# the layer feeds global average pooling, so its gradient is constant over the map and their weightings agree
METHOD_INFO = "gradcam, hirescam and xgradcam give the same map here (the layer feeds GAP); scorecam is slow."
SIZE_HINT = ("Type the object's size as a fraction of the image (0 < f < 1), or upload or draw a mask of the object "
             "on the Explain tab: the assistant then says how many class-map cells it covers and which trained k "
             "is nearest.")
AUDIT_HELP = (f"Upload a zip of images or several image files (at most {BOUNDS.images} images, "
              f"{BOUNDS.upload // 2**20} MB uploaded, {BOUNDS.total // 2**20} MB unpacked, "
              f"{BOUNDS.member // 2**20} MB per image). Masks are optional: in the zip's `masks/` folder with the "
              "image's stem (`masks/cat.png` for `cat.jpg`), or named `<stem>_mask.png` / `<stem>.mask.png`. Every "
              "image runs through every k and the baseline of the family above, with the baseline CAM method above.")


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def metrics_md(result: Result, index: int, source: str | None) -> str:
    """The chosen k and the baseline: prediction, l1, IOU, threshold, mass on the object; then what the mask is."""
    chosen, base = result.view(index)
    rows = [("Top-GAP " + chosen.name, chosen)] + ([(f"baseline ({result.method})", base)] if base else [])
    lines = ["| map | prediction | l1 | IOU | threshold | mass on object |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {m.label} ({m.probability:.1%}) | {m.l1:.3f} | {_fmt(m.iou)} | {_fmt(m.threshold)} | "
              f"{_fmt(m.mass)} |" for n, m in rows]
    if result.pending:
        lines.append(f"| baseline ({result.pending}) | computing… | | | | |")
        lines.append(f"\n**{result.pending}** takes tens of seconds: it runs in its own queue, so the Top-GAP maps "
                     "above are final and other visitors are not held up; its map and figures follow.")
    lines.append(f"\nOwn CAM: {PROTOCOL_NAMES[result.protocol]}; baseline: pytorch-grad-cam's map (ReLU, then "
                 "min-max). l1 is the mean of each map at the class-map resolution (lower: sparser).")
    if result.has_mask:
        lines.append(f"\nIOU and mass on the object use the **{source}** of this image (shown under *Mask in use*).")
    else:
        lines.append("\nUpload or draw a mask to get IOU and mass on the object.")
    notes = result.notes + result.mask_notes
    if notes:
        lines.append("\n**Notes:** " + "; ".join(notes) + ".")
    return "\n".join(lines)


def bias_rows(result: Result) -> list[list]:
    """Every k and the baseline on this image: k, k/(h*w), prediction, probability, IOU, l1, mass."""
    h, w = result.cam_size
    rows = [[m.name, m.k, round(m.k / (h * w), 4), m.label, round(m.probability, 3), m.iou, m.l1, m.mass]
            for m in result.topgap]
    if result.baseline:
        b = result.baseline
        rows.append([f"{b.name} ({result.method})", None, None, b.label, round(b.probability, 3), b.iou, b.l1, b.mass])
    return [[round(v, 3) if isinstance(v, float) else v for v in row] for row in rows]


BIAS_HEADERS = ["model", "k", "k/(h*w)", "prediction", "prob", "IOU", "l1", "mass"]


def bias_md(result: Result) -> str:
    """bias_rows as a Markdown table (it wraps between words on a phone instead of scrolling)."""
    cell = lambda v: "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return markdown_table(BIAS_HEADERS, [[cell(v) for v in row] for row in bias_rows(result)])


AUDIT_SHOWN = ["image", "mask", "model", "label", "probability", "l1", "iou", "mass"]  # the CSV has every column


def audit_md(rows: list[list]) -> str:
    """The audit's headline figures per image and model as a Markdown table (it fits a phone; every column of
    COLUMNS is in the CSV). The mask column says whether the image had one."""
    index = [COLUMNS.index(c) for c in AUDIT_SHOWN]
    cell = lambda v: "–" if v is None or v == "" else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    body = [[cell(r[i]) if c != "mask" else ("yes" if r[i] else "–") for c, i in zip(AUDIT_SHOWN, index)]
            for r in rows]
    return markdown_table(["image", "mask", "model", "label", "prob", "l1", "IOU", "mass"], body)


def size_advice(sess: Session, typed) -> tuple[SizeAdvice | None, str]:
    """The size prior's advice from the typed size, else from the mask in use; (None, what to do) without either."""
    result = sess.result
    try:
        fraction = parse_fraction(typed)
    except InputError as e:
        return None, warning(e)
    source = "typed size"
    if fraction is None:
        if result.mask is None:
            return None, SIZE_HINT
        fraction, source = mask_fraction(*result.mask), sess.mask_source or "mask"
        if fraction == 0:
            return None, "⚠️ The mask in use marks no object pixel; draw or upload the object, or type its size."
    advice = advise(fraction, result.cam_size, result.ks, picture_share(result), source)
    return advice, advice.markdown()


def road_md(curves: dict[str, dict]) -> str:
    """ROAD and its score per percentile for every model, as a table with what it means."""
    rows = [f"| {n} | {c['road']:.3f} | " + " | ".join(f"{v:.3f}" for v in c["scores"]) + " |"
            for n, c in curves.items()]
    pcts = next(iter(curves.values()))["percentiles"]
    return "\n".join(["| model | ROAD | " + " | ".join(f"{p}%" for p in pcts) + " |",
                      "|---|" + "---|" * (len(pcts) + 1), *rows, "",
                      "ROAD (Rong et al., 2022) with the evaluation's implementation and blur imputation, each model "
                      "on its own prediction: higher means the map ranks pixels by their real influence."])


def attack_md(models: list[MapResult], adv: dict[str, MapResult], setup_text: str) -> str:
    """Clean and attacked label per model, whether it changed, and the attack's setup."""
    lines = ["| model | clean | attacked | changed |", "|---|---|---|---|"]
    for m in models:
        a = adv[m.name]
        lines.append(f"| {m.name} | {m.label} ({m.probability:.1%}) | {a.label} ({a.probability:.1%}) | "
                     f"{'yes' if a.label != m.label else 'no'} |")
    return "\n".join(lines) + "\n\n" + setup_text


def write_downloads(result: Result, index: int, folder: Path) -> list[Path]:
    """The chosen k's and the baseline's overlay and CAM as PNG, the CAM as .npy, and the JSON report."""
    chosen, base = result.view(index)
    files = []
    for m in [chosen] + ([base] if base else []):
        for suffix, array in (("overlay", m.overlay), ("cam", (m.cam * 255 + 0.5).astype(np.uint8))):
            files.append(folder / f"{m.name}_{suffix}.png")
            Image.fromarray(array).save(files[-1])
        files.append(folder / f"{m.name}_cam.npy")
        np.save(files[-1], m.cam)
    files.append(folder / "report.json")
    files[-1].write_text(json.dumps(result.report(index), indent=2))
    return files
