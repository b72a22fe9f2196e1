"""The background swap: the Backgrounds Challenge of ``topgap backgrounds`` (Xiao et al., ICLR 2021) made live on
one image and its mask.

The object (the mask's object pixels plus its ignore band, e.g. a trimap's boundary, as in ``topgap
backgrounds``) is pasted on other backgrounds (each texture, an optional second photo, blank grey), or removed
(No-FG: blacked out; Only-BG-T: filled with the image's own background texture). Every model of the family, each
k and the baseline, predicts and maps every variant through :func:`topgap.explorer.explain.explain_all`; the
metrics use the pasted object's mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..data.backgrounds import only_bg_t, paste
from .explain import Family, InputError, MapResult, Result, explain_all

__all__ = ["GREY", "NO_MASK", "Variant", "fit_background", "swap_images", "swap_all", "gallery", "table", "summary"]

GREY = 128  # the blank background
NO_MASK = ("this image has no mask: upload or draw a mask of the object in the Explain tab, then swap its "
           "background")


@dataclass
class Variant:
    """One swapped image and every model's answer on it."""
    name: str  # "original", "on grass", ..., "no_fg", "only_bg_t"
    about: str  # what the variant is, in words
    image: np.ndarray  # (H, W, 3) uint8
    result: Result  # every k and the baseline, with metrics against the object's mask

    def maps(self) -> list[MapResult]:
        return self.result.topgap + ([self.result.baseline] if self.result.baseline else [])


def fit_background(background: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`background` (H', W', 3) uint8 scaled to cover (H, W), aspect ratio kept, and centre-cropped to it."""
    h, w = size
    bh, bw = background.shape[:2]
    scale = max(h / bh, w / bw)
    sh, sw = max(h, round(bh * scale)), max(w, round(bw * scale))
    big = cv2.resize(background, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y0, x0 = (sh - h) // 2, (sw - w) // 2
    return np.ascontiguousarray(big[y0:y0 + h, x0:x0 + w])


def swap_images(image: np.ndarray, obj: np.ndarray, ignore: np.ndarray, textures: dict[str, np.ndarray],
                photo: np.ndarray | None = None) -> list[tuple[str, str, np.ndarray]]:
    """(name, about, image) of the original and each variant of (H, W, 3) uint8 `image` with (H, W) bool masks.

    Raises:
        InputError: the masks are not the image's size, mark no object, or leave no background.
    """
    h, w = image.shape[:2]
    if obj.shape != (h, w) or ignore.shape != (h, w):
        raise InputError(f"the mask is {obj.shape[1]}x{obj.shape[0]} but the image is {w}x{h}; give the mask of this "
                         "image (same size)")
    fg = obj | ignore
    if not obj.any():
        raise InputError("the mask marks no object pixel; draw or upload the object, nonzero pixels are the object")
    if fg.all():
        raise InputError("the mask covers the whole image, so there is no background to swap; mark only the object")
    out = [("original", "the image as given", image)]
    out += [(f"on {name}", f"the object on the texture {name}", paste(image, fg, fit_background(t, (h, w))))
            for name, t in textures.items()]
    if photo is not None:
        out.append(("on your photo", "the object on your second photo (scaled to cover, centre-cropped)",
                    paste(image, fg, fit_background(photo, (h, w)))))
    out += [("on grey", f"the object on blank grey ({GREY})", paste(image, fg, GREY)),
            ("no_fg", "the object blacked out (No-FG)", paste(image, ~fg, 0)),
            ("only_bg_t", "the object's region filled with the image's own background texture (Only-BG-T)",
             only_bg_t(image, fg))]
    return out


def swap_all(family: Family, result: Result, textures: dict[str, np.ndarray],
             photo: np.ndarray | None = None) -> list[Variant]:
    """Every variant of the explained image (`result`, which holds its mask) with every model's answer; the
    original is `result` itself (no model runs again)."""
    if result.mask is None:
        raise InputError(NO_MASK)
    obj, ignore = result.mask
    out = []
    for name, about, image in swap_images(result.image, obj, ignore, textures, photo):
        r = result if name == "original" else explain_all(family, image, method=result.method)
        out.append(Variant(name, about, image, r.with_mask(obj, ignore)))
    return out


def _model_name(m: MapResult, result: Result) -> str:
    return f"{m.name} ({result.method})" if m.kind == "baseline" else m.name


def gallery(variants: list[Variant]) -> list[tuple[np.ndarray, str]]:
    """Row by row: each variant's image, then each model's map on it; captions name variant, model, label, prob."""
    items = []
    for v in variants:
        items.append((v.image, f"{v.name}: input"))
        items += [(m.overlay, f"{v.name} · {_model_name(m, v.result)}: {m.label} {m.probability:.0%}")
                  for m in v.maps()]
    return items


def table(variants: list[Variant]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per variant, one column per model, each cell "label (prob)"."""
    headers = ["variant"] + [_model_name(m, variants[0].result) for m in variants[0].maps()]
    rows = [[v.name] + [f"{m.label} ({m.probability:.0%})" for m in v.maps()] for v in variants]
    return headers, rows


def summary(variants: list[Variant]) -> str:
    """Per model, in Markdown: how often it keeps the original's label with the object on another background, its
    mean CAM mass on the object there, and its labels once the object is removed."""
    original, rest = variants[0], variants[1:]
    pasted = [v for v in rest if v.name.startswith("on ")]
    removed = [v for v in rest if not v.name.startswith("on ")]
    lines = ["| model | label on the original | same label on other backgrounds | mass on the object there | "
             "without the object |", "|---|---|---|---|---|"]
    for i, m in enumerate(original.maps()):
        kept = sum(v.maps()[i].label == m.label for v in pasted)
        masses = [v.maps()[i].mass for v in pasted if v.maps()[i].mass is not None]
        mass = f"{np.mean(masses):.2f}" if masses else "–"
        gone = ", ".join(f"{v.name}: {v.maps()[i].label}" for v in removed)
        lines.append(f"| {_model_name(m, original.result)} | {m.label} ({m.probability:.0%}) | {kept}/{len(pasted)} | "
                     f"{mass} | {gone} |")
    return "\n".join(lines + ["", "A model that looks at the object keeps its label when only the background "
                              "changes, and its map stays on the object (mass near 1)."])
