"""The explorer's event handlers and typed API: what each click does, for gradio (this module and blocks.py are
the only ones of the package that import it). `Explorer` holds the families, the default and the workspace; app.py
builds the page and wires these methods to it. No `from __future__ import annotations` here: gr.api reads the
typed endpoints' annotations as objects."""

import dataclasses
import functools
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.data_classes import FileData
from PIL import Image

from ..cam import METHODS, PROTOCOLS
from ..data.imageio import decode_image
from .api import ExplainReport, FamiliesReport, explain_payload, families_payload
from .audit import collect, run_audit, write_csv
from .card_view import CardError, card_parts, markdown_table
from .explain import (PROTOCOL, SLOW_METHODS, Family, InputError, Result, attack_view, baseline_map, explain_all,
                      family_hint, k_info, mask_overlay, own_mask)
from .examples import examples_fit
from .faith import road_curves
from .hub import store_from_env
from .plots import k_figure, road_figure
from .session import USER_ERRORS, Session, Step, advance, apply_mask, content_key, warning
from .swap import gallery, summary, swap_all, table
from .views import SIZE_HINT, attack_md, audit_md, bias_md, metrics_md, road_md, size_advice, write_downloads
from .workspace import Workspace

__all__ = ["Explorer", "user_error", "PREFERRED", "FIRST_IMAGE"]

log = logging.getLogger("topgap.app")
# the default family: TOPGAP_DEFAULT_FAMILY, else the first of these present. The synthetic benchmark first: its
# examples are in-distribution (the shortcut test), and no offline photo of the pets family's three breeds exists
PREFERRED = ["synthetic-shapes", "oxford-pet-lite0", "synth"]
# results kept per (family, image, method, protocol), so that the first view and the examples answer at once; one pets
# result is about 5 MB (a 451x300 photo, 4 models: maps, overlays, raw maps), so 8 hold about 40-80 MB
CACHED_RESULTS = 8
SESSIONS_TRACKED = 256  # the latest state signature of this many visitors (a slow baseline must not land on another)
FIRST_IMAGE = "Upload an image (or pick an example) on the Explain tab first"


def user_error(message: str) -> gr.Error:
    """A gr.Error for an expected failure: shown to the user, logged on one line without a traceback."""
    log.info("user error: %s", message)
    return gr.Error(message, print_exception=False)


def _holding_models(method):
    """Run the handler `method` holding the explorer's models: the page's model events share one queue, but /explain
    has its own (a slow method there must not hold up others), so they take turns here instead."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._models:
            return method(self, *args, **kwargs)
    return run


def _path(file) -> str | None:
    """A file argument of a typed endpoint as a path (gradio hands over a path or a FileData dict)."""
    return file.get("path") if isinstance(file, dict) else file


class Explorer:
    """The families under `models` (and TOPGAP_HUB_FAMILIES), the default one, and the files the app writes."""

    def __init__(self, models: str | Path, assets: str | Path, workspace: Workspace | None = None):
        self.models, self.assets = Path(models), Path(assets)
        self.store = store_from_env(self.models)
        self.families = self.store.names()
        preferred = [os.environ.get("TOPGAP_DEFAULT_FAMILY"), *PREFERRED]
        self.default = next((f for f in preferred if f in self.families), self.families[0] if self.families else None)
        self.work = workspace or Workspace()
        self._results: OrderedDict[tuple, Result] = OrderedDict()
        self._latest: OrderedDict[str, tuple] = OrderedDict()  # session hash -> what its page shows (_signature)
        self._lock = threading.Lock()
        self._computing: dict[tuple, Future] = {}  # result key -> its computation under way (explain, _claim)
        self._first_key: tuple | None = None  # the first view's result key: kept in the cache
        self.first_view: Future | None = None  # its computation (start_first_view)
        # one at a time on the families' models; a slow method's baseline works on a copy, one at a time (slow_map)
        self._models, self._slow = threading.RLock(), threading.Lock()

    def explain(self, fam: Family, image, method: str, protocol: str = PROTOCOL, slow_baseline: bool = False) -> Result:
        """explain_all, remembered for the CACHED_RESULTS latest (family, image content, method, protocol): the
        first view and the examples are computed once for every visitor, also when several ask at the same time
        (the later ones wait for the computation under way). A slow method's baseline (SLOW_METHODS) is left
        pending unless `slow_baseline` (complete_baseline computes it in its own queue)."""
        key = (fam.name, content_key(image) if isinstance(image, (str, Path)) else None, method, protocol)

        def compute() -> Result:
            with self._models:
                return explain_all(fam, image, method=method, protocol=protocol, slow_baseline=False)

        if key[1] is None:  # an array: nothing to share it by
            result = compute()
        else:
            future, mine = self._claim(key)
            result = self._fill(key, future, compute) if mine else future.result()
        if slow_baseline and result.pending:
            result = result.with_baseline(self.slow_map(fam, result))
        self._remember(key, result)
        return result

    def _claim(self, key: tuple) -> tuple[Future, bool]:
        """The result of `key` as a future: (done, False) when cached, (the one under way, False) when another
        thread computes it, else (a new one, True): the caller computes it and fills it (_fill)."""
        with self._lock:
            future = self._computing.get(key)
            if future is None and key in self._results:
                self._results.move_to_end(key)
                future = Future()
                future.set_result(self._results[key])
            if future is not None:
                return future, False
            future = self._computing[key] = Future()
            return future, True

    def _fill(self, key: tuple, future: Future, compute) -> Result:
        """Run `compute`, cache its result and hand it (or its exception) to everyone waiting on `future`."""
        try:
            result = compute()
        except BaseException as e:
            with self._lock:
                self._computing.pop(key, None)
            future.set_exception(e)
            raise
        self._remember(key, result)
        with self._lock:
            self._computing.pop(key, None)
        future.set_result(result)
        return result

    def slow_map(self, fam: Family, result: Result):
        """The baseline's map of a slow method (result.pending) on the family's copy of the baseline
        (Family.slow_baseline): it never holds the models, so the other events and API calls go on meanwhile."""
        with self._slow:
            return baseline_map(fam, result, fam.slow_baseline())

    def _cached(self, key: tuple) -> Result | None:
        with self._lock:
            if key[1] is None or key not in self._results:
                return None
            self._results.move_to_end(key)
            return self._results[key]

    def _remember(self, key: tuple, result: Result) -> None:
        if key[1] is None:
            return
        with self._lock:
            if key not in self._results or self._results[key].pending:
                self._results[key] = result
            while len(self._results) > CACHED_RESULTS:  # the oldest goes, never the first view
                del self._results[next(k for k in self._results if k != self._first_key)]

    @staticmethod
    def _signature(sess: Session) -> tuple:
        """What a page shows, in short: image, family, method, protocol and masks."""
        protocol = sess.result.protocol if sess.result else None
        return sess.image_key, sess.family, sess.method, protocol, sess.upload_key, sess.drawn_key

    def _track(self, request: gr.Request | None, sess: Session) -> None:
        if request is not None and getattr(request, "session_hash", None):
            with self._lock:
                self._latest[request.session_hash] = self._signature(sess)
                self._latest.move_to_end(request.session_hash)
                while len(self._latest) > SESSIONS_TRACKED:
                    self._latest.popitem(last=False)

    def _stale(self, request: gr.Request | None, sess: Session) -> bool:
        """Whether the visitor's page moved on (another image, mask, family, method or protocol) since `sess`."""
        hash_ = getattr(request, "session_hash", None) if request is not None else None
        with self._lock:
            return hash_ in self._latest and self._latest[hash_] != self._signature(sess)

    def complete_baseline(self, sess: Session | None, k, request: gr.Request = None):
        """The baseline's map of a slow method (SLOW_METHODS), in its own queue on a copy of the baseline model: the
        Top-GAP maps stay on screen and other visitors' events go on. Outputs: the session, the Explain views and
        the bias table; nothing when the visitor's page has moved on meanwhile (the map is cached for it)."""
        result = sess.result if sess else None
        if result is None or result.pending is None:
            return (gr.skip(),) * 9
        fam = self.store.get(result.family)
        key = (result.family, sess.image_key, result.method, result.protocol)
        done = self._cached(key)
        base = done.baseline if done is not None and not done.pending else self.slow_map(fam, result)
        if done is not None and done.pending:
            self._remember(key, done.with_baseline(base))
        if self._stale(request, sess):
            return (gr.skip(),) * 9
        sess = dataclasses.replace(sess, result=result.with_baseline(base))
        apply_mask(sess, {})
        return (sess, *self.render(sess, k), bias_md(sess.result))

    def first_example(self, fam_name: str | None, example_sets) -> tuple[str | None, str | None]:
        """The (image, mask) of the first example that suits the family, for the page's first view; (None, None)
        when there is none."""
        for examples, kind in example_sets:
            if examples.rows and examples_fit(self.store, kind, fam_name):
                return tuple(examples.rows[0])
        return None, None

    def start_first_view(self, example_sets, after: threading.Event | None = None) -> Future | None:
        """Load the default family and compute its first example (the first view) in a background thread, once
        `after` is set (app.py: when the server serves, so that the two do not share the CPU; None: at once). A page
        load that asks for it before it is done waits for this computation (it is under way for explain from this
        call on, see _claim); later ones find it cached (never evicted). Returns the future of its Result (also
        `self.first_view`); None without a default family or example. Called once, at start."""
        image, _ = self.first_example(self.default, example_sets)
        if not self.default or not isinstance(image, str):
            return None
        key = self._first_key = (self.default, content_key(image), "gradcam", PROTOCOL)
        self.first_view, mine = self._claim(key)

        def compute() -> Result:
            fam = self.store.get(self.default)
            with self._models:
                return explain_all(fam, image, method="gradcam", protocol=PROTOCOL, slow_baseline=False)

        def run() -> None:
            if after is not None:
                after.wait()
            try:
                self._fill(key, self.first_view, compute)
            except USER_ERRORS as e:  # a page load waiting for it says why
                log.warning("first view not prepared: %s", e)

        if mine:
            threading.Thread(target=run, name="first-view", daemon=True).start()
        return self.first_view

    def load_family(self, name: str | None) -> Family:
        """The named family, loaded (and warmed up) on its first use, with a message to the page while it loads."""
        if not name:
            raise InputError(f"no model family found under {self.models}; train one (topgap train --out "
                             f"{self.models}/<family>) or set TOPGAP_MODELS to a folder of families")
        if self.store.loaded(name) is None:
            if name not in self.families:
                self.store.folder(name)  # the unknown-family message
            log.info("loading model family %s", name)
            gr.Info(f"Loading model family {name} (first use, a few seconds)…", duration=5)
        return self.store.get(name)

    def preload(self, fam_name: str | None):
        """On page load: the family's models, loaded now if this is their first use, with a message meanwhile."""
        if not fam_name or fam_name not in self.families or self.store.loaded(fam_name) is not None:
            yield gr.skip()
            return
        yield f"Loading model family {fam_name!r} (first use, a few seconds)…"
        try:
            self.store.get(fam_name)
            yield ""
        except USER_ERRORS as e:
            log.info("user error (family): %s", e)
            yield f"⚠️ Model family {fam_name!r} could not be loaded: {e}."

    @functools.lru_cache(maxsize=32)
    def _about(self, fam_name: str) -> str | None:
        """The family's data in a few words (its card's title), for the out-of-distribution hint."""
        try:
            return json.loads((self.models / fam_name / "card.json").read_text()).get("title")
        except (OSError, ValueError, AttributeError):
            return None

    # ---- Explain: one event for image, mask, drawing, family and method; k only reads the stored result ----

    def render(self, sess: Session | None, k):
        """Overlays, top-3 labels, metrics, hint and the (own, baseline) pair of the wipe slider for k: reads the
        stored result only."""
        result = sess.result if sess else None
        if result is None:
            return None, None, None, None, "Upload an image (or pick an example) to see the CAMs.", "", None
        index = result.nearest_index(k)
        chosen, base = result.view(index)
        names = self.store.get(result.family).class_names
        own, theirs = self.work.png(chosen.overlay), self.work.png(base.overlay) if base else None
        return (own, chosen.top, theirs, base.top if base else None, metrics_md(result, index, sess.mask_source),
                family_hint(result, index, names, self._about(result.family)), (own, theirs) if theirs else None)

    def update(self, fam_name, image, mask_upload, drawn, method, k, sess: Session | None, protocol=PROTOCOL,
               request: gr.Request = None):
        """New image, mask, drawing, family, method or protocol (session.advance); outputs in app.py's order."""
        step = advance(sess, fam_name, image, mask_upload, drawn, method, k, self.load_family, explain=self.explain,
                       protocol=protocol or PROTOCOL)
        self._track(request, step.sess)
        return self._outputs(step)

    def _outputs(self, step: Step):
        skip, sess, result = gr.skip(), step.sess, step.sess.result
        k = step.family.nearest_k(step.k) if step.family is not None else step.k
        views = (skip,) * 7 if step.keep else self.render(sess, k)
        # the plot follows in size_view (chained after this event), with the object's size marked when known
        bias = (skip, skip) if step.keep else (bias_md(result) if result is not None else "", skip)
        # a new image, or strokes an upload replaced: the page clears the editor with its own button (a value sent
        # into an editor that holds strokes can leave it "processing" for good), then editor_background gives it
        # the image again
        reset = str(time.monotonic_ns()) if (step.new_image or step.clear_drawing) and not step.keep else skip
        mask_view = skip if step.keep else (mask_overlay(result.image, *result.mask) if result and result.mask
                                            else None)
        k_control = (gr.update(choices=list(step.family.ks), value=k, info=k_info(k, step.family.cam_size))
                     if step.family is not None else skip)
        msgs = [skip if step.messages[n] is None else step.messages[n] for n in ("family", "image", "mask")]
        shown = sess.image_path if sess.image_path and os.path.isfile(sess.image_path) else None
        image = shown if step.restore_image else skip  # a refused picture does not stay in the box
        return (sess, k_control, *msgs, mask_view, *views, *bias, image, reset)

    def editor_background(self, sess: Session | None) -> dict | None:
        """The drawing editor, cleared by the page, gets the image of the results shown as its background and no
        strokes (no results: it stays empty)."""
        result = sess.result if sess is not None else None
        return {"background": result.image, "layers": [], "composite": result.image} if result is not None else None

    def switch_k(self, sess: Session | None, k):
        """k changed: pick the stored result for that k (no model runs)."""
        if sess is None or sess.result is None:
            return (gr.skip(),) * 8
        k = sess.result.ks[sess.result.nearest_index(k)]
        return (gr.update(info=k_info(k, sess.result.cam_size)), *self.render(sess, k))

    def downloads(self, sess, k):
        """CAM PNGs, raw .npy and the JSON report of the chosen k, in a fresh folder of the workspace."""
        if sess is None or sess.result is None:
            return gr.skip(), "⚠️ Upload an image first; the downloads hold its CAMs."
        files = write_downloads(sess.result, sess.result.nearest_index(k), self.work.folder())
        self.work.bound()
        return gr.update(value=[str(f) for f in files], visible=True), ""

    # ---- Bias: the size prior and faithfulness ----

    def bias_view(self, sess: Session | None, k=None):
        """Table and plot across all k and the baseline, the selected k marked."""
        result = sess.result if sess else None
        return ("", None) if result is None else (bias_md(result), k_figure(result, k))

    def size_view(self, sess: Session | None, k, typed):
        """The size-prior assistant: the object's area in class-map cells, the nearest trained k, the curves."""
        if sess is None or sess.result is None:
            return f"{FIRST_IMAGE}. {SIZE_HINT}", None
        advice, text = size_advice(sess, typed)
        return text, k_figure(sess.result, k, advice)

    def use_advised_k(self, sess: Session | None, typed):
        """Set the k control to the advised k (its change event shows that k's maps)."""
        if sess is None or sess.result is None:
            return gr.skip()
        advice, _ = size_advice(sess, typed)
        return advice.k if advice else gr.skip()

    @_holding_models
    def faithfulness_view(self, sess: Session | None, k):
        """ROAD per percentile for every k and the baseline on this image (the evaluation's road_scores), as a plot
        and a table; the selected k drawn bold."""
        if sess is None or sess.result is None:
            return gr.skip(), f"⚠️ {FIRST_IMAGE}, then measure."
        try:
            curves = road_curves(self.load_family(sess.result.family), sess.result)
        except USER_ERRORS as e:
            log.info("user error (faithfulness): %s", e)
            return gr.skip(), f"⚠️ {e}."
        return road_figure(curves, sess.result, k), road_md(curves)

    # ---- Attack, Backgrounds, Card, Audit ----

    @_holding_models
    def robustness(self, fam_name, sess, k, kind, eps255, rule):
        """FGSM / PGD (with the chosen step rule) on this image against Top-GAP at the chosen k and the baseline."""
        if sess is None or sess.result is None:
            return gr.skip(), f"⚠️ {FIRST_IMAGE}, then run the attack."
        result: Result = sess.result
        index = result.nearest_index(k)
        try:
            adv, setup = attack_view(self.load_family(result.family), result, index, kind, float(eps255) / 255, rule)
        except USER_ERRORS as e:
            log.info("user error (attack): %s", e)
            return gr.skip(), f"⚠️ {e}."
        models = [m for m in result.view(index) if m is not None]
        pictures = [(self.work.png(x.overlay), f"{m.name} {when}: {x.label}")
                    for m in models for x, when in ((m, "clean"), (adv[m.name], "attacked"))]
        self.work.bound()
        return pictures, attack_md(models, adv, setup.text())

    @functools.cache
    def textures(self) -> dict[str, np.ndarray]:
        """The CC0 textures of assets/textures (see assets/LICENSES.md), decoded once."""
        return {p.stem: decode_image(p)[0] for p in sorted((self.assets / "textures").glob("*.jpg"))}

    @_holding_models
    def backgrounds_view(self, sess: Session | None, photo):
        """The explained image's object on other backgrounds (swap.swap_all): a gallery of every model's map on
        each variant, a table of labels, and a summary per model."""
        if sess is None or sess.result is None:
            return gr.skip(), gr.skip(), f"⚠️ {FIRST_IMAGE}, with a mask of the object, then swap its background."
        try:
            second = decode_image(photo)[0] if photo else None
        except InputError as e:
            log.info("user error (background photo): %s", e)
            return gr.skip(), gr.skip(), f"⚠️ The second photo could not be used: {e}."
        try:
            variants = swap_all(self.load_family(sess.result.family), sess.result, self.textures(), second)
        except USER_ERRORS as e:
            log.info("user error (backgrounds): %s", e)
            return None, None, warning(e)
        headers, rows = table(variants)
        self.work.bound()
        return (gr.update(value=[(self.work.png(a), c) for a, c in gallery(variants)], columns=len(headers)),
                markdown_table(headers, rows), summary(variants))

    def model_card(self, fam_name):
        """The family's card from card.json: its summary (what reproduces, what does not), its plots (whole, not
        cropped) and the details (tables, training, commands)."""
        if not fam_name:
            return "No model family found; see docs/cli.md for training one.", None, ""
        try:
            summary, details, plots = card_parts(self.store.folder(fam_name))  # a Hub family: its download
        except (CardError, InputError) as e:
            return f"⚠️ {e}", None, ""
        return summary, [(np.asarray(Image.open(p).convert("RGB")), cap) for p, cap in plots] or None, details

    @_holding_models
    def audit(self, fam_name, method, files, progress=gr.Progress()):
        """Table (the headline figures), CSV (every column) and summary of a batch audit: every uploaded image
        through every k and the baseline."""
        if not files:
            return gr.skip(), gr.skip(), "⚠️ Upload a zip of images or several image files first (masks optional)."
        if method in SLOW_METHODS:  # tens of seconds per image, holding the models: the Explain tab does one image
            return gr.skip(), gr.skip(), (f"⚠️ The audit runs the fast CAM methods only: {method} takes tens of "
                                          "seconds per image here. Choose another baseline method above (the Explain "
                                          f"tab computes {method} for one image).")
        try:
            fam = self.load_family(fam_name)
            items, notes = collect([_path(f) for f in files])
            rows = run_audit(fam, items, method, track=lambda xs: progress.tqdm(xs, desc="Auditing", unit="image"))
        except USER_ERRORS as e:
            log.info("user error (audit): %s", e)
            return None, None, f"⚠️ Audit refused: {e}."
        csv_path = write_csv(rows, self.work.folder())
        self.work.bound()
        masked = sum(item.mask is not None for item in items)
        text = (f"{len(items)} images ({masked} with a mask) through {len(fam.ks)} Top-GAP models"
                f"{' and the baseline' if fam.baseline else ''} of **{fam.name}**: {len(rows)} rows.")
        return audit_md(rows), str(csv_path), text + ("\n\n**Notes:** " + "; ".join(notes) + "." if notes else "")

    # ---- the typed API (gr.api) ----

    def api_explain(self, image: FileData, mask: FileData | None = None, family: str | None = None,
                    k: int | None = None, method: str = "gradcam", maps: bool = False,
                    protocol: str = PROTOCOL) -> ExplainReport:
        """Explain an image with a Top-GAP family: its own CAM at every trained k against a post-hoc CAM of the
        unmodified baseline, with the prediction and (given a mask) IOU and CAM mass on the object.

        Args:
            image: the image file (PNG, JPEG, WEBP, ...; at most 10 MB and 40 megapixels).
            mask: optional object mask of this image (0/255, 0/1, palette or Oxford-IIIT trimap; nonzero = object),
                the same size as the image or scaled with its aspect ratio; adds IOU, threshold and mass per model.
            family: the model family's name as /families lists it; default: the app's default family.
            k: a trained k of the family (how many class-map cells Top-GAP pools); default: the k its card chose on
                validation data, else the middle trained k.
            method: the baseline's CAM method: gradcam, gradcam++, hirescam, layercam, xgradcam, eigencam, scorecam.
            maps: also return each model's CAM ("map": min-max scaled, at the class-map resolution cam_size, 4
                decimals).
            protocol: the own CAM's post-processing: "relu" (ReLU, then min-max: what GradCAM's map gets; the
                default) or "paper" (min-max of the raw class map, the paper's CAM mode); GradCAM's is always
                pytorch-grad-cam's.
        Returns:
            The report: prediction, probability and top-3 probabilities of the Top-GAP model at k; for every k and
            the baseline: label, probability, l1 sparsity, IOU, threshold, mass on the object and PxAP (None without
            a mask), and with maps=True the CAM.
        """
        if not image:
            raise user_error("image: send an image file (the first value)")
        if method not in METHODS:
            raise user_error(f"method: unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
        if protocol not in PROTOCOLS:
            raise user_error(f"protocol: unknown CAM protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        try:
            fam = self.load_family(family or self.default)
        except USER_ERRORS as e:
            raise user_error(f"family: {e}") from None
        k = fam.nearest_k(None) if k is None else k
        if k not in fam.ks:
            raise user_error(f"k: k = {k} was not trained in family {fam.name!r}; choose one of {fam.ks}")
        try:
            result = self.explain(fam, _path(image), method, protocol, slow_baseline=True)
        except USER_ERRORS as e:
            raise user_error(f"image: {e}") from None
        if mask:
            try:
                result = result.with_mask(*own_mask(_path(mask), result.image.shape[:2]))
            except USER_ERRORS as e:
                raise user_error(f"mask: {e}") from None
        self.work.bound()
        return explain_payload(result, result.index_of(k), maps=bool(maps))

    def api_families(self) -> FamiliesReport:
        """The model families this app serves, without loading any: for each its source (local folder or Hub),
        whether it is loaded, its trained k, class-map size and classes (once loaded), and its model card's figures
        (accuracy, IOU, PxAP, mass on the object, l1, ROAD, attack rates per model, and the verdicts against the
        baseline).

        Returns:
            {"default": the default family, "families": [{name, source, default, loaded, ks, cam_size, classes,
            card, card_error}]}.
        """
        return families_payload(self.store, self.default)
