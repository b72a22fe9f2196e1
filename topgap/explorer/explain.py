"""What the app shows for one image, computed once: every k's Top-GAP CAM and the baseline's CAM.

:class:`Family` loads a family folder once (models in eval mode). :func:`explain_all` runs every
model on the image and keeps per-model CAMs, overlays and predictions in a :class:`Result`; the k
slider then only picks one of the stored maps (:meth:`Result.view`), and a new mask only recomputes
the metrics (:meth:`Result.with_mask`), never the models.

Geometry: the image is shown at most :data:`DISPLAY_MAX` px on its long side (tiny images are enlarged
to the model input, nearest neighbour). The model sees it resized to its input size, as evaluation
does (stretched), unless the aspect ratio differs from the model's by more than :data:`MAX_STRETCH`
(panoramas): then it is letterboxed with the model's mean colour (zero after normalisation) and the
CAMs are cropped back to the picture. Both CAMs are resized to the shown image and min-max scaled
over it, then drawn with the same JET colour map and opacity.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from ..cam import GRADCAM_POSTPROCESSING, METHODS, PROTOCOLS, baseline_cam, cam_size, postprocess, topgap_cam
from ..checkpoint import CheckpointError, family_members, load_family, read_config
from ..config import ModelConfig
from ..data.imageio import InputError, decode_image, decode_mask, fit_mask
from ..metrics import PxAP, best_iou, l1_sparsity, mass_in_mask
from ..model import Normalize, minmax_scale
from .card_view import chosen_k

__all__ = ["Family", "MapResult", "Result", "Prepared", "prepare", "explain_all", "overlay", "InputError",
           "DISPLAY_MAX", "MAX_STRETCH", "MIN_SIDE", "SLOW_METHODS", "baseline_map", "TOP", "FamilyStore",
           "attack_view", "ATTACKS", "k_label", "k_info",
           "mask_overlay", "own_mask", "family_hint", "LOW_PROBABILITY", "nearest_k", "AttackSetup", "attack_setup",
           "perturb", "PGD_RULE", "PGD_RULE_NAMES", "PGD_STEPS", "PGD_HELP", "PROTOCOL", "PROTOCOL_NAMES"]

DISPLAY_MAX = 512
# baseline methods of METHODS that take tens of seconds on 2 cores (ScoreCAM: one forward pass per batch of masked
# inputs, one per channel of the layer; GradCAM takes well under a second): the page computes them in their own queue
SLOW_METHODS = ("scorecam",)
_COPY_LOCK = threading.Lock()
MIN_SIDE = 16  # a smaller picture holds too little to explain (a 1x1 image would get a confident label)
DISPLAY_MIN = 384  # smaller pictures are enlarged (nearest neighbour) for display; the model input is unchanged
MAX_STRETCH = 2.0
TOP = 3
ALPHA = 0.5  # heat-map opacity of every overlay
# how the own CAM is post-processed (topgap.cam.PROTOCOLS); the baseline's map is pytorch-grad-cam's under both
PROTOCOL = "relu"  # the default: the own CAM gets the post-processing GradCAM has, so both sides are treated alike
PROTOCOL_NAMES = {"relu": "ReLU, then min-max (as GradCAM's map)",
                  "paper": "min-max of the raw map (the paper's CAM mode)"}


def k_label(k: int, cam_size: tuple[int, int]) -> str:
    """Slider label: k and the share k/(h*w) of the class map it pools."""
    h, w = cam_size
    return f"k = {k}  (k/(h*w) = {k}/{h * w} = {k / (h * w):.2%} of the {h}x{w} class map)"


def k_info(k: int, cam_size: tuple[int, int]) -> str:
    """What k means for this family: the share of the class map that Top-GAP pools (paper, section 3)."""
    h, w = cam_size
    return f"k = {k}: the top {k} of the {h}x{w} = {h * w} cells of each class map are pooled ({k / (h * w):.2%})"


def nearest_k(ks: list[int], k: int | float | str | None, default: int | None = None) -> int:
    """The trained k closest to `k` on a log scale, the smaller on ties: a family switch keeps k's size instead of
    an index that may not exist there. For None: `default` if trained (the family's chosen k), else the middle."""
    if k is None or k == "":
        return default if default in ks else ks[len(ks) // 2]
    return min(ks, key=lambda t: (abs(np.log(t) - np.log(max(float(k), 1e-9))), t))


class Family:
    """The models of one family folder, loaded once: Top-GAP models by k, and the baseline (or None)."""

    def __init__(self, folder: str | Path, name: str | None = None):
        self.folder, self.name = Path(folder), name or Path(folder).name
        models = load_family(self.folder)
        self.topgap = [(n, m, c) for n, (m, c) in models.items() if c.kind == "topgap" and c.k is not None]
        base = [(n, m, c) for n, (m, c) in models.items() if c.kind == "baseline"]
        if not self.topgap:
            raise CheckpointError(f"{self.folder} holds no Top-GAP model with a k; train one with topgap train --k ...")
        self.baseline = base[0] if base else None
        self._slow_copy: nn.Module | None = None  # the baseline's copy for the slow queue (slow_baseline)
        first = self.topgap[0][2]
        for n, _, c in self.topgap + base:
            if c.class_names != first.class_names or c.input_size != first.input_size:
                raise CheckpointError(f"{self.folder / n}: class names or input size differ from {self.topgap[0][0]}; "
                                      "a family shares one dataset and input size")
        self.class_names, self.input_size = first.class_names, first.input_size
        self.ks = [c.k for _, _, c in self.topgap]
        self.chosen_k = chosen_k(self.folder)  # the card's choice on validation data: the k a first view shows
        self.cam_size = cam_size(self.topgap[0][1], self.input_size)
        self.norms = {n: Normalize(c.mean, c.std) for n, _, c in self.topgap + base}

    def k_label(self, i: int) -> str:
        return k_label(self.ks[i], self.cam_size)

    def nearest_k(self, k: int | float | None) -> int:
        return nearest_k(self.ks, k, self.chosen_k)

    def warm_up(self, rounds: int = 3) -> None:
        """Run every model (and GradCAM on the baseline) a few times: CPU kernels are slow on their first calls,
        which would otherwise land on the first users."""
        image = np.full((*self.input_size, 3), 128, np.uint8)
        for _ in range(rounds):
            explain_all(self, image)

    def slow_baseline(self) -> nn.Module:
        """A copy of the baseline model for the slow methods' own queue (SLOW_METHODS): pytorch-grad-cam hooks the
        modules it explains, so two queues never share one model. Made on first use."""
        with _COPY_LOCK:
            if self._slow_copy is None:
                self._slow_copy = copy.deepcopy(self.baseline[1]).eval()
            return self._slow_copy

    def model01(self, name: str) -> nn.Module:
        """The named model behind its Normalize: takes [0, 1] images (for attacks)."""
        model = dict((n, m) for n, m, _ in self.topgap + ([self.baseline] if self.baseline else []))[name]
        return nn.Sequential(self.norms[name], model)


@dataclass
class Prepared:
    """An image ready for the models: shown image, the [0, 1] model input and where the picture lies in it."""
    image: np.ndarray  # (H, W, 3) uint8, as shown
    x01: torch.Tensor  # (1, 3, h, w) in [0, 1], the model's input size
    box: tuple[int, int, int, int]  # (y0, y1, x0, x1) of the picture inside x01 (letterboxing)
    notes: list[str]
    picture_size: tuple[int, int] | None = None  # (H, W) of the upload itself, before the display resize


def _display_size(h: int, w: int, input_size: tuple[int, int]) -> tuple[int, int]:
    scale = min(1.0, DISPLAY_MAX / max(h, w))
    scale = max(scale, max(DISPLAY_MIN, *input_size) / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def prepare(image, family: Family) -> Prepared:
    """Decode an upload and make the model input (see the module docstring for the geometry)."""
    rgb, notes = decode_image(image)
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise InputError(f"the image is {rgb.shape[1]}x{rgb.shape[0]} px, too small to explain; send one of at least "
                         f"{MIN_SIDE} px on each side")
    frames = _frames(image)
    if frames > 1:
        notes.append(f"animated image with {frames} frames: only the first frame is explained")
    h0, w0 = rgb.shape[:2]
    dh, dw = _display_size(h0, w0, family.input_size)
    if (dh, dw) != (h0, w0):
        up = dh > h0
        rgb = cv2.resize(rgb, (dw, dh), interpolation=cv2.INTER_NEAREST if up else cv2.INTER_AREA)
        if up and (h0 < family.input_size[0] or w0 < family.input_size[1]):
            notes.append(f"tiny image ({w0}x{h0}) enlarged to {dw}x{dh}")
    ih, iw = family.input_size
    stretch = (dw / dh) / (iw / ih)
    canvas, box = rgb, (0, ih, 0, iw)
    if max(stretch, 1 / stretch) > MAX_STRETCH:
        ch, cw = (round(dw * ih / iw), dw) if stretch > 1 else (dh, round(dh * iw / ih))
        mean = np.array(family.topgap[0][2].mean) * 255
        canvas = np.empty((ch, cw, 3), np.uint8)
        canvas[:] = np.round(mean).astype(np.uint8)
        y0, x0 = (ch - dh) // 2, (cw - dw) // 2
        canvas[y0:y0 + dh, x0:x0 + dw] = rgb
        box = (round(y0 * ih / ch), round((y0 + dh) * ih / ch), round(x0 * iw / cw), round((x0 + dw) * iw / cw))
        notes.append(f"aspect ratio {dw / dh:.2f} differs from the model's {iw / ih:.2f} by more than "
                     f"{MAX_STRETCH:g}x: letterboxed with the mean colour (CAMs cropped back to the picture)")
    elif abs(stretch - 1) > 0.02:
        notes.append(f"resized to the model's {iw}x{ih} input (aspect ratio {dw / dh:.2f} stretched, as in evaluation)")
    small = cv2.resize(canvas, (iw, ih), interpolation=cv2.INTER_AREA if canvas.shape[0] >= ih else cv2.INTER_LINEAR)
    x01 = torch.from_numpy(small).permute(2, 0, 1)[None].float().div(255)
    return Prepared(rgb, x01, box, notes, (h0, w0))


def _frames(image) -> int:
    """Number of frames of a path, bytes or PIL upload (1 for arrays and unreadable files)."""
    if isinstance(image, Image.Image):
        return getattr(image, "n_frames", 1)
    if isinstance(image, (str, Path, bytes)):
        try:
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
                return getattr(img, "n_frames", 1)
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            return 1
    return 1


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """JET heat map of a [0, 1] CAM blended on the image, (H, W, 3) uint8 RGB."""
    heat = cv2.applyColorMap(np.round(np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1 - ALPHA, heat, ALPHA, 0)


def _crop(cam: torch.Tensor, box: tuple[int, int, int, int]) -> np.ndarray:
    """The map over the picture only (letterbox bars cut off), at the model's input resolution."""
    y0, y1, x0, x1 = box
    return minmax_scale(cam[y0:y1, x0:x1].float().cpu()).numpy()


def _to_image(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    resized = cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return minmax_scale(torch.from_numpy(resized)).numpy()


@dataclass
class MapResult:
    """One model's answer for the image: prediction, CAM at the shown size, overlay, metrics."""
    name: str
    kind: str
    k: int | None
    top: dict[str, float]  # the TOP most probable labels
    label: str
    probability: float
    cam: np.ndarray  # at the shown size
    overlay: np.ndarray
    l1: float
    cam_input: np.ndarray | None = None  # at the model's input resolution: IOU and mass are measured here, as in
    # `topgap evaluate` (the mask is resized to it, nearest neighbour)
    iou: float | None = None
    threshold: float | None = None
    mass: float | None = None
    pxap: float | None = None  # PxAP (Choe et al.) of this one image, as `topgap evaluate` pools it over a split
    cam_map: np.ndarray | None = None  # min-max scaled at the class-map resolution: the map l1 is measured on
    raw: torch.Tensor | None = None  # (1, h, w): the map before post-processing (a protocol switch redoes the rest)

    def summary(self, maps: bool = False) -> dict:
        """The figures of /explain and the reports; maps=True adds "map", `cam_map` rounded to 4 decimals."""
        out = {"kind": self.kind, "k": self.k, "label": self.label, "probability": round(self.probability, 6),
               "top": {n: round(p, 6) for n, p in self.top.items()}, "l1": round(self.l1, 6),
               "iou": _r(self.iou), "threshold": _r(self.threshold), "mass": _r(self.mass), "pxap": _r(self.pxap)}
        if maps and self.cam_map is not None:
            out["map"] = np.round(self.cam_map.astype(np.float64), 4).tolist()
        return out


def _r(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


@dataclass
class Result:
    """Everything computed for one image and one family; switching k only reads it."""
    family: str
    method: str
    image: np.ndarray
    topgap: list[MapResult]
    baseline: MapResult | None
    ks: list[int]
    cam_size: tuple[int, int]
    x01: torch.Tensor
    box: tuple[int, int, int, int]
    notes: list[str] = field(default_factory=list)
    mask_notes: list[str] = field(default_factory=list)
    has_mask: bool = False
    mask: tuple[np.ndarray, np.ndarray] | None = None  # (object, ignore) at the shown size, when one was given
    picture_size: tuple[int, int] | None = None  # (H, W) of the upload: what a mask is compared with
    protocol: str = PROTOCOL  # how the own CAMs were post-processed (PROTOCOL_NAMES)
    pending: str | None = None  # a slow baseline method still being computed (SLOW_METHODS); baseline None until then

    def view(self, index: int) -> tuple[MapResult, MapResult | None]:
        """(Top-GAP result at the index-th k, baseline result): no computation."""
        if not 0 <= index < len(self.topgap):
            raise InputError(f"k index {index} out of range: this family has k in {self.ks}")
        return self.topgap[index], self.baseline

    def k_label(self, index: int) -> str:
        return k_label(self.ks[index], self.cam_size)

    def nearest_index(self, k) -> int:
        """Index of k, or of the trained k nearest to it (a k from another family, or None: the middle one)."""
        return self.ks.index(nearest_k(self.ks, k))

    def index_of(self, k: int) -> int:
        if k not in self.ks:
            raise InputError(f"k = {k} was not trained in family {self.family!r}; choose one of {self.ks}")
        return self.ks.index(k)

    def with_baseline(self, base: MapResult) -> "Result":
        """A copy with the baseline's map computed later (a slow method); mask metrics cleared: apply it again."""
        return dataclasses.replace(self, baseline=base, pending=None).with_mask(None)

    def with_protocol(self, protocol: str) -> "Result":
        """A copy with the own CAMs post-processed under `protocol` (no model runs; the baseline's map stays
        pytorch-grad-cam's); mask metrics are cleared: apply the mask again."""
        if protocol not in PROTOCOLS:
            raise InputError(f"unknown CAM protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        geometry = _Geometry(self.image, self.box, tuple(self.x01.shape[-2:]), self.cam_size)
        maps = [_postprocessed(m, PROTOCOLS[protocol], geometry) for m in self.topgap]
        return dataclasses.replace(self, topgap=maps, protocol=protocol).with_mask(None)

    def with_mask(self, mask=None, ignore: np.ndarray | None = None, notes: list[str] | None = None,
                  same_aspect: bool = False) -> "Result":
        """A copy with IOU, threshold and mass computed against a mask (an upload, or a bool array).

        mask None clears them. An empty or all-object mask gives no metrics and a note saying why. same_aspect:
        refuse an upload whose aspect ratio is not the picture's (InputError), as /explain does, instead of
        stretching it.
        """
        cleared = dict(iou=None, threshold=None, mass=None, pxap=None)
        maps = [dataclasses.replace(m, **cleared) for m in self.topgap]
        base = dataclasses.replace(self.baseline, **cleared) if self.baseline else None
        out = dataclasses.replace(self, topgap=maps, baseline=base, mask_notes=list(notes or []), has_mask=False,
                                  mask=None)
        if mask is None:
            return out
        if isinstance(mask, np.ndarray) and mask.dtype == bool:
            obj, ign, more = mask, (ignore if ignore is not None else np.zeros_like(mask)), []
        else:
            obj, ign, more = decode_mask(mask)
            if same_aspect:
                check_aspect(obj.shape, self.picture_size or self.image.shape[:2])
        shown, fit_notes = self.image.shape[:2], []
        if obj.shape != shown:  # a drawing is made on the shown image; an upload is compared with the upload's size
            obj, ign, fit_notes = fit_mask(obj, ign, self.picture_size or shown)  # its notes name that size
            obj, ign, _ = fit_mask(obj, ign, shown)
        out.mask_notes += more + fit_notes
        out.mask = obj, ign
        valid = ~ign
        if not (obj & valid).any():
            out.mask_notes.append("the mask marks no object pixel, so IOU and mass are undefined; nonzero (or drawn) "
                                  "pixels are the object: check the encoding or draw the object")
            return out
        if (obj | ign).all():
            out.mask_notes.append("the mask marks every pixel as object, so IOU and mass would trivially be 1; "
                                  "supply a mask with some background")
            return out
        for m in maps + ([base] if base else []):
            cam = m.cam if m.cam_input is None else m.cam_input
            o, i, _ = fit_mask(obj, ign, cam.shape)
            if not (o & ~i).any():  # an object too small to survive the input resolution: measure where it is
                cam, o, i = m.cam, obj, ign
            m.iou, m.threshold = best_iou(cam, o, i)
            m.mass = mass_in_mask(cam, o, i)
            pxap = PxAP()
            pxap.update(cam, o, i)
            m.pxap = pxap.summary()
        out.has_mask = True
        return out

    def report(self, index: int | None = None, maps: bool = False) -> dict:
        """JSON-serialisable report: {family, k, method, models: {name: summary}, notes}; maps=True adds each
        model's class-map-resolution CAM (see :meth:`MapResult.summary`)."""
        chosen = self.topgap if index is None else [self.view(index)[0]]
        models = {m.name: m.summary(maps) for m in chosen}
        if self.baseline:
            models[self.baseline.name] = {**self.baseline.summary(maps), "method": self.method}
        h, w = self.cam_size
        return {"family": self.family, "k": None if index is None else self.ks[index],
                "k_fraction": None if index is None else round(self.ks[index] / (h * w), 6),
                "cam_size": [h, w], "method": self.method, "protocol": self.protocol, "models": models,
                "notes": self.notes + self.mask_notes}


def own_mask(mask, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(object, ignore) of a mask sent with its image by a program (/explain, the batch audit), refused when its
    aspect ratio is not the image's (a mask of another image); the same aspect ratio at another size is resized."""
    obj, ign, _ = decode_mask(mask)
    check_aspect(obj.shape, image_shape)
    return obj, ign


def check_aspect(mask_shape: tuple[int, int], image_shape: tuple[int, int]) -> None:
    """Refuse a mask whose aspect ratio is not the image's (by more than 2%): a mask of another image."""
    (mh, mw), (h, w) = mask_shape, image_shape
    if abs(mw / mh - w / h) > 0.02 * (w / h):
        raise InputError(f"the mask is {mw}x{mh} (aspect ratio {mw / mh:.2f}) but the image's aspect ratio is "
                         f"{w / h:.2f}; send this image's mask (same size, or scaled with the same aspect ratio)")


def mask_overlay(image: np.ndarray, obj: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """The mask as a person can check it: object tinted green, left-out pixels (trimap boundary) yellow, the
    background darkened; (H, W, 3) uint8 at the image's size."""
    out = (image.astype(np.float32) * 0.35).astype(np.uint8)
    for where, colour in ((obj & ~ignore, (0, 200, 0)), (ignore, (255, 220, 0))):
        out[where] = (0.45 * image[where] + 0.55 * np.array(colour)).astype(np.uint8)
    return out


LOW_PROBABILITY = 0.6  # below this top probability the prediction is flagged as unsure


def family_hint(result: Result, index: int, class_names: list[str], about: str | None = None) -> str:
    """What the family knows, and a warning when its answer on this image looks unreliable: a top probability
    under LOW_PROBABILITY or models of the family (every k and the baseline) disagreeing on the label."""
    chosen, _ = result.view(index)
    labels = {m.label for m in result.topgap + ([result.baseline] if result.baseline else [])}
    knows = (f"**{result.family}** knows only {len(class_names)} classes ({', '.join(class_names)})"
             + (f", from {about}" if about else "") + "; every image gets one of them.")
    reasons = []
    if chosen.probability < LOW_PROBABILITY:
        reasons.append(f"the top probability is only {chosen.probability:.0%}")
    if len(labels) > 1:
        reasons.append(f"the family's models disagree ({', '.join(sorted(labels))})")
    if not reasons:
        return knows
    return (f"⚠️ Check this answer: {' and '.join(reasons)}; the image may be unlike what **{result.family}** was "
            "trained on. " + knows + " Pick the family that matches the image.")


def _top(probs: torch.Tensor, names: list[str]) -> dict[str, float]:
    p, i = probs.topk(min(TOP, len(names)))
    return {names[j]: float(v) for v, j in zip(p.tolist(), i.tolist())}


@dataclass
class _Geometry:
    """Where a map is shown: the shown image, the picture's box in the model input, input and class-map sizes."""
    image: np.ndarray
    box: tuple[int, int, int, int]
    input_size: tuple[int, int]
    cam_size: tuple[int, int]


def _postprocessed(m: MapResult, mode: str, geometry: _Geometry) -> MapResult:
    """m's maps from its raw map as `topgap evaluate` post-processes them (`mode`, topgap.cam.postprocess): l1 at
    the class-map resolution, the shown map (and IOU) at the input size, then cropped to the image."""
    crop = _crop(postprocess(m.raw, geometry.input_size, mode)[0], geometry.box)
    shown = _to_image(crop, geometry.image.shape[:2])
    cam_map = postprocess(m.raw, geometry.cam_size, mode)[0].float().cpu().numpy()
    return dataclasses.replace(m, cam=shown, overlay=overlay(geometry.image, shown), l1=l1_sparsity(cam_map),
                               cam_input=crop, cam_map=cam_map, iou=None, threshold=None, mass=None, pxap=None)


def _map_result(name: str, cfg: ModelConfig, probs: torch.Tensor, raw: torch.Tensor, names: list[str],
                mode: str, geometry: _Geometry) -> MapResult:
    label = int(probs.argmax())
    bare = MapResult(name, cfg.kind, cfg.k, _top(probs, names), names[label], float(probs[label]), cam=None,
                     overlay=None, l1=float("nan"), raw=raw.detach().cpu())
    return _postprocessed(bare, mode, geometry)


def baseline_map(family: Family, result: Result, model: nn.Module | None = None) -> MapResult:
    """The baseline's prediction and CAM (result.method) on the result's input; `model`: a copy of the baseline
    (Family.slow_baseline) for the slow queue."""
    name, own, cfg = family.baseline
    raw, _, logits = baseline_cam(model or own, family.norms[name](result.x01), method=result.method,
                                  postprocessing=None, with_logits=True)
    geometry = _Geometry(result.image, result.box, family.input_size, family.cam_size)
    return _map_result(name, cfg, logits[0].softmax(0), raw, family.class_names, GRADCAM_POSTPROCESSING, geometry)


def explain_all(family: Family, image, mask=None, method: str = "gradcam", protocol: str = PROTOCOL,
                slow_baseline: bool = True) -> Result:
    """Run every model of `family` on `image` once: CAM and prediction per k, and the baseline's.

    Args:
        image: path, bytes, PIL image or array (any mode, see :mod:`topgap.data.imageio`).
        mask: optional mask upload (any encoding) or bool array; metrics are added when given.
        method: the baseline's CAM method, one of :data:`topgap.cam.METHODS`.
        protocol: the own CAMs' post-processing, a key of :data:`topgap.cam.PROTOCOLS` (PROTOCOL_NAMES says what
            each is); the baseline's map is pytorch-grad-cam's (ReLU, then min-max) under both.
        slow_baseline: False leaves a method of SLOW_METHODS pending (``result.pending``; the app computes it in
            its own queue with :func:`baseline_map` and :meth:`Result.with_baseline`).
    """
    if method not in METHODS:
        raise InputError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown CAM protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    prep = prepare(image, family)
    geometry = _Geometry(prep.image, prep.box, family.input_size, family.cam_size)
    maps = []
    for name, model, cfg in family.topgap:
        raw, _, logits = topgap_cam(model, family.norms[name](prep.x01), postprocessing=None, with_logits=True)
        maps.append(_map_result(name, cfg, logits[0].softmax(0), raw, family.class_names, PROTOCOLS[protocol],
                                geometry))
    notes = list(prep.notes) + ([] if family.baseline else ["this family has no baseline model"])
    result = Result(family.name, method, prep.image, maps, None, family.ks, family.cam_size, prep.x01, prep.box, notes,
                    picture_size=prep.picture_size, protocol=protocol)
    if family.baseline and method in SLOW_METHODS and not slow_baseline:
        result.pending = method
    elif family.baseline:
        result.baseline = baseline_map(family, result)
    return result.with_mask(mask) if mask is not None else result


class FamilyStore:
    """Family folders under a models root, each loaded on first use and then kept (thread-safe)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._loaded: dict[str, Family] = {}
        self.remote: list[str] = []  # families fetched from elsewhere on first use (see topgap.explorer.hub)
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("*/config.json")))

    def folder(self, name: str) -> Path:
        if name not in self.names():
            listed = ", ".join(self.names()) or f"none: train one into {self.root}/<family>/"
            raise InputError(f"unknown model family {name!r}; available: {listed}")
        return self.root / name

    def loaded(self, name: str) -> Family | None:
        """The family if it is loaded already (never loads)."""
        return self._loaded.get(name)

    def trained_ks(self, name: str) -> list[int]:
        """A local family's trained k from its config.json files (no weights read); [] for a family not on disk."""
        if name not in FamilyStore.names(self):
            return []
        try:
            return sorted(c.k for c in map(read_config, family_members(self.root / name)) if c.kind == "topgap" and c.k)
        except CheckpointError:
            return []

    def default_k(self, name: str) -> int | None:
        """The k a local family opens at (no weights read): its card's chosen k, else the middle trained k."""
        ks = self.trained_ks(name)
        return nearest_k(ks, None, chosen_k(self.root / name)) if ks else None

    def class_names(self, name: str) -> list[str]:
        """A local family's class names from its first config.json (no weights read); [] when not on disk."""
        if name not in FamilyStore.names(self):
            return []
        try:
            return read_config(family_members(self.root / name)[0]).class_names
        except CheckpointError:
            return []

    def get(self, name: str, folder: Path | None = None) -> Family:
        with self._lock:
            if name not in self._loaded:
                fam = Family(folder or self.folder(name), name)
                fam.warm_up()
                self._loaded[name] = fam
            return self._loaded[name]


ATTACKS = ("fgsm", "pgd")
PGD_RULE_NAMES = {"2.5eps/steps": "Madry et al.: 2.5 eps / steps", "foolbox": "Foolbox: eps / 30 per step"}
PGD_RULE = "2.5eps/steps"  # the default: its steps travel 2.5 eps in all, across the eps ball (diameter 2 eps)
# 20 steps: one PGD takes about 1 s on a shipped 224 px pets model and 0.45 s on a 96 px synthetic one (2 CPU cores,
# idle), one click (a Top-GAP model and the baseline, with their CAMs) about 2.5 s; and fewer than 30, so the table
# shows Foolbox's eps/30 falling short of the boundary (20/30 eps) where Madry's rule travels 2.5 eps
PGD_STEPS = 20
PGD_HELP = ("PGD nudges the image in small steps, never letting a pixel move more than eps from the original. "
            "**Madry et al.'s rule** (the default) spreads 2.5 eps over the steps, so they can reach the edge of that "
            "range from anywhere inside it; **Foolbox's rule** (the paper's library) takes eps/30 per step whatever "
            "the count: with fewer than 30 steps it cannot reach the edge, and the model looks more robust than it is.")


@dataclass(frozen=True)
class AttackSetup:
    """What one attack runs with: `steps` steps of size `alpha` inside the Linf ball |x' - x|_inf <= eps ([0, 1]
    units). FGSM: one step, alpha = eps. PGD (random start): alpha = attacks.pgd_step_size(rule, eps, steps)."""
    kind: str
    eps: float
    steps: int
    alpha: float
    rule: str | None  # PGD's step rule, a key of PGD_RULE_NAMES; None for FGSM

    @property
    def reaches_boundary(self) -> bool:
        """steps * alpha >= eps: the steps can carry a pixel from the clean image to the ball's boundary."""
        from ..eval.attacks import reaches_boundary
        return reaches_boundary(self.alpha, self.eps, self.steps)

    def text(self) -> str:
        """What the app prints under the result: the settings as a short list (sizes in /255 and [0, 1] units, so
        that it wraps on a phone), and a warning when the steps cannot reach the boundary."""
        what = "PGD (random start)" if self.kind == "pgd" else "FGSM"
        rule = PGD_RULE_NAMES[self.rule] if self.rule else "one step of eps"
        rows = [f"White-box {what} on each model's own prediction:", "",
                f"- step rule: {rule}",
                f"- {self.steps} step{'s' if self.steps > 1 else ''} of {_units(self.alpha)}, "
                f"{self.steps * self.alpha * 255:.3g}/255 in all",
                f"- eps: {_units(self.eps)}",
                f"- reaches the eps boundary: {'yes' if self.reaches_boundary else 'no'}"]
        if not self.reaches_boundary:
            rows += ["", "These steps cannot reach the edge of the eps range: the attack is weaker than its eps says."]
        return "\n".join(rows)


def _units(v: float) -> str:
    return f"{v * 255:.3g}/255 = {v:.3g}"


def attack_setup(kind: str, eps: float, rule: str = PGD_RULE, steps: int = PGD_STEPS) -> AttackSetup:
    """The checked settings of an FGSM or PGD attack (`rule` and `steps` apply to PGD only)."""
    from ..eval.attacks import pgd_step_size

    if kind not in ATTACKS:
        raise InputError(f"unknown attack {kind!r}; choose one of {', '.join(ATTACKS)}")
    if not 0 < eps <= 0.25:
        raise InputError(f"eps must be in (0, 0.25] (got {eps}); 1/255 to 16/255 are usual")
    if kind == "fgsm":
        return AttackSetup(kind, eps, 1, eps, None)
    if rule not in PGD_RULE_NAMES:
        raise InputError(f"unknown PGD step rule {rule!r}; choose one of {', '.join(PGD_RULE_NAMES)}")
    if steps < 1:
        raise InputError(f"PGD needs at least one step (got {steps})")
    return AttackSetup(kind, eps, steps, pgd_step_size(rule, eps, steps), rule)


def perturb(model01: nn.Module, x01: torch.Tensor, y: torch.Tensor, setup: AttackSetup) -> torch.Tensor:
    """The app's attack: the evaluation's :func:`topgap.eval.attacks.run_attack` with the setup's kind, eps, and for
    PGD its rule and steps (run_attack derives the same alpha from pgd_step_size)."""
    from ..eval.attacks import run_attack

    if setup.kind == "fgsm":
        return run_attack(model01, x01, y, "fgsm", setup.eps)
    return run_attack(model01, x01, y, "pgd", setup.eps, steps=setup.steps, rule=setup.rule)


def attack_view(family: Family, result: Result, index: int, kind: str, eps: float, rule: str = PGD_RULE,
                steps: int = PGD_STEPS) -> tuple[dict[str, MapResult], AttackSetup]:
    """FGSM or PGD (Linf, eps in [0, 1] units; see :func:`attack_setup`) against the index-th Top-GAP model and the
    baseline, each attacked white-box on its own clean prediction; their answers and CAMs on the perturbed image.

    Returns ({model name: MapResult on the adversarial image}, the settings used); compare with
    ``result.view(index)``.
    """
    setup = attack_setup(kind, eps, rule, steps)
    chosen, base = result.view(index)
    out = {}
    for m in [chosen] + ([base] if base else []):
        model01 = family.model01(m.name)
        adv = perturb(model01, result.x01, torch.tensor([family.class_names.index(m.label)]), setup)
        cfg, x = _member(family, m.name), model01[0](adv)
        if m.kind == "topgap":
            raw, _, logits = topgap_cam(model01[1], x, postprocessing=None, with_logits=True)
        else:
            raw, _, logits = baseline_cam(model01[1], x, method=result.method, postprocessing=None, with_logits=True)
        geometry = _Geometry(_adv_image(adv, result), result.box, family.input_size, family.cam_size)
        mode = PROTOCOLS[result.protocol] if m.kind == "topgap" else GRADCAM_POSTPROCESSING
        out[m.name] = _map_result(m.name, cfg, logits[0].softmax(0), raw, family.class_names, mode, geometry)
    return out, setup


def _member(family: Family, name: str) -> ModelConfig:
    return {n: c for n, _, c in family.topgap + ([family.baseline] if family.baseline else [])}[name]


def _adv_image(adv01: torch.Tensor, result: Result) -> np.ndarray:
    """The perturbed model input cropped to the picture and resized to the shown image, uint8."""
    y0, y1, x0, x1 = result.box
    a = (adv01[0, :, y0:y1, x0:x1].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    h, w = result.image.shape[:2]
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
