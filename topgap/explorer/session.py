"""One visitor's image, mask and result, and how an event moves them (the app's one event for image, mask,
drawing, family and method). A mask belongs to the image it was given with: a new image clears it (unless it
arrives together with the image, as an example's does); a family or method change keeps it."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..checkpoint import CheckpointError
from ..data.imageio import drawn_mask
from .explain import PROTOCOL, Family, InputError, Result, explain_all

__all__ = ["Session", "Step", "advance", "apply_mask", "content_key", "USER_ERRORS", "warning"]

log = logging.getLogger("topgap.app")
USER_ERRORS = (InputError, CheckpointError)


def warning(e: Exception | str) -> str:
    """An expected failure as one sentence for the page: '⚠️ Message.'"""
    text = str(e)
    return f"⚠️ {text[:1].upper()}{text[1:]}."


@dataclasses.dataclass
class Session:
    """What the page shows: the image (by content), the mask tied to it and where it came from, the result."""
    image_key: str | None = None
    upload_key: str | None = None  # the mask upload last seen (None: none, or it was cleared)
    drawn_key: str | None = None
    # the previous image's upload and drawing: events queued before the page cleared them still carry them, and
    # they must not come back while this image is shown (see advance)
    stale_upload: str | None = None
    stale_drawn: str | None = None
    mask: np.ndarray | str | None = None  # the mask in use: an upload (path) or a drawn bool array
    mask_source: str | None = None  # "uploaded mask" | "drawn mask"
    family: str | None = None
    method: str | None = None
    result: Result | None = None
    image_path: str | None = None  # the file of the shown result's image: the box gets it back after a refusal
    refused_key: str | None = None  # the image refused last: its other queued events find nothing new
    k_by_family: dict[str, int] = dataclasses.field(default_factory=dict)  # the k last shown in each family


@dataclasses.dataclass
class Step:
    """An event's outcome: the new session, the k to show, the family loaded for it (its k control is refreshed),
    the messages next to family, image and mask (None: the page keeps what it shows), whether the shown results
    stay (keep), whether the image is new (the drawing editor gets it as background) and whether the drawing was
    replaced by an upload (its strokes are cleared, so the page shows only the mask in use)."""
    sess: Session
    messages: dict[str, str | None]
    k: int | None
    family: Family | None = None
    keep: bool = False
    new_image: bool = False
    clear_drawing: bool = False  # an upload replaced the drawing as the mask in use: the editor drops its strokes
    restore_image: bool = False  # an image was refused: the box shows the result's image again (or none)


def content_key(value) -> str | None:
    """Content fingerprint of a file path or array (None for None); a file is read once per (path, mtime, size)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return hashlib.sha1(value.tobytes()).hexdigest()
    st = os.stat(value)
    return _file_key(str(value), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _file_key(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _try_family(load: Callable[[str | None], Family], name: str | None, out: dict) -> Family | None:
    try:
        return load(name)
    except USER_ERRORS as e:
        log.info("user error (family): %s", e)
        out["family"] = f"⚠️ Model family {name!r} could not be loaded: {e}."
        return None


def _take_masks(sess: Session, out: dict, mask_upload, drawn_arr, upload_key, drawn_key) -> tuple[bool, bool]:
    """The upload and drawing of this event into the session: (the mask in use may have changed, an upload replaced
    the drawing)."""
    changed = replaced = False
    # the previous image's mask reads as no input while this image is shown: events queued before the page emptied
    # the box arrive in any order (even after one with it empty); that very file given again belongs to the other image
    upload_key = None if upload_key == sess.stale_upload else upload_key
    drawn_key = None if drawn_key == sess.stale_drawn else drawn_key
    if upload_key != sess.upload_key:
        sess.upload_key, changed = upload_key, True
        if upload_key is not None:
            if sess.mask_source == "drawn mask":  # the upload replaces the drawing: its strokes go for good (an
                # event the page sent before it cleared them reads as no drawing)
                sess.stale_drawn, sess.drawn_key, drawn_key = sess.drawn_key, None, None
                replaced = True
            sess.mask, sess.mask_source = mask_upload, "uploaded mask"
            out["mask"] = ""
        elif sess.mask_source == "uploaded mask":
            sess.mask = sess.mask_source = None
    if drawn_key != sess.drawn_key:
        sess.drawn_key, changed = drawn_key, True
        if drawn_key is not None:
            sess.mask, sess.mask_source = drawn_arr, "drawn mask"
            out["mask"] = ""
        elif sess.mask_source == "drawn mask":  # the drawing was cleared: fall back to the upload, if any
            sess.mask, sess.mask_source = (mask_upload, "uploaded mask") if upload_key else (None, None)
    return changed, replaced


def apply_mask(sess: Session, out: dict) -> None:
    """The session's mask onto its result (again); a mask that cannot be used is dropped, said in out['mask']."""
    try:
        notes = [f"using the {sess.mask_source}"] if sess.mask is not None else []
        sess.result = sess.result.with_mask(sess.mask, notes=notes, same_aspect=sess.mask_source == "uploaded mask")
    except USER_ERRORS as e:
        log.info("user error (mask): %s", e)
        out["mask"] = f"⚠️ The mask could not be used: {e}. IOU and mass are cleared until a valid mask is given."
        sess.mask = sess.mask_source = None
        sess.result = sess.result.with_mask(None)


def advance(old: Session | None, fam_name, image, mask_upload, drawn, method, k,
            load: Callable[[str | None], Family], explain: Callable = explain_all, protocol: str = PROTOCOL) -> Step:
    """New image, mask, drawing, family, method or protocol (the own CAM's post-processing: no model runs for it).
    Expected failures are reported next to their input, once; the other outputs keep what they showed. `load`
    gives the family (raising USER_ERRORS), `explain` runs the models."""
    old = old or Session()
    sess = dataclasses.replace(old)
    if fam_name != old.family and old.family is not None and k is not None:  # a round trip comes back to its k
        sess.k_by_family = {**old.k_by_family, old.family: k}
        k = sess.k_by_family.get(fam_name, k)
    out = dict(family=None, image=None, mask=None)  # a message stays until its input is used again
    if image is None:  # cleared, or a file the page could not show: keep what is shown unless the family changed
        fam = None if fam_name == sess.family else _try_family(load, fam_name, out)
        if fam is None:
            return Step(sess, out, k, keep=True)
        return Step(Session(family=fam_name, method=method, k_by_family=sess.k_by_family), out, k, fam,
                    new_image=True)
    image_key, drawn_arr = content_key(image), drawn_mask(drawn)
    if image_key is not None and image_key == old.refused_key:  # the refused file again (given again, or an event
        return Step(sess, out, k, keep=True, restore_image=True)  # queued before the box got the old image back)
    new_image = image_key != sess.image_key
    if new_image:
        if sess.mask is not None:
            out["mask"] = "The previous image's mask was cleared; upload or draw one for this image."
        sess.stale_upload, sess.stale_drawn = sess.upload_key, sess.drawn_key
        sess.mask = sess.mask_source = None
        sess.drawn_key = None  # the editor gets the new image as background and no strokes
    mask_changed, replaced = _take_masks(sess, out, mask_upload, drawn_arr, content_key(mask_upload),
                                         content_key(drawn_arr))
    mask_changed |= new_image
    fam = None
    if new_image or fam_name != sess.family or method != sess.method:
        fam = _try_family(load, fam_name, out)
        if fam is None:
            return Step(sess, out, k, keep=True)
        try:
            result = explain(fam, image, method=method, protocol=protocol)
        except USER_ERRORS as e:
            log.info("user error (image): %s", e)
            out["image"] = warning(e) + (" Still showing the previous image's results." if old.result else "")
            # the shown results stay and the box gets their image back; reported once (refused_key)
            return Step(dataclasses.replace(old, refused_key=image_key), {**out, "mask": None}, k, keep=True,
                        restore_image=True)
        sess.image_key, sess.family, sess.method, sess.result = image_key, fam_name, method, result
        sess.image_path, sess.refused_key = str(image), None
        out["image"] = out["family"] = ""
    elif sess.result is not None and sess.result.protocol != protocol:
        sess.result = sess.result.with_protocol(protocol)
    elif not mask_changed or sess.result is None:
        return Step(sess, out, k, keep=True)
    apply_mask(sess, out)
    return Step(sess, out, k, fam, new_image=new_image, clear_drawing=replaced)
