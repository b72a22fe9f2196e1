"""The size prior as an assistant (paper, section 3.2): Top-GAP pools the top k of the h*w cells of each class
map; "when adjusting this parameter, it is crucial to consider the relative object size in the highest feature
map". An object covering a fraction f of the picture covers

    area = f * s * h * w   class-map cells,

where s is the picture's share of the model input (1, or less when a panorama is letterboxed); the trained k
nearest to that area on a log scale is the suggestion. The figures of every k for the current image come from the
:class:`~topgap.explorer.explain.Result` computed once per image (no model runs here).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.imageio import InputError
from .explain import Result, nearest_k

__all__ = ["parse_fraction", "mask_fraction", "picture_share", "SizeAdvice", "advise", "k_curves"]


def parse_fraction(value: float | str | None) -> float | None:
    """A typed object size: a number with 0 < f < 1, None when empty; anything else is refused in words."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"the object size must be a number between 0 and 1 (got {value!r}); e.g. 0.25 for an "
                         "object covering a quarter of the image") from None
    if not 0 < f < 1:
        raise InputError(f"the object size must be between 0 and 1, both excluded (got {f:g}); e.g. 0.25 for an "
                         "object covering a quarter of the image")
    return f


def mask_fraction(obj: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """The share of the picture an object mask covers: object pixels / pixels, both without the ignored ones
    (a trimap's boundary); 0 for a mask that ignores everything."""
    valid = np.ones_like(obj, bool) if ignore is None else ~ignore
    n = int(valid.sum())
    return float((obj & valid).sum()) / n if n else 0.0


def picture_share(result: Result) -> float:
    """The share of the model input that the picture fills (1 unless it was letterboxed)."""
    y0, y1, x0, x1 = result.box
    h, w = result.x01.shape[-2:]
    return (y1 - y0) * (x1 - x0) / (h * w)


@dataclass
class SizeAdvice:
    """The object's size in class-map cells and the trained k nearest to it."""
    fraction: float  # of the picture
    area: float  # class-map cells: fraction * share * h * w
    cam_size: tuple[int, int]
    k: int  # the trained k nearest to area (log scale)
    source: str  # where the size came from ("typed size", "uploaded mask", ...)

    def markdown(self) -> str:
        h, w = self.cam_size
        return (f"The object covers **{self.fraction:.1%}** of the image ({self.source}), about **{self.area:.1f}** of "
                f"the {h}x{w} = {h * w} class-map cells. The trained k nearest to that is **k = {self.k}** "
                f"({self.k / (h * w):.2%} of the map): Top-GAP at this k pools about as many cells as the object "
                "covers. The plot shows how this image's IOU, l1 and mass on the object change with k.")


def advise(fraction: float, cam_size: tuple[int, int], ks: list[int], share: float = 1.0,
           source: str = "typed size") -> SizeAdvice:
    """The advice for an object covering `fraction` of a picture that fills `share` of the model input."""
    h, w = cam_size
    area = fraction * share * h * w
    return SizeAdvice(fraction, area, cam_size, nearest_k(ks, max(area, 1e-9)), source)


def k_curves(result: Result) -> dict[str, list]:
    """IOU, l1 and mass on the object of every trained k for this image (None where no mask was given), and
    the baseline's single values: {"k": [...], "fraction": [k/(h*w)], "iou": [...], "l1": [...], "mass": [...],
    "baseline": {"iou", "l1", "mass"} or None}."""
    h, w = result.cam_size
    b = result.baseline
    return {"k": [m.k for m in result.topgap], "fraction": [m.k / (h * w) for m in result.topgap],
            **{key: [getattr(m, key) for m in result.topgap] for key in ("iou", "l1", "mass")},
            "baseline": {key: getattr(b, key) for key in ("iou", "l1", "mass")} if b else None}
