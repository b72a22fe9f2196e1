"""Turn the masks people bring into (object, ignore) boolean maps.

Encodings understood by ``encoding="auto"``:
- RGBA or LA drawings: alpha > 0 is object (an all-opaque image falls back to its colour values);
- Oxford-IIIT Pet trimaps: values within {1, 2, 3} with no 0: 1 pet = object, 2 = background,
  3 = boundary, which `boundary` decides: "ignore" (default: left out of IOU and mass, as the
  band is where annotators could not tell), "object" or "background";
- everything else: nonzero = object (0/1, 0/255, palette indices, coloured strokes on black); an
  8-bit map with more than 16 grey levels (anti-aliased or JPEG-saved) is cut at 128.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["binary_mask", "TRIMAP"]

TRIMAP = {"object": 1, "background": 2, "boundary": 3}


def _is_trimap(values: np.ndarray) -> bool:
    u = np.unique(values)
    return u.size > 0 and set(u.tolist()) <= {1, 2, 3} and 2 in u


def binary_mask(mask, *, encoding: str = "auto", boundary: str = "ignore") -> tuple[np.ndarray, np.ndarray]:
    """(object, ignore): two (H, W) bool arrays from a PIL image or an array.

    Args:
        mask: PIL image (any mode) or array of shape (H, W), (H, W, 3) or (H, W, 4).
        encoding: "auto", "binary" (nonzero = object), "trimap" or "alpha".
        boundary: what trimap value 3 becomes: "ignore", "object" or "background".
    """
    if encoding not in ("auto", "binary", "trimap", "alpha"):
        raise ValueError(f"encoding must be auto, binary, trimap or alpha (got {encoding!r})")
    if boundary not in ("ignore", "object", "background"):
        raise ValueError(f"boundary must be ignore, object or background (got {boundary!r})")
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            mask = mask.convert("RGBA")
        elif mask.mode == "CMYK":
            mask = mask.convert("RGB")
        mask = np.asarray(mask)  # a palette image ("P") gives its indices, not its colours
    a = np.asarray(mask)
    if a.ndim == 3 and a.shape[2] in (2, 4):
        alpha, colour = a[..., -1], a[..., :-1]
        if encoding == "alpha" or (encoding == "auto" and (alpha < alpha.max()).any()):
            obj = alpha > 0
            return obj, np.zeros_like(obj)
        a = colour
    if a.ndim == 3:
        a = a.max(-1)  # any channel set marks the pixel
    if a.ndim != 2:
        raise ValueError(f"a mask must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    if a.size == 0:
        raise ValueError("the mask is empty (0 pixels)")
    if encoding == "trimap" or (encoding == "auto" and _is_trimap(a)):
        bad = ~np.isin(a, (1, 2, 3))
        if bad.any():
            raise ValueError(f"a trimap holds only 1 (object), 2 (background), 3 (boundary); found {np.unique(a[bad])[:5]}")
        band = a == TRIMAP["boundary"]
        obj = (a == TRIMAP["object"]) | (band if boundary == "object" else False)
        ignore = band if boundary == "ignore" else np.zeros_like(band)
        return obj, ignore
    if a.dtype == np.uint8 and np.unique(a).size > 16:
        obj = a >= 128
    else:
        obj = a != 0
    return obj, np.zeros_like(obj)
