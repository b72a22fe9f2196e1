"""``topgap backgrounds``: the Backgrounds Challenge of Xiao, Engstrom, Ilyas, Madry ("Noise or Signal: The Role
of Image Backgrounds in Object Recognition", ICLR 2021), built from any dataset with masks.

Each image I of the source split, resized to one size, with foreground F (its mask's object pixels plus the
ignore band, e.g. an Oxford trimap's boundary, so the whole animal moves) becomes seven images:

    original     I
    only_fg      I on F, black elsewhere
    no_fg        black on F, I elsewhere
    only_bg_t    I with F filled by I's background texture T(I): the largest axis-aligned rectangle of I's
                 background, tiled in phase over the image (the rectangle's own pixels are unchanged)
    mixed_same   I on F, only_bg_t(J) elsewhere, J another image of I's class
    mixed_rand   I on F, only_bg_t(J) elsewhere, J any other image
    mixed_next   I on F, only_bg_t(J) elsewhere, J an image of the next class (index + 1, cyclic)

J is drawn from ``np.random.default_rng((seed, i))``: the same seed gives the same files. The output is the
folder format of :mod:`topgap.data.datasets`, one split per variant (``OUT/<variant>/<class>/<stem>.png``), with
I's mask as a trimap (1 object, 2 background, 3 ignore band) at ``OUT/masks/<variant>/<class>/<stem>.png``,
``classes.txt`` (the source's label order), ``metadata.csv`` (variant, file, class, foreground and background
source files) and ``backgrounds.json``. It is written to a temporary folder and renamed into place; nothing is
ever written into the source.
"""
from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_folder, write_json
from .datasets import CLASSES_FILE, IGNORE, open_dataset

__all__ = ["VARIANTS", "largest_rectangle", "only_bg_t", "paste", "make_variants", "build", "register", "run"]

VARIANTS = ("original", "only_fg", "no_fg", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")
_TRIMAP = np.zeros(256, np.uint8)  # dataset mask value (0 background, 1 object, 255 ignore) -> trimap value written
_TRIMAP[[0, 1, IGNORE]] = 2, 1, 3


def largest_rectangle(free: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y, x, h, w) of the largest all-True axis-aligned rectangle of a (H, W) bool map, or None if none.

    Row by row, the run heights of True pixels form a histogram whose largest rectangle a stack finds in
    O(W); ties go to the rectangle found first (lowest bottom row, then leftmost).
    """
    h_img, w_img = free.shape
    heights = [0] * (w_img + 1)  # the trailing 0 empties the stack at the end of each row
    best = (0, None)
    for r in range(h_img):
        row = free[r].tolist()
        for c in range(w_img):
            heights[c] = heights[c] + 1 if row[c] else 0
        stack: list[tuple[int, int]] = []  # (start column, height), heights increasing
        for c, h in enumerate(heights):
            start = c
            while stack and stack[-1][1] >= h:
                s, sh = stack.pop()
                if sh * (c - s) > best[0]:
                    best = (sh * (c - s), (r - sh + 1, s, sh, c - s))
                start = s
            stack.append((start, h))
    return best[1]


def only_bg_t(image: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """`image` with the `fg` pixels replaced by its largest background rectangle, tiled in phase."""
    rect = largest_rectangle(~fg)
    if rect is None:
        raise ValueError("the mask leaves no background pixel to take a texture from")
    y, x, h, w = rect
    rows = y + (np.arange(image.shape[0]) - y) % h
    cols = x + (np.arange(image.shape[1]) - x) % w
    return np.where(fg[..., None], image[rows][:, cols], image)


def paste(image: np.ndarray, fg: np.ndarray, background: np.ndarray | int) -> np.ndarray:
    """(H, W, 3) uint8: `image` where the (H, W) bool `fg` is set, `background` (an array of the image's shape,
    or one grey value) elsewhere. ``paste(image, ~fg, 0)`` blacks the object out (no_fg)."""
    if fg.shape != image.shape[:2]:
        raise ValueError(f"the mask is {fg.shape[1]}x{fg.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}; "
                         "give the mask of this image, at its size")
    return np.where(fg[..., None], image, background).astype(np.uint8)


def make_variants(image: np.ndarray, fg: np.ndarray, backgrounds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The seven variants of (H, W, 3) uint8 `image` with foreground `fg`; `backgrounds` holds only_bg_t of
    the images J chosen for mixed_same, mixed_rand and mixed_next (same size)."""
    out = {"original": image, "only_fg": paste(image, fg, 0), "no_fg": paste(image, ~fg, 0),
           "only_bg_t": only_bg_t(image, fg)}
    for name in ("mixed_same", "mixed_rand", "mixed_next"):
        out[name] = paste(image, fg, backgrounds[name])
    return out


def _partners(labels: list[int], class_names: list[str], seed: int) -> list[dict[str, int]]:
    """For each image i, the index J of its mixed_same, mixed_rand and mixed_next background."""
    num_classes = len(class_names)
    by_class = {c: [i for i, label in enumerate(labels) if label == c] for c in range(num_classes)}
    present = [c for c in range(num_classes) if by_class[c]]
    if len(present) < 2:
        raise ValueError("mixed_rand and mixed_next need images of at least 2 classes")
    out = []
    for i, c in enumerate(labels):
        rng = np.random.default_rng((seed, i))
        same = [j for j in by_class[c] if j != i]
        if not same:
            raise ValueError(f"class {class_names[c]} has a single usable image; mixed_same needs 2 per class")
        nxt = next(d for d in ((c + k) % num_classes for k in range(1, num_classes + 1)) if by_class[d])
        out.append({"mixed_same": same[rng.integers(len(same))],
                    "mixed_rand": [j for j in range(len(labels)) if j != i][rng.integers(len(labels) - 1)],
                    "mixed_next": by_class[nxt][rng.integers(len(by_class[nxt]))]})
    return out


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def build(source, out, *, split: str = "test", size: tuple[int, int] = (224, 224), seed: int = 0,
          fmt: str = "auto", labels: str = "breed", per_class: int | None = None, on_error: str = "stop",
          overwrite: bool = False) -> dict:
    """Write the seven variants of `source`'s `split` to `out` (see the module docstring); returns the summary.

    Args:
        source: a dataset with masks (folder format with masks/, or Oxford-IIIT Pet with its trimaps).
        size: (height, width) every image and mask is resized to (the variants mix images, so one size).
        per_class: only the first N images of each class (a quick look); None = all.
        on_error: "stop" raises on an image without a usable mask, "skip" leaves it out (listed in the summary).
        overwrite: replace an existing `out` that holds a backgrounds benchmark.
    """
    t0 = time.perf_counter()
    out, source = Path(out), Path(source)
    if source.exists() and (_inside(out, source) or _inside(source, out)):
        raise ValueError(f"{out} is inside the source {source} (or holds it); choose an output folder outside it")

    def check_out():
        if out.exists() and not overwrite:
            raise ValueError(f"{out} already exists; choose another folder or pass --overwrite")
        if out.exists() and not ((out / "backgrounds.json").is_file() or (out.is_dir() and not any(out.iterdir()))):
            raise ValueError(f"{out} exists and is not a backgrounds benchmark (no backgrounds.json); not replacing it")

    check_out()
    ds = open_dataset(source, split, input_size=size, fmt=fmt, labels=labels, on_error=on_error)
    images, masks, keep, skipped = [], [], [], []
    for i in range(len(ds)):
        if per_class is not None and sum(ds.labels[k] == ds.labels[i] for k in keep) >= per_class:
            continue
        item, name = ds[i], str(ds.items[i].source)
        mask = item["mask"].numpy()
        why = ("no mask" if not item["has_mask"] else "the mask marks no object" if not (mask == 1).any()
               else "the mask leaves no background to take a texture from" if (mask != 0).all() else None)
        if why:
            if on_error == "stop":
                raise ValueError(f"image {name}: {why}; give every image a mask that marks the object and some "
                                 "background, or pass --on-error skip to leave it out")
            skipped.append((name, why))
            continue
        images.append(np.rint(item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
        masks.append(mask)
        keep.append(i)
    labels_kept = [ds.labels[i] for i in keep]
    partners = _partners(labels_kept, ds.class_names, seed)
    textures = [only_bg_t(im, m != 0) for im, m in zip(images, masks)]
    names, taken = [], set()
    for i in keep:  # output file names: the source stem, made unique within its class
        stem, label = Path(str(ds.items[i].source)).stem, ds.labels[i]
        name = stem if (label, stem) not in taken else f"{stem}-{i}"
        taken.add((label, name))
        names.append(f"{ds.class_names[label]}/{name}.png")
    rel = lambda i: str(Path(str(ds.items[i].source)).relative_to(ds.root))  # noqa: E731
    rows = []
    with atomic_folder(out, check_out) as tmp:
        for n, (image, mask, name) in enumerate(zip(images, masks, names)):
            fg = mask != 0
            variants = make_variants(image, fg, {v: textures[j] for v, j in partners[n].items()})
            trimap = _TRIMAP[mask]
            for v, pixels in variants.items():
                for folder, a in ((tmp / v, pixels), (tmp / "masks" / v, trimap)):
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(a).save(folder / name)
                bg = keep[partners[n][v]] if v in partners[n] else keep[n] if v != "only_fg" else None
                rows.append([v, f"{v}/{name}", ds.class_names[labels_kept[n]], rel(keep[n]),
                             "" if bg is None else rel(bg)])
        (tmp / CLASSES_FILE).write_text("".join(f"{c}\n" for c in ds.class_names))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([["variant", "file", "class", "foreground", "background"]] + rows)
        (tmp / "metadata.csv").write_text(buf.getvalue())
        summary = {"source": str(source), "split": ds.split, "size": list(size), "seed": seed, "variants": list(VARIANTS),
                   "class_names": ds.class_names, "images_per_variant": len(keep),
                   "per_class": {c: labels_kept.count(k) for k, c in enumerate(ds.class_names)},
                   "skipped": skipped, "format": "folder", "metadata": "metadata.csv",
                   "reference": "Xiao et al., Noise or Signal: The Role of Image Backgrounds in Object Recognition, "
                                "ICLR 2021"}
        write_json(tmp / "backgrounds.json", summary)
    return {**summary, "out": str(out), "seconds": round(time.perf_counter() - t0, 2)}


def run(args: argparse.Namespace) -> dict:
    """Build the Backgrounds Challenge variants (Original, Only-FG, No-FG, Only-BG-T, Mixed-*) of a dataset."""
    size = (args.size[0], args.size[-1])
    return build(args.source, args.out, split=args.split, size=size, seed=args.seed, fmt=args.fmt,
                 labels=args.labels, per_class=args.per_class, on_error=args.on_error, overwrite=args.overwrite)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `backgrounds` subcommand."""
    p = subparsers.add_parser("backgrounds", help=run.__doc__, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="dataset with masks: folder format with masks/, or Oxford-IIIT Pet (trimaps)")
    p.add_argument("out", help="folder to create: one split per variant, read by topgap evaluate --split VARIANT")
    p.add_argument("--split", default="test", help="source split (default: test)")
    p.add_argument("--size", type=int, nargs="+", default=[224], metavar="PX",
                   help="output size: a side, or height and width (default: 224)")
    p.add_argument("--seed", type=int, default=0, help="draws the Mixed-* backgrounds (default: 0)")
    p.add_argument("--fmt", default="auto", choices=["auto", "folder", "oxford-pet"])
    p.add_argument("--labels", default="breed", choices=["breed", "species"], help="Oxford-IIIT Pet labels")
    p.add_argument("--per-class", type=int, help="only the first N images of each class (a quick look)")
    p.add_argument("--on-error", default="stop", choices=["stop", "skip"],
                   help="images without a usable mask: stop with their name, or leave them out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing backgrounds folder")
    p.set_defaults(func=run)
    return p
