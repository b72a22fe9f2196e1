"""A procedural benchmark with an explicit, controlled shortcut: the background agrees with the class (Waterbirds idea).

``generate(out)`` writes the folder format of :mod:`topgap.data`: splits train, val, test (the background is the
class's own with probability `bg_agreement` = p, else one of the others, uniformly), test_shifted (background drawn
independently of the class, agreement ~1/C), only_bg (the background alone, no object, labelled by the class whose
background it is: accuracy there measures how far the background alone predicts), masks/<split>/<class>/<stem>.png
as 0/255 PNGs (exact: the object pixels are the mask pixels; only_bg masks are empty), ``metadata.csv`` (one row
per image: split, file, class, background, whether the background is the class's own, object pixels, object
colour) and ``synth.json`` (parameters, class names, counts, measured agreement, the objects' mean area in pixels
and as a fraction of the image). The class is decided by the object alone.

Variants: "shapes" (circle, square, triangle, star; each object's area drawn uniformly from `object_area`, a
range of fractions of the image; colour independent of the class unless object_colour="per-class"; backgrounds
water, grass, sand, sky: distinct textures) and "cells" (small vs large nuclei, the size is the class, on a
violet- or teal-stained fluorescence background). To match Top-GAP's k to the objects, multiply the mean area
fraction by the class-map size h*w (a 96 px input and stride-4 class maps: 0.035 * 24 * 24 ~ k = 20).
Each image is drawn from ``np.random.default_rng((seed, split, index))``: the same seed gives the same bytes.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import time
from pathlib import Path

import cv2
import numpy as np

from ..io import atomic_folder, write_json

__all__ = ["generate", "render", "register", "run", "VARIANTS", "SPLITS", "OBJECT_AREA", "max_object_area"]

SPLITS = ("train", "val", "test", "test_shifted", "only_bg")
OBJECT_AREA = (0.02, 0.05)  # default range of a shape's area, as a fraction of the image
MIN_OBJECT_PX = 16  # smallest object, in pixels, that still shows its outline
VARIANTS = {
    "shapes": {"classes": ["circle", "square", "triangle", "star"], "backgrounds": ["water", "grass", "sand", "sky"]},
    "cells": {"classes": ["small", "large"], "backgrounds": ["violet", "teal"],
              "area": {"small": 0.012, "large": 0.035}},  # per nucleus, as a fraction of the image: the class
}
PALETTE = [(220, 40, 40), (245, 140, 20), (200, 40, 180), (120, 50, 200), (40, 40, 40), (245, 245, 245)]
CLASS_COLOURS = [0, 1, 2, 4]  # PALETTE entries of the shapes classes with object_colour="per-class"
CELL_PALETTE = [(120, 220, 255), (240, 240, 255), (255, 230, 120), (255, 140, 220)]
_SS = 4  # supersampling factor of the rasteriser (a pixel is object when >= half of it is covered)
_MARGIN = 2  # pixels kept free between an object and the image border


# ---------------------------------------------------------------- backgrounds

def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    return y, x


def _vgrad(s: int, top, bottom) -> np.ndarray:
    t = np.linspace(0, 1, s, dtype=np.float32)[:, None, None]
    return np.broadcast_to((1 - t) * np.float32(top) + t * np.float32(bottom), (s, s, 3)).copy()


def _blur_noise(rng, s: int, sigma: float) -> np.ndarray:
    n = rng.standard_normal((s, s)).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigma)
    return n / (n.std() + 1e-6)


def _water(rng, s):
    img = _vgrad(s, (30, 90, 150), (10, 45, 100))
    y, x = _grid(s)
    f, ph = rng.uniform(14, 22), rng.uniform(0, 2 * np.pi)
    wave = np.sin(f * y + 2.5 * np.sin(6 * x + ph) + ph) * np.sin(0.5 * f * y - 3 * x)
    img += wave[..., None] * np.float32((10, 22, 30)) + (wave > 0.8)[..., None] * np.float32((40, 50, 50))
    return img


def _grass(rng, s):
    img = _vgrad(s, (70, 130, 50), (40, 95, 30))
    img += _blur_noise(rng, s, s / 12)[..., None] * np.float32((8, 14, 6))
    n = 3 * s
    xs, ys = rng.uniform(0, s, n), rng.uniform(0, s, n)
    lens, tilts = rng.uniform(0.05, 0.12, n) * s, rng.uniform(-0.4, 0.4, n)
    shades = rng.uniform(-35, 35, n)
    for x0, y0, ln, t, sh in zip(xs, ys, lens, tilts, shades):
        x1, y1 = x0 + ln * math.sin(t), y0 - ln * math.cos(t)
        col = (60 + 0.6 * sh, 125 + sh, 40 + 0.4 * sh)
        cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), col, 1, cv2.LINE_AA)
    return img


def _sand(rng, s):
    img = _vgrad(s, (225, 200, 150), (200, 170, 120))
    y, x = _grid(s)
    ripple = np.sin(30 * (y + 0.15 * np.sin(5 * x + rng.uniform(0, 6))))
    img += ripple[..., None] * np.float32((6, 6, 5))
    img += rng.standard_normal((s, s, 1)).astype(np.float32) * np.float32((12, 11, 9))
    return img


def _sky(rng, s):
    img = _vgrad(s, (70, 130, 220), (175, 210, 245))
    cloud = np.zeros((s, s), np.float32)
    for _ in range(rng.integers(2, 5)):
        c = (int(rng.uniform(0, s)), int(rng.uniform(0, 0.8 * s)))
        axes = (int(rng.uniform(0.12, 0.25) * s), int(rng.uniform(0.05, 0.1) * s))
        cv2.ellipse(cloud, c, axes, 0, 0, 360, 1.0, -1)
    cloud = np.clip(cv2.GaussianBlur(cloud, (0, 0), s / 25) * (0.8 + 0.2 * _blur_noise(rng, s, s / 20)), 0, 1)
    return img * (1 - cloud[..., None]) + 245 * cloud[..., None]


def _stain(rng, s, tint):
    y, x = _grid(s)
    cy, cx = rng.uniform(0.2, 0.8, 2)
    light = 1.0 - 0.6 * ((y - cy) ** 2 + (x - cx) ** 2)  # uneven illumination
    haze = 0.5 + 0.25 * _blur_noise(rng, s, s / 10)
    img = (light * haze)[..., None] * np.float32(tint)
    for _ in range(rng.integers(3, 8)):  # out-of-focus debris
        c = (int(rng.uniform(0, s)), int(rng.uniform(0, s)))
        blob = np.zeros((s, s), np.float32)
        cv2.circle(blob, c, int(rng.uniform(0.01, 0.03) * s) + 1, 1.0, -1)
        img += cv2.GaussianBlur(blob, (0, 0), 1.5)[..., None] * np.float32(tint) * 0.6
    return img


BACKGROUNDS = {"water": _water, "grass": _grass, "sand": _sand, "sky": _sky,
               "violet": lambda rng, s: _stain(rng, s, (70, 30, 90)),
               "teal": lambda rng, s: _stain(rng, s, (20, 75, 75))}


# ---------------------------------------------------------------- objects

def _polygon(shape: str) -> np.ndarray:
    """Unit polygon (N, 2) of a shape, centred on 0, every vertex within radius 1."""
    if shape in ("circle", "small", "large"):
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) / math.sqrt(2)
    if shape == "triangle":
        t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return np.stack([np.cos(t), -np.sin(t)], 1)
    if shape == "star":
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), -r * np.sin(t)], 1)
    raise ValueError(f"unknown shape {shape!r}")


def _area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def max_object_area(variant: str, size: int) -> float:
    """Largest area fraction at which every class's shape fits the image at any rotation (circumradius r:
    2r + 2 * margin <= size, area = unit area * r^2)."""
    r = (size - 2 * _MARGIN - 1) / 2
    return min(_area(_polygon(c)) for c in VARIANTS[variant]["classes"]) * r * r / (size * size)


def _place(rng, shape: str, area_px: float, s: int, taken: np.ndarray, aspect: float = 1.0) -> np.ndarray | None:
    """A polygon (N, 2) in pixels of the given area, rotated, fully inside the image and off `taken`."""
    p = _polygon(shape) * np.array([aspect, 1.0])
    p = p * math.sqrt(area_px / _area(p))
    a = rng.uniform(0, 2 * np.pi)
    p = p @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    lo, hi = p.min(0), p.max(0)
    for _ in range(50):
        c = rng.uniform(-lo + _MARGIN, s - hi - _MARGIN)
        q = p + c
        x0, y0 = np.floor(q.min(0)).astype(int)
        x1, y1 = np.ceil(q.max(0)).astype(int) + 1
        if not taken[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2].any():
            return q
    return None


def _raster(polys: list[np.ndarray], s: int) -> np.ndarray:
    """(S, S) bool: pixels at least half covered by the polygons (drawn at 4x, area-averaged)."""
    big = np.zeros((s * _SS, s * _SS), np.uint8)
    pts = [np.round((p * _SS) * 16).astype(np.int32) for p in polys]
    cv2.fillPoly(big, pts, 255, cv2.LINE_8, shift=4)
    return cv2.resize(big, (s, s), interpolation=cv2.INTER_AREA) >= 128


def render(variant: str, label: int, background: int, size: int, rng: np.random.Generator, *,
           object_colour: str = "random", object_area: tuple[float, float] = OBJECT_AREA,
           draw_object: bool = True) -> dict:
    """One scene: {"image": (S, S, 3) uint8 RGB, "mask": (S, S) bool object pixels, "color": RGB or None}.

    The background (texture and sensor noise) is drawn first, so a scene with ``draw_object=False`` and the
    same generator state is the same image without the object; the object replaces exactly the mask pixels.
    object_colour (shapes): "random" draws it from PALETTE independently of the class (only the shape decides);
    "per-class" gives each class its own colour (colour alone then gives the label). object_area (shapes):
    the object's area is uniform in this range of fractions of the image.
    """
    spec = VARIANTS[variant]
    cls = spec["classes"][label]
    img = BACKGROUNDS[spec["backgrounds"][background]](rng, size)
    img += rng.standard_normal(img.shape).astype(np.float32) * (6 if variant == "cells" else 2.5)
    mask, color = np.zeros((size, size), bool), None
    if draw_object:
        polys = []
        if variant == "shapes":
            polys.append(_place(rng, cls, rng.uniform(*object_area) * size * size, size, mask))
            color = PALETTE[CLASS_COLOURS[label] if object_colour == "per-class" else rng.integers(len(PALETTE))]
            y, x = _grid(size)
            shade = 1.08 - 0.16 * (x + y) / 2
        else:
            color = CELL_PALETTE[rng.integers(len(CELL_PALETTE))]
            for _ in range(rng.integers(1, 4)):
                q = _place(rng, cls, spec["area"][cls] * size * size, size, mask, aspect=rng.uniform(0.7, 1.0))
                if q is not None:
                    polys.append(q)
                    mask |= _raster([q], size)
            shade = 0.85 + 0.075 * _blur_noise(rng, size, 1.5)
        mask = _raster(polys, size)
        obj = np.float32(color) * shade[..., None] + rng.standard_normal(img.shape).astype(np.float32) * 2.5
        img = np.where(mask[..., None], obj, img)
    return {"image": np.clip(np.rint(img), 0, 255).astype(np.uint8), "mask": mask,
            "color": None if color is None else tuple(int(c) for c in color)}


# ---------------------------------------------------------------- the benchmark

def _png(a: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", a[..., ::-1] if a.ndim == 3 else a)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _check(variant: str, size: int, bg_agreement: float, object_area, object_colour: str, on_exist: str,
           counts: dict) -> tuple[float, float]:
    """Validate the arguments of :func:`generate`; return the object area range (shapes)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)} (got {variant!r})")
    if not 0 <= bg_agreement <= 1:
        raise ValueError(f"bg_agreement (background-class agreement) is a probability in [0, 1] (got {bg_agreement}); "
                         "e.g. 0.5, 0.9 or 0.99")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels (got {size})")
    if min(counts.values()) < 0:
        raise ValueError("image counts must not be negative")
    if object_colour not in ("random", "per-class"):
        raise ValueError(f"object_colour must be 'random' or 'per-class' (got {object_colour!r})")
    if on_exist not in ("error", "overwrite"):
        raise ValueError(f"on_exist must be 'error' or 'overwrite' (got {on_exist!r})")
    if variant == "cells":
        if object_area is not None:
            raise ValueError("cells: the nucleus size is the class, so object_area (--object-area) applies to "
                             "shapes only; leave it out")
        return OBJECT_AREA
    lo, hi = OBJECT_AREA if object_area is None else (float(a) for a in object_area)
    if not 0 < lo <= hi < 1:
        raise ValueError(f"object_area is a range MIN MAX of fractions of the image area with 0 < MIN <= MAX < 1 "
                         f"(got {lo} {hi}); e.g. 0.02 0.05")
    if lo * size * size < MIN_OBJECT_PX:
        raise ValueError(f"object_area MIN {lo} is {lo * size * size:.1f} pixels at size {size}; an outline needs "
                         f"at least {MIN_OBJECT_PX}: raise MIN to {MIN_OBJECT_PX / size ** 2:.4f} or the size")
    if hi > (top := max_object_area(variant, size)):
        raise ValueError(f"object_area MAX {hi} does not fit every shape inside a {size} px image at any rotation; "
                         f"use at most {math.floor(top * 1000) / 1000}")
    return lo, hi


def generate(out, *, n_train: int = 1200, n_val: int = 300, n_test: int = 300, size: int = 96, seed: int = 0,
             bg_agreement: float = 0.9, object_area: tuple[float, float] | None = None, variant: str = "shapes",
             object_colour: str = "random", on_exist: str = "error") -> dict:
    """Write the benchmark to `out` (atomically) and return its summary (synth.json plus "out" and "seconds").

    n_test images each in test, test_shifted and only_bg. object_area: (min, max) fractions of the image
    (shapes; default OBJECT_AREA); the cells variant has its class sizes.
    """
    counts = {"train": n_train, "val": n_val, "test": n_test, "test_shifted": n_test, "only_bg": n_test}
    area = _check(variant, size, bg_agreement, object_area, object_colour, on_exist, counts)
    out = Path(out)

    def check_out():
        if out.exists() and on_exist == "error":
            raise ValueError(f"{out} already exists; choose another folder or pass on_exist='overwrite' "
                             "(CLI: --overwrite)")
        if out.exists() and not ((out / "synth.json").is_file() or (out.is_dir() and not any(out.iterdir()))):
            raise ValueError(f"{out} exists and is not a synth benchmark (no synth.json); refusing to overwrite it")

    check_out()
    t0 = time.perf_counter()
    spec = VARIANTS[variant]
    classes, backgrounds = spec["classes"], spec["backgrounds"]
    nc, nb = len(classes), len(backgrounds)
    rows, stats, object_px = [], {}, []
    with atomic_folder(out, check_out) as tmp:
        for si, split in enumerate(SPLITS):
            for c in classes:
                (tmp / split / c).mkdir(parents=True)
                (tmp / "masks" / split / c).mkdir(parents=True)
            per_class, aligned, pixels = {c: 0 for c in classes}, 0, []
            for i in range(counts[split]):
                rng = np.random.default_rng((seed, si, i))
                label = i % nc
                home = label % nb
                if split == "test_shifted":
                    bg = int(rng.integers(nb))
                elif split == "only_bg" or nb == 1 or rng.random() < bg_agreement:
                    bg = home
                else:
                    bg = int((home + 1 + rng.integers(nb - 1)) % nb)
                scene = render(variant, label, bg, size, rng, object_colour=object_colour, object_area=area,
                               draw_object=split != "only_bg")
                name = f"{classes[label]}/{i:05d}.png"
                (tmp / split / name).write_bytes(_png(scene["image"]))
                (tmp / "masks" / split / name).write_bytes(_png(scene["mask"].astype(np.uint8) * 255))
                per_class[classes[label]] += 1
                aligned += bg == home
                pixels.append(int(scene["mask"].sum()))
                colour = "" if scene["color"] is None else "#%02x%02x%02x" % scene["color"]
                rows.append([split, f"{split}/{name}", classes[label], backgrounds[bg], int(bg == home), pixels[-1],
                             colour])
            if split != "only_bg":
                object_px += pixels
            stats[split] = {"count": counts[split], "per_class": per_class,
                            "aligned_rate": round(aligned / counts[split], 4) if counts[split] else None,
                            "object_pixels_mean": round(float(np.mean(pixels)), 1) if pixels else None}
        mean_px = float(np.mean(object_px)) if object_px else None
        meta = {"variant": variant, "seed": seed, "size": size, "bg_agreement": bg_agreement,
                "object_colour": object_colour if variant == "shapes" else "random",
                "class_names": classes, "backgrounds": backgrounds,
                "home_background": {c: backgrounds[i % nb] for i, c in enumerate(classes)},
                "object_area_range": {c: list(area) if variant == "shapes" else [spec["area"][c]] * 2
                                      for c in classes},
                "object_area_px_mean": None if mean_px is None else round(mean_px, 1),
                "object_area_fraction_mean": None if mean_px is None else round(mean_px / size ** 2, 5),
                "objects_per_image": "1" if variant == "shapes" else "1-3 nuclei",
                "splits": stats,
                "expected_aligned_rate": {"train": bg_agreement, "val": bg_agreement, "test": bg_agreement,
                                          "test_shifted": 1 / nb, "only_bg": 1.0},
                "metadata": "metadata.csv", "format": "folder"}
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["split", "file", "class", "background", "aligned", "object_pixels", "object_colour"])
        w.writerows(rows)
        (tmp / "metadata.csv").write_text(buf.getvalue())
        write_json(tmp / "synth.json", meta)
    return {**meta, "out": str(out), "seconds": round(time.perf_counter() - t0, 2)}


def run(args: argparse.Namespace) -> dict:
    """Generate a synthetic benchmark with exact masks and a controlled background shortcut."""
    return generate(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, size=args.size,
                    seed=args.seed, bg_agreement=args.bg_agreement, object_area=args.object_area,
                    variant=args.variant, object_colour=args.object_colour,
                    on_exist="overwrite" if args.overwrite else "error")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `synth` subcommand."""
    p = subparsers.add_parser("synth", help=run.__doc__, description=__doc__,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out", help="folder to create (folder format: <split>/<class>/<image> + masks/)")
    p.add_argument("--n-train", type=int, default=1200, help="training images")
    p.add_argument("--n-val", type=int, default=300, help="validation images")
    p.add_argument("--n-test", type=int, default=300, help="images in test, test_shifted and only_bg each")
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bg-agreement", type=float, default=0.9,
                   help="p: probability that the background is the class's own (train/val/test)")
    p.add_argument("--object-area", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help=f"shapes: object area range as fractions of the image (default {OBJECT_AREA[0]} "
                        f"{OBJECT_AREA[1]})")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="shapes")
    p.add_argument("--object-colour", choices=["random", "per-class"], default="random",
                   help="shapes: random (independent of the class: only the shape decides) or per-class "
                        "(colour alone gives the label)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing benchmark folder")
    p.set_defaults(func=run)
    return p
