"""Pick the app's example images from a `topgap synth` benchmark, judged by a trained family.

    python assets/make_examples.py --data /tmp/zoo/data --family models/synthetic-shapes

Writes assets/images/<stem>.png and assets/masks/<stem>.png (same stem) for: objects on their usual
background, objects on another background (the shortcut test), backgrounds without an object (only_bg;
no mask file, as there is no object), the shifted image the baseline gets most wrong, and any image some
model misclassifies. Only synthetic images, never photos.
"""
from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import torch

from topgap.checkpoint import load_family
from topgap.data import open_dataset
from topgap.model import Normalize

HERE = Path(__file__).resolve().parent


def predictions(models, dataset) -> dict[str, torch.Tensor]:
    """Softmax outputs of every model on the whole split: {name: (N, C)}."""
    x = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    out = {}
    with torch.no_grad():
        for name, (model, cfg) in models.items():
            out[name] = torch.softmax(model(Normalize(cfg.mean, cfg.std)(x)), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a topgap synth folder")
    p.add_argument("--family", required=True)
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    models = load_family(args.family)
    size = next(iter(models.values()))[1].input_size
    rows = list(csv.DictReader((data / "metadata.csv").open()))
    picks: dict[str, str] = {}
    for split, aligned, stem in (("test", "1", "usual-background"), ("test_shifted", "0", "other-background"),
                                 ("only_bg", "1", "background-only")):
        for r in rows:
            if r["split"] == split and r["aligned"] == aligned and f"{stem}-{r['class']}" not in picks:
                picks[f"{stem}-{r['class']}"] = r["file"]
    shifted = open_dataset(data, "test_shifted", input_size=size)
    probs = predictions(models, shifted)
    labels = torch.tensor(shifted.labels)
    base = probs.get("baseline")
    files = [str(Path(it.source).relative_to(data)) for it in shifted.items]
    for name, pr in probs.items():
        wrong = [files[i] for i in (pr.argmax(1) != labels).nonzero().flatten().tolist()]
        fresh = [f for f in wrong if f not in picks.values()]  # one image per model where there is one
        if fresh:
            picks[f"misclassified-by-{name}"] = fresh[0]
    if base is not None:
        order = base[torch.arange(len(labels)), labels].argsort().tolist()  # least sure of the true class first
        picks["baseline-least-sure"] = next(files[i] for i in order if files[i] not in picks.values())
    for folder in ("images", "masks"):
        shutil.rmtree(out / folder, ignore_errors=True)
        (out / folder).mkdir(parents=True)
    no_object = {r["file"] for r in rows if r["object_pixels"] == "0"}
    for stem, rel in sorted(picks.items()):
        shutil.copyfile(data / rel, out / "images" / f"{stem}.png")
        if rel not in no_object:
            shutil.copyfile(data / "masks" / rel, out / "masks" / f"{stem}.png")
    print("\n".join(f"{stem}: {rel}" for stem, rel in sorted(picks.items())))


if __name__ == "__main__":
    main()
