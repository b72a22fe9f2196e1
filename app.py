"""Top-GAP explorer: the model's own CAM across k against a GradCAM baseline (Gradio UI; logic in topgap.explorer.explain).

    python app.py   # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured)

    python app.py --examples DIR   # the examples gallery from a local dataset with masks (env: TOPGAP_EXAMPLES)

TOPGAP_HUB_EXAMPLES="owner/name@revision" (a dataset repo holding Oxford-IIIT Pet in its official layout) adds a
few of its test images, downloaded at start (on a Space: its first start); without network, one log line.

Env: TOPGAP_MODELS (models root, default models/ beside this file), TOPGAP_DEFAULT_FAMILY (default
"oxford-pet-lite0", else "synthetic-shapes" or "synth" when present), TOPGAP_HUB_FAMILIES ("owner/repo@revision,...": families pushed with
`topgap push`, listed beside the local ones; a local folder named like the repo is the fallback), TOPGAP_MCP=1
(serve /explain and /families as MCP tools too; needs `pip install "gradio[mcp]"`).

API (typed, `gr.api`): /explain(image, mask=None, family=None, k=None, method="gradcam", maps=False) -> report,
/families(). The Audit tab runs a zip or several images through every k (topgap.explorer.audit).
Families load on first use (a page load starts loading the default one); nothing heavy runs at import.
"""
import argparse
import atexit
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pandas as pd
from gradio.components.api_component import Api
from gradio.data_classes import FileData
from PIL import Image

from topgap.cam import METHODS
from topgap.checkpoint import CheckpointError
from topgap.explorer.api import ExplainReport, FamiliesReport, explain_payload, families_payload
from topgap.explorer.audit import BOUNDS, COLUMNS, IMAGE_SUFFIXES, collect, run_audit, write_csv
from topgap.explorer.card_view import CardError, render_card
from topgap.explorer.examples import ExampleSet, dataset_examples, hub_examples
from topgap.explorer.explain import (ATTACKS, PGD_HELP, PGD_RULE, PGD_RULE_NAMES, PGD_STEPS, Family, InputError, Result,
                                     attack_view, explain_all, family_hint, k_info, mask_overlay, nearest_k, own_mask)
from topgap.explorer.faith import road_curves
from topgap.explorer.hub import store_from_env
from topgap.explorer.sizeprior import SizeAdvice, advise, k_curves, mask_fraction, parse_fraction, picture_share
from topgap.explorer.swap import gallery, summary, swap_all, table
from topgap.explorer.zerogpu import gpu
from topgap.data.imageio import decode_image, decode_mask, drawn_mask
from topgap.data.synth import VARIANTS as SYNTH_VARIANTS
from topgap.io import atomic_write

log = logging.getLogger("topgap.app")
HERE = Path(__file__).resolve().parent
MODELS = Path(os.environ.get("TOPGAP_MODELS", HERE / "models"))
ASSETS = HERE / "assets"
STORE = store_from_env(MODELS)
FAMILIES = STORE.names()
PREFERRED = [os.environ.get("TOPGAP_DEFAULT_FAMILY"), "oxford-pet-lite0", "synthetic-shapes", "synth"]
DEFAULT = next((f for f in PREFERRED if f in FAMILIES), FAMILIES[0] if FAMILIES else None)
WORK = Path(tempfile.mkdtemp(prefix="topgap-app-"))  # everything the app and gradio write; removed at exit
DOWNLOADS, IMAGES, UPLOADS = WORK / "downloads", WORK / "images", WORK / "gradio"
for _d in (DOWNLOADS, IMAGES, UPLOADS):
    _d.mkdir()
os.environ["GRADIO_TEMP_DIR"] = str(UPLOADS)  # gradio's uploads and output cache, inside WORK (read at Blocks init)
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
MAX_STORAGE = int(float(os.environ.get("TOPGAP_MAX_STORAGE_MB", "200")) * 2**20)  # WORK beyond this: oldest go
GROUP = "models"  # one concurrency_id for every event that runs a model (CAM hooks, shared weights)
USER_ERRORS = (InputError, CheckpointError)


def user_error(message: str) -> gr.Error:
    """A gr.Error for an expected failure: shown to the user, logged on one line without a traceback."""
    log.info("user error: %s", message)
    return gr.Error(message, print_exception=False)


def lenient(component: gr.Image) -> gr.Image:
    """Let a file Gradio cannot open through as its path, so the handler reports it next to its input (once,
    in words) instead of failing the whole event (every output an "Error" badge, one toast per event).

    Wraps the instance's preprocess (a gr.Image subclass would make gradio write an app.pyi stub).
    """
    preprocess = component.preprocess

    def safe(payload):
        try:
            return preprocess(payload)
        except Exception:  # noqa: BLE001  (any decoding failure; the handler decodes the file again and says why)
            return getattr(payload, "path", None)

    component.preprocess = safe
    return component


def load_family(name: str | None) -> Family:
    """The named family, loaded (and warmed up) on its first use, with a message to the page while it loads."""
    if not name:
        raise InputError(f"no model family found under {MODELS}; train one (topgap train --out {MODELS}/<family>) "
                         "or set TOPGAP_MODELS to a folder of families")
    if STORE.loaded(name) is None:
        if name not in FAMILIES:
            STORE.folder(name)  # the unknown-family message
        log.info("loading model family %s", name)
        gr.Info(f"Loading model family {name} (first use, a few seconds)…", duration=5)
    return STORE.get(name)


def png(array: np.ndarray | None) -> str | None:
    """An RGB uint8 array as a PNG in the app's temp dir, named by its content and written atomically.

    Gradio re-writes numpy outputs in place in its cache, which races with clients still reading an identical
    earlier output; files are copied into the cache atomically instead.
    """
    if array is None:
        return None
    ok, data = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
    path = IMAGES / f"{hashlib.sha256(data.tobytes()).hexdigest()[:40]}.png"
    if not path.exists():
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data.tobytes()))
    return str(path)


_last_bound = [0.0]


def bound_storage(root: Path = WORK, max_bytes: int | None = None, min_age_s: float = 60, every_s: float = 10) -> int:
    """Keep the files under `root` (uploads, gradio's output cache, the app's images) below max_bytes by deleting
    the oldest ones older than min_age_s (clients have fetched them by then); empty files go too. At most every
    every_s seconds. Returns the bytes left."""
    max_bytes = MAX_STORAGE if max_bytes is None else max_bytes
    now = time.time()
    if now - _last_bound[0] < every_s:
        return -1
    _last_bound[0] = now
    files = []
    for p in root.rglob("*"):
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_file():
            files.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in files)
    for mtime, size, p in sorted(files):
        if now - mtime < min_age_s:
            break
        if size and total <= max_bytes:
            continue
        p.unlink(missing_ok=True)
        total -= size
    return total


# ---- one session's image, mask and result ----

@dataclasses.dataclass
class Session:
    """What the page shows: the image (by content), the mask tied to it and where it came from, the result."""
    image_key: str | None = None
    upload_key: str | None = None  # the mask upload last seen (None: none, or it was cleared)
    drawn_key: str | None = None
    # the previous image's upload and drawing: events queued before the page cleared them still carry them, and
    # they must not come back while this image is shown (see update)
    stale_upload: str | None = None
    stale_drawn: str | None = None
    mask: np.ndarray | None = None  # the mask in use: an upload (path) or a drawn bool array
    mask_source: str | None = None  # "uploaded mask" | "drawn mask"
    family: str | None = None
    method: str | None = None
    result: Result | None = None
    k_by_family: dict[str, int] = dataclasses.field(default_factory=dict)  # the k last shown in each family


def _key(value) -> str | None:
    """Content fingerprint of a file path or array (None for None)."""
    if value is None:
        return None
    data = value.tobytes() if isinstance(value, np.ndarray) else Path(value).read_bytes()
    return hashlib.sha1(data).hexdigest()


# ---- rendering precomputed results (no model runs) ----

def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _metrics_md(result: Result, index: int, source: str | None) -> str:
    chosen, base = result.view(index)
    rows = [("Top-GAP " + chosen.name, chosen)] + ([(f"baseline ({result.method})", base)] if base else [])
    lines = ["| map | prediction | l1 | IOU | threshold | mass on object |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {m.label} ({m.probability:.1%}) | {m.l1:.3f} | {_fmt(m.iou)} | {_fmt(m.threshold)} | "
              f"{_fmt(m.mass)} |" for n, m in rows]
    if result.has_mask:
        lines.append(f"\nIOU and mass on the object use the **{source}** of this image (shown under *Mask in use*).")
    else:
        lines.append("\nUpload or draw a mask to get IOU and mass on the object.")
    notes = result.notes + result.mask_notes
    if notes:
        lines.append("\n**Notes:** " + "; ".join(notes) + ".")
    return "\n".join(lines)


def _k_radio(fam_or_result, k: int) -> dict:
    """The k control for a family: its trained k as choices, k selected, what k means as info."""
    return gr.update(choices=list(fam_or_result.ks), value=k, info=k_info(k, fam_or_result.cam_size))


def _index(result: Result, k) -> int:
    """Index of k in the result's family; a k from another family maps to the nearest trained one."""
    return result.ks.index(nearest_k(result.ks, k))


@functools.lru_cache(maxsize=32)
def _about(fam_name: str) -> str | None:
    """The family's data in a few words (its card's title), for the out-of-distribution hint."""
    try:
        return json.loads((MODELS / fam_name / "card.json").read_text()).get("title")
    except (OSError, ValueError, AttributeError):
        return None


def render(sess: Session | None, k):
    """Overlays, top-3 labels, metrics and hint for k: reads the stored result only."""
    result = sess.result if sess else None
    if result is None:
        return None, None, None, None, "Upload an image (or pick an example) to see the CAMs.", ""
    index = _index(result, k)
    chosen, base = result.view(index)
    fam = STORE.get(result.family)
    about = _about(result.family)
    return (png(chosen.overlay), chosen.top, png(base.overlay) if base else None, base.top if base else None,
            _metrics_md(result, index, sess.mask_source), family_hint(result, index, fam.class_names, about))


def bias_view(sess: Session | None, k=None):
    """Table and plot across all k and the baseline, the selected k marked."""
    result = sess.result if sess else None
    if result is None:
        return None, None
    return bias_table(result), k_figure(result, k)


def bias_table(result: Result) -> list[list]:
    """Every k and the baseline on this image: k, k/(h*w), prediction, probability, IOU, l1, mass."""
    h, w = result.cam_size
    rows = [[m.name, m.k, round(m.k / (h * w), 4), m.label, round(m.probability, 3), m.iou, m.l1, m.mass]
            for m in result.topgap]
    if result.baseline:
        b = result.baseline
        rows.append([f"{b.name} ({result.method})", None, None, b.label, round(b.probability, 3), b.iou, b.l1, b.mass])
    return [[round(v, 3) if isinstance(v, float) else v for v in row] for row in rows]


def k_figure(result: Result, k=None, advice: SizeAdvice | None = None):
    """IOU, l1 and mass on the object against k/(h*w) (baseline dashed), the selected k as a grey line, and with
    `advice` the object's area as a dotted line and the trained k nearest to it as a triangle."""
    h, w = result.cam_size
    curves = k_curves(result)
    frac = curves["fraction"]
    from matplotlib.figure import Figure  # here: 0.6 s off the start-up; no pyplot state (matplotlib's server advice)

    fig = Figure(figsize=(6, 3.4), dpi=100)
    ax = fig.subplots()
    for key, colour in (("l1", "tab:blue"), ("iou", "tab:green"), ("mass", "tab:red")):
        if all(y is not None for y in curves[key]):
            ax.plot(frac, curves[key], "o-", color=colour, label=f"Top-GAP {key}")
            if curves["baseline"] and curves["baseline"][key] is not None:
                ax.axhline(curves["baseline"][key], color=colour, ls="--", lw=1, label=f"baseline {key}")
    if k is not None:
        chosen = result.topgap[_index(result, k)]
        ax.axvline(chosen.k / (h * w), color="black", lw=1.5, alpha=0.6, label=f"selected k = {chosen.k}")
    if advice is not None:
        ax.axvline(advice.area / (h * w), color="tab:purple", ls=":", lw=2,
                   label=f"object: {advice.area:.1f} cells")
        ax.plot([advice.k / (h * w)], [1.03], "v", color="tab:purple", ms=10, label=f"nearest trained k = {advice.k}")
    ax.set_xscale("log")
    ax.set_xticks(frac, [f"{m.k}\n{f:.1%}" for m, f in zip(result.topgap, frac)], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("k  (k/(h*w))", fontsize=8)
    ax.set_ylim(0, 1.07)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


METHOD_INFO = ("gradcam, hirescam and xgradcam give the same map here: the layer feeds global average pooling, so "
               "its gradient is constant over the map and their weightings agree. scorecam takes tens of seconds.")
SIZE_HINT = ("Type the object's size as a fraction of the image (0 < f < 1), or upload or draw a mask of the object "
             "on the Explain tab: the assistant then says how many class-map cells it covers and which trained k "
             "is nearest.")


def _size_advice(sess: Session, typed) -> tuple[SizeAdvice | None, str]:
    """The advice from the typed size, else from the mask in use; (None, what to do) without either."""
    result = sess.result
    try:
        fraction = parse_fraction(typed)
    except InputError as e:
        return None, f"⚠️ {str(e)[:1].upper()}{str(e)[1:]}."
    source = "typed size"
    if fraction is None:
        if result.mask is None:
            return None, SIZE_HINT
        fraction, source = mask_fraction(*result.mask), sess.mask_source or "mask"
        if fraction == 0:
            return None, "⚠️ The mask in use marks no object pixel; draw or upload the object, or type its size."
    advice = advise(fraction, result.cam_size, result.ks, picture_share(result), source)
    return advice, advice.markdown()


def size_view(sess: Session | None, k, typed):
    """The size-prior assistant: the object's area in class-map cells, the nearest trained k, the curves."""
    if sess is None or sess.result is None:
        return "Upload an image (or pick an example) on the Explain tab first. " + SIZE_HINT, None
    advice, text = _size_advice(sess, typed)
    return text, k_figure(sess.result, k, advice)


def use_advised_k(sess: Session | None, typed):
    """Set the k control to the advised k (its change event shows that k's maps)."""
    if sess is None or sess.result is None:
        return gr.skip()
    advice, _ = _size_advice(sess, typed)
    return advice.k if advice else gr.skip()


# ---- the one event for image, mask, family and method ----

SKIP = object()


def _apply_mask(result: Result, sess: Session) -> Result:
    notes = [f"using the {sess.mask_source}"] if sess.mask is not None else []
    return result.with_mask(sess.mask, notes=notes)


@gpu
def update(fam_name, image, mask_upload, drawn, method, k, sess: Session | None):
    """New image, mask, drawing, family or method. A mask belongs to the image it was given with: a new image
    clears it (unless it arrives together with the image, as an example's does); a family or method change
    keeps it. Expected failures are shown next to their input, once; the other outputs keep what they showed."""
    old = sess or Session()
    sess = dataclasses.replace(old)
    if fam_name != old.family and old.family is not None and k is not None:  # a round trip comes back to its k
        sess.k_by_family = {**old.k_by_family, old.family: k}
        k = sess.k_by_family.get(fam_name, k)
    skip = gr.skip()
    out = dict(family_msg=skip, image_msg=skip, mask_msg=skip)  # a message stays until its input is used again
    if image is None:  # cleared, or a file the page could not show: keep what is shown unless the family changed
        if fam_name == sess.family:
            return _outputs(sess, out, k, None, keep=True)
        fam = _try_family(fam_name, out)
        fresh = Session(family=fam_name, method=method, k_by_family=sess.k_by_family)
        return _outputs(fresh, out, k, fam, new_image=True) if fam else \
            _outputs(sess, out, k, None, keep=True)
    image_key, upload_key = _key(image), _key(mask_upload)
    drawn_arr = drawn_mask(drawn)
    drawn_key = _key(drawn_arr)
    new_image = image_key != sess.image_key
    rerun = new_image or fam_name != sess.family or method != sess.method
    mask_changed = False
    if new_image:
        if sess.mask is not None:
            out["mask_msg"] = "The previous image's mask was cleared; upload or draw one for this image."
        sess.stale_upload, sess.stale_drawn = sess.upload_key, sess.drawn_key
        sess.mask = sess.mask_source = None
        sess.drawn_key = None  # the editor gets the new image as background and no strokes
        mask_changed = True
    # the previous image's mask reads as no input while this image is shown: events queued before the page emptied
    # the box arrive in any order (even after one with it empty); that very file given again belongs to the other image
    upload_key = None if upload_key == sess.stale_upload else upload_key
    drawn_key = None if drawn_key == sess.stale_drawn else drawn_key
    if upload_key != sess.upload_key:
        sess.upload_key, mask_changed = upload_key, True
        if upload_key is not None:
            sess.mask, sess.mask_source = mask_upload, "uploaded mask"
            out["mask_msg"] = ""
        elif sess.mask_source == "uploaded mask":
            sess.mask = sess.mask_source = None
    if drawn_key != sess.drawn_key:
        sess.drawn_key, mask_changed = drawn_key, True
        if drawn_key is not None:
            sess.mask, sess.mask_source = drawn_arr, "drawn mask"
            out["mask_msg"] = ""
        elif sess.mask_source == "drawn mask":  # the drawing was cleared: fall back to the upload, if any
            sess.mask, sess.mask_source = (mask_upload, "uploaded mask") if upload_key else (None, None)
    fam = None
    if rerun:
        fam = _try_family(fam_name, out)
        if fam is None:
            return _outputs(sess, out, k, None, keep=True)
        try:
            result = explain_all(fam, image, method=method)
        except USER_ERRORS as e:
            log.info("user error (image): %s", e)
            out["image_msg"] = f"⚠️ {str(e)[:1].upper()}{str(e)[1:]}." + (
                " Still showing the previous image's results." if sess.result is not None else "")
            # the shown image, mask and results stay; reported once (a second trigger of it finds nothing new)
            return _outputs(dataclasses.replace(old, image_key=image_key), {**out, "mask_msg": skip}, k, None,
                            keep=True)
        sess.image_key, sess.family, sess.method, sess.result = image_key, fam_name, method, result
        out["image_msg"] = out["family_msg"] = ""
    elif not mask_changed or sess.result is None:
        return _outputs(sess, out, k, None, keep=True)
    try:
        sess.result = _apply_mask(sess.result, sess)
    except USER_ERRORS as e:
        log.info("user error (mask): %s", e)
        out["mask_msg"] = f"⚠️ The mask could not be used: {e}. IOU and mass are cleared until a valid mask is given."
        sess.mask = sess.mask_source = None
        sess.result = sess.result.with_mask(None)
    return _outputs(sess, out, k, fam, new_image=new_image)


def _try_family(name: str | None, out: dict) -> Family | None:
    try:
        return load_family(name)
    except USER_ERRORS as e:
        log.info("user error (family): %s", e)
        out["family_msg"] = f"⚠️ Model family {name!r} could not be loaded: {e}."
        return None


def _outputs(sess: Session, out: dict, k, fam: Family | None, keep: bool = False, new_image: bool = False):
    """The update's outputs in UPDATE_OUTPUTS order; keep=True leaves the shown results as they are."""
    skip = gr.skip()
    result = sess.result
    if fam is not None:
        k = fam.nearest_k(k)
    views = (skip,) * 6 if keep else render(sess, k)
    # the plot follows in size_view (chained after this event), with the object's size marked when known
    bias = (skip, skip) if keep else (bias_table(result) if result is not None else None, skip)
    if result is not None and new_image and not keep:
        editor = {"background": result.image, "layers": [], "composite": result.image}
    elif new_image and result is None:
        editor = None
    else:
        editor = skip
    mask_view = skip if keep else (mask_overlay(result.image, *result.mask) if result is not None and result.mask
                                   else None)
    return (sess, _k_radio(fam, k) if fam is not None else skip, out["family_msg"], out["image_msg"],
            out["mask_msg"], mask_view, *views, *bias, editor)


def switch_k(sess: Session | None, k):
    """k changed: pick the stored result for that k (no model runs)."""
    if sess is None or sess.result is None:
        return (gr.skip(),) * 7
    k = sess.result.ks[_index(sess.result, k)]
    return (gr.update(info=k_info(k, sess.result.cam_size)), *render(sess, k))


@gpu
def faithfulness_view(sess: Session | None, k):
    """ROAD per percentile for every k and the baseline on this image (the evaluation's road_scores), as a plot
    and a table; the selected k drawn bold."""
    if sess is None or sess.result is None:
        return gr.skip(), "⚠️ Upload an image (or pick an example) on the Explain tab first, then measure."
    result = sess.result
    try:
        curves = road_curves(load_family(result.family), result)
    except USER_ERRORS as e:
        log.info("user error (faithfulness): %s", e)
        return gr.skip(), f"⚠️ {e}."
    chosen = result.topgap[_index(result, k)].name
    from matplotlib.figure import Figure  # here: 0.6 s off the start-up; no pyplot state (matplotlib's server advice)

    fig = Figure(figsize=(6, 3.2), dpi=100)
    ax = fig.subplots()
    for name, c in curves.items():
        base = result.baseline is not None and name == result.baseline.name
        ax.plot(c["percentiles"], c["scores"], "s--" if base else "o-", lw=2.5 if name == chosen else 1,
                label=f"{name}{' (' + result.method + ')' if base else ''}: ROAD {c['road']:.3f}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("pixels removed (%)", fontsize=8)
    ax.set_ylabel("(LeRF - MoRF) / 2", fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    rows = [f"| {n} | {c['road']:.3f} | " + " | ".join(f"{v:.3f}" for v in c["scores"]) + " |"
            for n, c in curves.items()]
    pcts = next(iter(curves.values()))["percentiles"]
    text = "\n".join(["| model | ROAD | " + " | ".join(f"{p}%" for p in pcts) + " |",
                      "|---|" + "---|" * (len(pcts) + 1), *rows, "",
                      "ROAD (Rong et al., 2022) with the evaluation's implementation and blur imputation, each model "
                      "on its own prediction: higher means the map ranks pixels by their real influence."])
    return fig, text


@gpu
def robustness(fam_name, sess, k, kind, eps255, rule):
    """FGSM / PGD (with the chosen step rule) on this image against Top-GAP at the chosen k and the baseline."""
    if sess is None or sess.result is None:
        return gr.skip(), "⚠️ Upload an image (or pick an example) on the Explain tab first, then run the attack."
    result = sess.result
    index = _index(result, k)
    try:
        adv, setup = attack_view(load_family(result.family), result, index, kind, float(eps255) / 255, rule)
    except USER_ERRORS as e:
        log.info("user error (attack): %s", e)
        return gr.skip(), f"⚠️ {e}."
    chosen, base = result.view(index)
    gallery, lines = [], ["| model | clean | attacked | changed |", "|---|---|---|---|"]
    for m in [chosen] + ([base] if base else []):
        a = adv[m.name]
        gallery += [(png(m.overlay), f"{m.name} clean: {m.label}"), (png(a.overlay), f"{m.name} attacked: {a.label}")]
        lines.append(f"| {m.name} | {m.label} ({m.probability:.1%}) | {a.label} ({a.probability:.1%}) | "
                     f"{'yes' if a.label != m.label else 'no'} |")
    bound_storage()
    return gallery, "\n".join(lines) + "\n\n" + setup.text()


def downloads(sess, k):
    """CAM PNGs, raw .npy and the JSON report of the chosen k, in a fresh folder of the app's own temp dir."""
    if sess is None or sess.result is None:
        return gr.skip(), "⚠️ Upload an image first; the downloads hold its CAMs."
    result = sess.result
    index = _index(result, k)
    chosen, base = result.view(index)
    folder = Path(tempfile.mkdtemp(dir=DOWNLOADS))
    files = []
    for m in [chosen] + ([base] if base else []):
        for suffix, array in (("overlay", m.overlay), ("cam", (m.cam * 255 + 0.5).astype(np.uint8))):
            files.append(folder / f"{m.name}_{suffix}.png")
            Image.fromarray(array).save(files[-1])
        files.append(folder / f"{m.name}_cam.npy")
        np.save(files[-1], m.cam)
    files.append(folder / "report.json")
    files[-1].write_text(json.dumps(result.report(index), indent=2))
    bound_storage()
    return [str(f) for f in files], ""


# ---- batch audit (logic in topgap.explorer.audit) ----

AUDIT_HELP = (f"Upload a zip of images or several image files (at most {BOUNDS.images} images, {BOUNDS.upload // 2**20} "
              f"MB uploaded, {BOUNDS.total // 2**20} MB unpacked, {BOUNDS.member // 2**20} MB per image). Masks are "
              "optional: in the zip's `masks/` folder with the image's stem (`masks/cat.png` for `cat.jpg`), or named "
              "`<stem>_mask.png` / `<stem>.mask.png`. Every image runs through every k and the baseline of the family "
              "above, with the baseline CAM method above.")


@gpu
def audit(fam_name, method, files, progress=gr.Progress()):
    """Table, CSV and summary of a batch audit: every uploaded image through every k and the baseline."""
    if not files:
        return gr.skip(), gr.skip(), "⚠️ Upload a zip of images or several image files first (masks optional)."
    try:
        fam = load_family(fam_name)
        items, notes = collect([_path(f) for f in files])
        rows = run_audit(fam, items, method, track=lambda xs: progress.tqdm(xs, desc="Auditing", unit="image"))
    except USER_ERRORS as e:
        log.info("user error (audit): %s", e)
        return None, None, f"⚠️ Audit refused: {e}."
    csv_path = write_csv(rows, tempfile.mkdtemp(dir=DOWNLOADS))
    bound_storage()
    masked = sum(item.mask is not None for item in items)
    text = (f"{len(items)} images ({masked} with a mask) through {len(fam.ks)} Top-GAP models"
            f"{' and the baseline' if fam.baseline else ''} of **{fam.name}**: {len(rows)} rows.")
    return rows, str(csv_path), text + ("\n\n**Notes:** " + "; ".join(notes) + "." if notes else "")


@functools.cache
def textures() -> dict[str, np.ndarray]:
    """The CC0 textures of assets/textures (see assets/LICENSES.md), decoded once."""
    return {p.stem: decode_image(p)[0] for p in sorted((ASSETS / "textures").glob("*.jpg"))}


@gpu
def backgrounds_view(sess: Session | None, photo):
    """The explained image's object on other backgrounds (swap.swap_all): a gallery of every model's map on each
    variant, a table of labels, and a summary per model."""
    if sess is None or sess.result is None:
        return gr.skip(), gr.skip(), ("⚠️ Upload an image (or pick an example) on the Explain tab first, with a mask "
                                      "of the object, then swap its background.")
    try:
        second = decode_image(photo)[0] if photo else None
    except InputError as e:
        log.info("user error (background photo): %s", e)
        return gr.skip(), gr.skip(), f"⚠️ The second photo could not be used: {e}."
    try:
        variants = swap_all(load_family(sess.result.family), sess.result, textures(), second)
    except USER_ERRORS as e:
        log.info("user error (backgrounds): %s", e)
        return None, None, f"⚠️ {str(e)[:1].upper()}{str(e)[1:]}."
    headers, rows = table(variants)
    bound_storage()
    return (gr.update(value=[(png(a), c) for a, c in gallery(variants)], columns=len(headers)),
            pd.DataFrame(rows, columns=headers), summary(variants))


def model_card(fam_name):
    """The family's card rendered from card.json, and its plots (whole, not cropped)."""
    if not fam_name:
        return "No model family found; see the README for training one.", None
    try:
        text, plots = render_card(STORE.folder(fam_name))  # a Hub family: its downloaded folder, card included
    except (CardError, InputError) as e:
        return f"⚠️ {e}", None
    return text, [(np.asarray(Image.open(p).convert("RGB")), caption) for p, caption in plots] or None


def _path(file) -> str | None:
    """A file argument of a typed endpoint as a path (gradio hands over a path or a FileData dict)."""
    return file.get("path") if isinstance(file, dict) else file


@gpu
def api_explain(image: FileData, mask: FileData | None = None, family: str | None = None, k: int | None = None,
                method: str = "gradcam", maps: bool = False) -> ExplainReport:
    """Explain an image with a Top-GAP family: its own CAM at every trained k against a post-hoc CAM of the
    unmodified baseline, with the prediction and (given a mask) IOU and CAM mass on the object.

    Args:
        image: the image file (PNG, JPEG, WEBP, ...; at most 10 MB and 40 megapixels).
        mask: optional object mask of this image (0/255, 0/1, palette or Oxford-IIIT trimap; nonzero = object), the
            same size as the image or scaled with its aspect ratio; adds IOU, threshold and mass per model.
        family: the model family's name as /families lists it; default: the app's default family.
        k: a trained k of the family (how many class-map cells Top-GAP pools); default: the middle trained k.
        method: the baseline's CAM method: gradcam, gradcam++, scorecam, ablationcam, eigencam, layercam, ...
        maps: also return each model's CAM ("map": min-max scaled, at the class-map resolution cam_size, 4 decimals).
    Returns:
        The report: prediction, probability and top-3 probabilities of the Top-GAP model at k; for every k and the
        baseline: label, probability, l1 sparsity, IOU, threshold, mass on the object and PxAP (None without a
        mask), and with maps=True the CAM.
    """
    if not image:
        raise user_error("image: send an image file (the first value)")
    if method not in METHODS:
        raise user_error(f"method: unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    try:
        fam = load_family(family or DEFAULT)
    except USER_ERRORS as e:
        raise user_error(f"family: {e}") from None
    k = fam.nearest_k(None) if k is None else k
    if k not in fam.ks:
        raise user_error(f"k: k = {k} was not trained in family {fam.name!r}; choose one of {fam.ks}")
    try:
        result = explain_all(fam, _path(image), method=method)
    except USER_ERRORS as e:
        raise user_error(f"image: {e}") from None
    if mask:
        try:
            result = result.with_mask(*own_mask(_path(mask), result.image.shape[:2]))
        except USER_ERRORS as e:
            raise user_error(f"mask: {e}") from None
    bound_storage()
    return explain_payload(result, result.index_of(k), maps=bool(maps))


def api_families() -> FamiliesReport:
    """The model families this app serves, without loading any: for each its source (local folder or Hub), whether
    it is loaded, its trained k, class-map size and classes (once loaded), and its model card's figures (accuracy,
    IOU, PxAP, mass on the object, l1, ROAD, attack rates per model, and the verdicts against the baseline).

    Returns:
        {"default": the default family, "families": [{name, source, default, loaded, ks, cam_size, classes, card,
        card_error}]}.
    """
    return families_payload(STORE, DEFAULT)


def mcp_enabled() -> bool:
    """MCP tools (the typed endpoints) on when TOPGAP_MCP=1 and gradio[mcp] is installed; off by default."""
    if os.environ.get("TOPGAP_MCP", "0") != "1":
        return False
    if importlib.util.find_spec("mcp") is None:
        log.warning("TOPGAP_MCP=1 but gradio[mcp] is not installed (pip install 'gradio[mcp]'); MCP stays off")
        return False
    return True


# ---- layout ----

def caption(name: str) -> str:
    """An example's caption from its file name: 'usual-background-circle' -> 'circle, usual background'."""
    words = name.split("-")
    if len(words) == 3 and words[:2] == ["background", "only"]:
        return f"{words[2]}'s background, no object"
    if len(words) == 3 and words[1] == "background":
        return f"{words[2]}, {words[0]} background"
    return {"misclassified-by-baseline": "misclassified by the baseline",
            "baseline-least-sure": "the baseline's least sure image"}.get(name, name.replace("-", " "))


SHAPES = set(SYNTH_VARIANTS["shapes"]["classes"])  # the synthetic examples' classes


def _example_order(path: Path) -> tuple[int, str]:
    """The shortcut test first: usual background, another background, the background alone, then the rest."""
    kinds = ("usual-background", "other-background", "background-only")
    return next((i for i, k in enumerate(kinds) if path.stem.startswith(k)), len(kinds)), path.stem


def _bundled_examples() -> list[tuple[ExampleSet, str]]:
    """(examples, kind): the synthetic images (assets/images + masks/) and the CC0 photos (assets/photos +
    photos/masks/), each image with the mask of the same stem when there is one."""
    sets = []
    for kind, folder, masks, glob, label, name in (
            ("synthetic", ASSETS / "images", ASSETS / "masks", "*.png",
             "Examples from the synthetic-shapes data (with the mask, where there is an object)", caption),
            ("photo", ASSETS / "photos", ASSETS / "photos" / "masks", "*.jpg",
             "CC0 photo from scikit-image, with a mask made by assets/make_photo_masks.py (see assets/LICENSES.md)",
             lambda stem: f"{stem} (CC0 photo from scikit-image)")):
        images = sorted(folder.glob(glob), key=_example_order) if folder.is_dir() else []
        rows = [[str(p), str(masks / f"{p.stem}.png") if (masks / f"{p.stem}.png").is_file() else None]
                for p in images]
        if rows:
            sets.append((ExampleSet(rows, [name(p.stem) for p in images], label), kind))
    return sets


def examples_fit(kind: str, fam_name: str | None) -> bool:
    """Whether examples of `kind` suit the family: synthetic ones a family of the synthetic shapes, photos the
    others; a dataset's (--examples) and a family whose classes are not on disk (a Hub family) take all."""
    classes = set(STORE.class_names(fam_name)) if fam_name else set()
    return kind == "dataset" or not classes or (classes <= SHAPES) == (kind == "synthetic")


def env_examples() -> ExampleSet | None:
    """The examples of TOPGAP_EXAMPLES's dataset; a folder without usable pairs is logged and left out."""
    folder = os.environ.get("TOPGAP_EXAMPLES")
    if not folder:
        return None
    try:
        return dataset_examples(folder)
    except InputError as e:
        log.warning("TOPGAP_EXAMPLES: %s; showing the bundled examples only", e)
        return None


class ExplorerBlocks(gr.Blocks):
    """gr.Blocks whose API calls with too few values get the defaults of a typed endpoint's (gr.api) optional
    arguments, or a message naming the missing ones (gradio raises a plain ValueError there, which reaches REST
    clients as {"error": null})."""

    def validate_inputs(self, block_fn, inputs):
        params = list(inspect.signature(block_fn.fn).parameters.values()) if block_fn.fn else []
        if len(inputs) < len(block_fn.inputs) == len(params) and all(isinstance(b, Api) for b in block_fn.inputs):
            missing = [p.name for p in params[len(inputs):] if p.default is p.empty]
            if missing:
                raise user_error(f"/{block_fn.api_name} needs {', '.join(missing)}; send at least "
                                 f"{', '.join(p.name for p in params if p.default is p.empty)}")
            inputs.extend(p.default for p in params[len(inputs):])  # gradio goes on with this list
        if len(inputs) < len(block_fn.inputs):
            names = [getattr(b, "label", None) or type(b).__name__ for b in block_fn.inputs]
            raise user_error(f"/{block_fn.api_name or block_fn.name} takes {len(names)} values ({', '.join(names)}); "
                             f"got {len(inputs)}. Send all of them, null for the optional ones.")
        super().validate_inputs(block_fn, inputs)


CSS = """
#metrics table, .card table {display: block; overflow-x: auto; max-width: 100%}
#metrics td, #metrics th, .card td, .card th {white-space: nowrap}
.msg p {color: #b45309; margin: 0}
@media (max-width: 640px) {
  .gradio-container {padding: 4px !important}
  #metrics table, .card table {font-size: 12px}
}
"""

def build_demo(dataset: ExampleSet | None = None, hub: ExampleSet | None = None) -> gr.Blocks:
    """The explorer's UI and its typed API (/explain, /families). Cheap: no family is loaded here; the default
    family's trained k are read from its config files and its models load on first use (see load_family).
    `dataset`: examples from a local dataset (--examples), shown first; `hub`: Oxford-IIIT Pet photos from the Hub."""
    example_sets = ([(dataset, "dataset")] if dataset else []) + ([(hub, "photo")] if hub else []) + _bundled_examples()
    with ExplorerBlocks(title="Top-GAP explorer", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# Top-GAP explorer\nThe model's own CAM (Top-GAP, min-max scaled) at each trained **k** against a "
                    "post-hoc CAM of the unmodified model. Same scaling and colour map for both.")
        sess_state = gr.State(None)
        with gr.Row():
            fam_dd = gr.Dropdown(FAMILIES, value=DEFAULT, label="Model family", elem_id="family", min_width=300)
            method_dd = gr.Dropdown(list(METHODS), value="gradcam", label="Baseline CAM method", elem_id="method",
                                    min_width=300, info=METHOD_INFO)
        family_msg = gr.Markdown(elem_id="family_msg", elem_classes="msg")
        ks0 = STORE.trained_ks(DEFAULT) if DEFAULT else []  # from config.json: no model is loaded here
        mask_in = lenient(gr.Image(type="filepath", image_mode=None, elem_id="mask_upload", format="png", render=False,
                                   label="Upload a mask (0/255, 0/1, palette, trimap)", height=260))
        k_radio = gr.Radio(ks0, value=nearest_k(ks0, None) if ks0 else None, label="k (trained values of this family)",
                           elem_id="k")
        with gr.Tab("Explain"):
            with gr.Row():
                with gr.Column(min_width=300):
                    image_in = lenient(gr.Image(type="filepath", image_mode=None, label="Image", elem_id="image",
                                                format="png", height=320))
                    image_msg = gr.Markdown(elem_id="image_msg", elem_classes="msg")
                    example_cols = []
                    for ex, kind in example_sets:  # shown when they suit the family (examples_fit)
                        with gr.Column(visible=examples_fit(kind, DEFAULT), min_width=300) as col:
                            gr.Examples(ex.rows, [image_in, mask_in], example_labels=ex.captions, label=ex.label,
                                        cache_examples=False, examples_per_page=20)
                        example_cols.append(col)
                with gr.Column(min_width=300, scale=2):
                    hint_md = gr.Markdown(elem_id="hint")
                    with gr.Row():
                        with gr.Column(min_width=180):
                            topgap_img = gr.Image(label="Top-GAP CAM (own)", format="png", interactive=False,
                                                  elem_id="topgap_cam", height=300)
                            topgap_lbl = gr.Label(num_top_classes=3, label="Top-GAP prediction")
                        with gr.Column(min_width=180):
                            base_img = gr.Image(label="Baseline CAM", format="png", interactive=False,
                                                elem_id="baseline_cam", height=300)
                            base_lbl = gr.Label(num_top_classes=3, label="Baseline prediction")
                    metrics_md = gr.Markdown("Upload an image (or pick an example) to see the CAMs.", elem_id="metrics")
            with gr.Accordion("Mask: IOU and mass on the object (optional; belongs to the image above)", open=True):
                with gr.Row():
                    mask_in.render()
                    draw_in = gr.ImageMask(label="…or draw the object on the image", type="numpy", sources=(),
                                           transforms=(), layers=False, elem_id="mask", format="png", height=260,
                                           brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"))
                    mask_view = gr.Image(label="Mask in use (green: object, yellow: left out)", format="png",
                                         interactive=False, elem_id="mask_view", height=260)
                mask_msg = gr.Markdown(elem_id="mask_msg", elem_classes="msg")
            with gr.Row():
                dl_btn = gr.Button("Prepare downloads (CAM PNG, .npy, JSON)")
                dl_files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
            dl_msg = gr.Markdown(elem_classes="msg")
        with gr.Tab("Bias"):
            gr.Markdown("**Size prior.** Top-GAP pools the top k of the h x w cells of each class map: k should be "
                        "about the object's area in class-map cells (paper, section 3.2).")
            with gr.Row():
                # a Textbox, not a Number: Gradio's Number cannot be empty (it shows and sends 0, which the
                # assistant must refuse), and empty is how "from the mask" is asked for
                size_in = gr.Textbox("", label="Object size (fraction of the image, 0 < f < 1; empty: from the mask)",
                                     placeholder="e.g. 0.25", max_lines=1, elem_id="size_fraction", min_width=300)
                size_btn = gr.Button("Use the nearest trained k", elem_id="use_k")
            size_md = gr.Markdown(elem_id="size_advice")
            bias_plot = gr.Plot(label="This image's figures against k (k/(h*w)); grey: the selected k, dotted: the "
                                "object's area", elem_id="bias_plot")
            bias_table = gr.Dataframe(headers=["model", "k", "k/(h*w)", "prediction", "prob", "IOU", "l1", "mass"],
                                      interactive=False, label="All k and the baseline on this image")
            faith_btn = gr.Button("Measure faithfulness (ROAD) on this image", elem_id="faith_btn")
            faith_plot = gr.Plot(label="ROAD per share of pixels removed", elem_id="faith_plot")
            faith_md = gr.Markdown(elem_id="faith_md")
        with gr.Tab("Attack"):
            gr.Markdown(PGD_HELP, elem_id="attack_help")
            with gr.Row():
                attack_kind = gr.Radio(list(ATTACKS), value="fgsm", label="Attack")
                pgd_rule = gr.Radio([(name, key) for key, name in PGD_RULE_NAMES.items()], value=PGD_RULE,
                                    label="PGD step rule", info=f"{PGD_STEPS} steps; FGSM takes one step of eps",
                                    elem_id="pgd_rule")
                eps = gr.Slider(1, 16, value=1, step=1, label="eps (x/255)")
                attack_btn = gr.Button("Attack this image", variant="primary")
            attack_gallery = gr.Gallery(label="Before / after", columns=2, format="png", object_fit="contain",
                                        height="auto", elem_id="attack_gallery")
            attack_md = gr.Markdown(elem_id="attack_md")
        with gr.Tab("Backgrounds"):
            gr.Markdown("**Background swap**: the object of the image above (its mask from the Explain tab, uploaded "
                        "or drawn) pasted on CC0 textures, your second photo and blank grey, or removed (No-FG: "
                        "blacked out; Only-BG-T: filled with its own background), as in `topgap backgrounds` (the "
                        "Backgrounds Challenge, Xiao et al., ICLR 2021). Every model of the family on each.")
            with gr.Row():
                photo_in = lenient(gr.Image(type="filepath", image_mode=None, format="png", height=200,
                                            label="Optional: a second photo as background", elem_id="bg_photo"))
                swap_btn = gr.Button("Swap the background", variant="primary", elem_id="swap_btn")
            swap_md = gr.Markdown(elem_id="swap_md")
            swap_gallery = gr.Gallery(label="Each row: the variant, then every model's map on it", format="png",
                                      columns=len(ks0) + 2, object_fit="contain", height="auto",
                                      elem_id="swap_gallery")
            swap_table = gr.Dataframe(interactive=False, label="Label and probability per variant and model",
                                      elem_id="swap_table")
        with gr.Tab("Card"):
            card_md = gr.Markdown(elem_id="card", elem_classes="card")
            card_plots = gr.Gallery(label="Plots (click to enlarge)", columns=2, object_fit="contain", height="auto",
                                    format="png", elem_id="card_plots")
        with gr.Tab("Audit"):
            gr.Markdown(AUDIT_HELP)
            with gr.Row():
                audit_files = gr.File(label="Zip or images", file_count="multiple", elem_id="audit_files",
                                      file_types=[".zip", *IMAGE_SUFFIXES])
                audit_csv = gr.File(label="CSV", interactive=False, elem_id="audit_csv")
            audit_btn = gr.Button("Audit these images", variant="primary", elem_id="audit_btn")
            audit_md = gr.Markdown(elem_id="audit_msg")
            audit_table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="audit_table",
                                       label="Per image and model (the figures /explain returns)")
        views = [topgap_img, topgap_lbl, base_img, base_lbl, metrics_md, hint_md]
        bias = [bias_table, bias_plot]
        private = dict(api_visibility="undocumented")
        update_inputs = [fam_dd, image_in, mask_in, draw_in, method_dd, k_radio, sess_state]
        update_outputs = [sess_state, k_radio, family_msg, image_msg, mask_msg, mask_view, *views, *bias, draw_in]
        size_args = dict(fn=size_view, inputs=[sess_state, k_radio, size_in], outputs=[size_md, bias_plot], **private)
        gr.on([image_in.change, mask_in.change, draw_in.change, fam_dd.change, method_dd.change], update, update_inputs,
              update_outputs, trigger_mode="always_last", concurrency_id=GROUP, concurrency_limit=1,
              **private).then(**size_args)
        gr.on([size_in.submit, size_in.blur], **size_args)
        size_btn.click(use_advised_k, [sess_state, size_in], k_radio, **private)
        # a new upload makes the mask box empty in the page itself: an output to mask_in would make gradio rebuild
        # the component per session without lenient()'s preprocess
        image_in.upload(None, None, mask_in, js="() => null", queue=False, **private)
        k_radio.change(switch_k, [sess_state, k_radio], [k_radio, *views], **private).then(**size_args)
        faith_btn.click(faithfulness_view, [sess_state, k_radio], [faith_plot, faith_md], concurrency_id=GROUP,
                        concurrency_limit=1, **private)
        dl_btn.click(downloads, [sess_state, k_radio], [dl_files, dl_msg], **private)
        attack_btn.click(robustness, [fam_dd, sess_state, k_radio, attack_kind, eps, pgd_rule],
                         [attack_gallery, attack_md], concurrency_id=GROUP, concurrency_limit=1, **private)
        audit_btn.click(audit, [fam_dd, method_dd, audit_files], [audit_table, audit_csv, audit_md],
                        concurrency_id=GROUP, concurrency_limit=1, **private)
        gr.on([demo.load, fam_dd.change], model_card, fam_dd, [card_md, card_plots], **private)
        swap_btn.click(backgrounds_view, [sess_state, photo_in], [swap_gallery, swap_table, swap_md],
                       concurrency_id=GROUP, concurrency_limit=1, **private)
        fam_dd.change(lambda f: [gr.update(visible=examples_fit(k, f)) for _, k in example_sets], fam_dd,
                      example_cols, queue=False, **private)
        demo.load(preload, fam_dd, family_msg, concurrency_id=GROUP, concurrency_limit=1, **private)
        gr.api(api_explain, api_name="explain", concurrency_id=GROUP, concurrency_limit=1)
        gr.api(api_families, api_name="families", concurrency_limit=None)
    demo.queue(max_size=64, default_concurrency_limit=1)
    return demo


def preload(fam_name: str | None):
    """On page load: the family's models, loaded now if this is their first use, with a message meanwhile."""
    if not fam_name or fam_name not in FAMILIES or STORE.loaded(fam_name) is not None:
        yield gr.skip()
        return
    yield f"⏳ Loading model family {fam_name!r} (first use, a few seconds)…"
    try:
        STORE.get(fam_name)
        yield ""
    except USER_ERRORS as e:
        log.info("user error (family): %s", e)
        yield f"⚠️ Model family {fam_name!r} could not be loaded: {e}."


demo = build_demo(env_examples())  # cheap: see build_demo (a dataset's examples only with TOPGAP_EXAMPLES)


def _stop(*_):
    sys.exit(0)  # runs atexit: WORK (uploads, cache, images, downloads) is removed


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="Top-GAP explorer (see the README's app section)")
    parser.add_argument("--examples", metavar="DIR", help="a local dataset with masks (folder format or Oxford-IIIT "
                        "Pet) whose first images per class become the examples gallery (env: TOPGAP_EXAMPLES)")
    args = parser.parse_args()
    hub = hub_examples(os.environ["TOPGAP_HUB_EXAMPLES"]) if os.environ.get("TOPGAP_HUB_EXAMPLES") else None
    if args.examples or hub:
        try:
            demo = build_demo(dataset_examples(args.examples) if args.examples else env_examples(), hub)
        except InputError as e:
            parser.error(str(e))
    signal.signal(signal.SIGTERM, _stop)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                max_file_size="10mb", allowed_paths=[], share=False, css=CSS, mcp_server=mcp_enabled())
