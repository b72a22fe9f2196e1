"""Render one picture of every split of a `topgap synth` benchmark: rows = splits, columns = classes.

    topgap synth /tmp/synth --seed 0 && python assets/synth_splits.py /tmp/synth --out docs/synth-splits.png

Each panel is the first image of its class in that split (in test_shifted the first on another class's
background), titled with its class and background (in italics when it is not the class's own), the exact object
mask outlined in cyan. Saved with a 256-colour palette to stay small (about 150 KB).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from topgap.data.synth import SPLITS  # noqa: E402
from topgap.io import atomic_write  # noqa: E402

CAPTIONS = {"train": "train (p)", "val": "val (p)", "test": "test (p)", "test_shifted": "test_shifted (1/C)",
            "only_bg": "only_bg (no object)"}


def picks(root: Path) -> dict[tuple[str, str], dict]:
    """(split, class) -> the first metadata row of that class in that split (test_shifted: on another background)."""
    out: dict[tuple[str, str], dict] = {}
    with open(root / "metadata.csv") as f:
        for r in csv.DictReader(f):
            if r["split"] != "test_shifted" or r["aligned"] == "0":
                out.setdefault((r["split"], r["class"]), r)
    return out


def render_grid(root: str | Path, out: str | Path, splits: tuple[str, ...] = SPLITS, dpi: int = 80) -> Path:
    """Write the grid PNG of `root` (a topgap synth folder) to `out`, atomically."""
    root = Path(root)
    meta = json.loads((root / "synth.json").read_text())
    classes, rows = meta["class_names"], picks(root)
    fig, axes = plt.subplots(len(splits), len(classes), figsize=(1.6 * len(classes), 1.75 * len(splits)),
                             squeeze=False)
    for i, split in enumerate(splits):
        for j, cls in enumerate(classes):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            r = rows.get((split, cls))
            if r is None:
                continue
            image = cv2.cvtColor(cv2.imread(str(root / r["file"])), cv2.COLOR_BGR2RGB)
            mask = cv2.imread(str(root / "masks" / r["file"]), cv2.IMREAD_GRAYSCALE) > 0
            ax.imshow(image, interpolation="nearest")
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_title(f"{cls} / {r['background']}", fontsize=7,
                         style="normal" if r["aligned"] == "1" else "italic")
            if j == 0:
                ax.set_ylabel(CAPTIONS.get(split, split), fontsize=8)
    fig.suptitle(f"topgap synth: p = {meta['bg_agreement']}, objects {meta['object_area_fraction_mean']:.1%} "
                 "of the image on average", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    picture = Image.open(buf).convert("RGB").quantize(256)
    return atomic_write(out, lambda tmp: picture.save(tmp, format="PNG", optimize=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a topgap synth folder")
    p.add_argument("--out", default="docs/synth-splits.png")
    p.add_argument("--dpi", type=int, default=80)
    args = p.parse_args()
    path = render_grid(args.data, args.out, dpi=args.dpi)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
