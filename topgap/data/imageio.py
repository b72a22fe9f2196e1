"""Decode the images and masks people upload into RGB uint8 arrays and (object, ignore) masks, safely.

Images:
- at most :data:`MAX_PIXELS` (40 MP): Pillow's limit is lowered and its DecompressionBombWarning is an
  error, so a tiny file that decodes to a huge canvas is refused before it is decoded;
- EXIF orientation applied (``ImageOps.exif_transpose``); multi-frame files give their first frame;
- 16-bit ("I;16*", "I") rescaled by bit depth (values <= 255 are taken as 8-bit, <= 65535 as 16-bit);
  float ("F") taken as [0, 1] when it lies there, as [0, 255] when it lies there, else min-max scaled;
- transparency (RGBA, LA, PA, palette with a transparent index) is composited on **white**;
- CMYK, grayscale, YCbCr, HSV, 1-bit converted to RGB.

Masks go through the same safe decoding, then :func:`topgap.data.masks.binary_mask` (0/255, 0/1, palette
indices, trimaps, RGBA drawings) and are resized to the image with nearest neighbour.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .masks import binary_mask

__all__ = ["MAX_PIXELS", "BACKGROUND", "InputError", "open_image", "to_rgb", "decode_image", "decode_mask",
           "drawn_mask", "fit_mask"]

MAX_PIXELS = 40_000_000
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


class InputError(ValueError):
    """An upload that cannot be used; the message says what was wrong and what to do."""


def _too_big(w: int, h: int) -> InputError:
    return InputError(f"the image is {w}x{h} = {w * h / 1e6:.0f} MP, more than the {MAX_PIXELS / 1e6:.0f} MP "
                      "this app accepts; downscale it (e.g. to 2000 px on the long side) and upload it again")


def open_image(src: str | Path | bytes | Image.Image) -> Image.Image:
    """Open and fully decode an image file (path or bytes) or check an already opened PIL image.

    Raises:
        InputError: not an image, truncated, too many pixels, or zero-sized.
    """
    try:
        img = src if isinstance(src, Image.Image) else Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise _too_big(w, h)
        if w == 0 or h == 0:
            raise InputError(f"the image is {w}x{h} pixels: it holds no pixel; upload a real image")
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
        return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"the image has more than {MAX_PIXELS / 1e6:.0f} MP (a decompression bomb?); "
                         "downscale it and upload it again") from None
    except UnidentifiedImageError:
        raise InputError("this file is not an image Pillow can read; upload a PNG, JPEG, WEBP, TIFF or BMP") from None
    except (OSError, SyntaxError, EOFError) as e:
        raise InputError(f"the image file is broken or truncated ({e}); re-save it as PNG or JPEG and upload "
                         "it again") from None


def _float_to_unit(a: np.ndarray) -> tuple[np.ndarray, str | None]:
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1:
        return a, None
    if lo >= 0 and hi <= 255:
        return a / 255, None
    span = hi - lo
    return ((a - lo) / span if span > 0 else np.zeros_like(a)), f"float values {lo:.3g}..{hi:.3g} min-max scaled"


def to_rgb(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    """(H, W, 3) uint8 RGB of a decoded PIL image of any mode, and notes on what was assumed."""
    notes: list[str] = []
    transposed = ImageOps.exif_transpose(img)
    if transposed.size != img.size or img.getexif().get(0x0112, 1) != 1:
        notes.append("EXIF orientation applied")
    img = transposed
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        a = np.clip(a, 0, None)
        hi = float(a.max())
        depth = 8 if hi <= 255 and mode == "I" else 16 if hi <= 65535 else 32
        a = a / (2 ** depth - 1)
        notes.append(f"{depth}-bit grayscale rescaled to 8 bits")
        return np.repeat((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2), notes
    if mode == "F":
        a, note = _float_to_unit(np.asarray(img))
        notes.append(note or "float grayscale rescaled to 8 bits")
        return np.repeat((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=2), notes
    transparent = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and
                                                                  "transparency" in img.info)
    if transparent:
        rgba = img.convert("RGBA")
        if np.asarray(rgba)[..., 3].min() < 255:
            notes.append("transparent pixels composited on white")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB")).copy(), notes
    if mode != "RGB":
        try:
            img = img.convert("RGB")
        except ValueError:
            raise InputError(f"images in colour mode {mode} are not supported; save it as RGB PNG or JPEG") from None
        if mode == "CMYK":
            notes.append("CMYK converted to RGB")
    return np.asarray(img).copy(), notes


def decode_image(src: str | Path | bytes | Image.Image | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Any upload (path, bytes, PIL image, array) -> ((H, W, 3) uint8 RGB, notes)."""
    if isinstance(src, np.ndarray):
        if src.ndim == 2:
            src = src[..., None]
        if src.ndim != 3 or src.shape[2] not in (1, 3, 4):
            raise InputError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {src.shape}")
        if src.dtype != np.uint8:
            if src.dtype.kind == "f":
                src, _ = _float_to_unit(src)
                src = (src * 255 + 0.5).astype(np.uint8)
            else:
                src = np.clip(src, 0, 255).astype(np.uint8)
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[src.shape[2]]
        src = Image.fromarray(src[..., 0] if mode == "L" else src, mode)
    return to_rgb(open_image(src))


def decode_mask(src: str | Path | bytes | Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(object, ignore, notes) of an uploaded mask, at its own size (see :func:`fit_mask`)."""
    if not isinstance(src, np.ndarray):
        img = open_image(src)
        src = ImageOps.exif_transpose(img)
    try:
        obj, ignore = binary_mask(src)
    except ValueError as e:
        raise InputError(f"the mask could not be read: {e}") from None
    notes = []
    if ignore.any():
        notes.append("trimap: 1 = object, 2 = background, boundary band (3) left out of IOU and mass")
    return obj, ignore, notes


def drawn_mask(editor_value: dict | None) -> np.ndarray | None:
    """The mask drawn in a gr.ImageMask (any layer's alpha > 0), or None when nothing was drawn."""
    if not editor_value or not editor_value.get("layers"):
        return None
    layers = [np.asarray(layer) for layer in editor_value["layers"] if layer is not None]
    layers = [layer for layer in layers if layer.ndim == 3 and layer.shape[2] == 4]
    if not layers:
        return None
    drawn = np.zeros(layers[0].shape[:2], bool)
    for layer in layers:
        if layer.shape[:2] == drawn.shape:
            drawn |= layer[..., 3] > 0
    return drawn if drawn.any() else None


def fit_mask(obj: np.ndarray, ignore: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Resize (object, ignore) to size (H, W) with nearest neighbour; notes say what changed."""
    notes = []
    h, w = size
    if obj.shape != (h, w):
        mh, mw = obj.shape
        if abs(mw / mh - w / h) > 0.02 * (w / h):
            notes.append(f"the mask is {mw}x{mh} but the image is {w}x{h} (another aspect ratio): stretched to fit; "
                         "check that it belongs to this image")
        else:
            notes.append(f"mask resized from {mw}x{mh} to {w}x{h} (nearest neighbour)")

        def resize(m):
            return cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        obj, ignore = resize(obj), resize(ignore)
    return obj, ignore, notes
