"""Top-GAP explorer: the model's own CAM across k against a GradCAM baseline (Gradio UI; logic in topgap.explorer.explain).

    python app.py   # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured)

Env: TOPGAP_MODELS (models root, default models/ beside this file), TOPGAP_DEFAULT_FAMILY (default
"synthetic-shapes" or "synth" when present), TOPGAP_HUB_FAMILIES ("owner/repo@revision,...": families pushed with
`topgap push`, listed beside the local ones; a local folder named like the repo is the fallback).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import gradio as gr
import matplotlib
import numpy as np
from PIL import Image, UnidentifiedImageError

from topgap.cam import METHODS
from topgap.checkpoint import CheckpointError
from topgap.explorer.explain import ATTACKS, Family, InputError, Result, attack_view, explain_all
from topgap.explorer.hub import card_text, store_from_env
from topgap.explorer.zerogpu import gpu
from topgap.data.imageio import drawn_mask
from topgap.io import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

log = logging.getLogger("topgap.app")
HERE = Path(__file__).resolve().parent
MODELS = Path(os.environ.get("TOPGAP_MODELS", HERE / "models"))
ASSETS = HERE / "assets"
STORE = store_from_env(MODELS)
FAMILIES = STORE.names()
PREFERRED = [os.environ.get("TOPGAP_DEFAULT_FAMILY"), "synthetic-shapes", "synth"]  # the synthetic-benchmark zoo
DEFAULT = next((f for f in PREFERRED if f in FAMILIES), FAMILIES[0] if FAMILIES else None)
WORK = Path(tempfile.mkdtemp(prefix="topgap-app-"))  # everything the app writes; never a user-supplied path
DOWNLOADS, IMAGES = WORK / "downloads", WORK / "images"
DOWNLOADS.mkdir()
IMAGES.mkdir()
GROUP = "models"  # one concurrency_id for every event that runs a model (CAM hooks, shared weights)
USER_ERRORS = (InputError, CheckpointError)


def checked(image: gr.Image) -> gr.Image:
    """Make decoding failures of `image` (not an image, bombs, truncation) a gr.Error saying what to do.

    Wraps the instance's preprocess (a gr.Image subclass would make gradio write an app.pyi stub).
    """
    preprocess = image.preprocess

    def safe(payload):
        try:
            return preprocess(payload)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise gr.Error("This image has too many pixels (a decompression bomb?). Downscale it below 40 MP "
                           "and upload it again.") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise gr.Error("This file is not a readable image. Upload a PNG, JPEG, WEBP, TIFF or BMP file.") from None

    image.preprocess = safe
    return image


def family(name: str | None) -> Family:
    if not name:
        raise gr.Error(f"No model family found under {MODELS}. Train one (topgap train --out {MODELS}/<family>) "
                       "or set TOPGAP_MODELS to a folder of families.")
    try:
        return STORE.get(name)
    except USER_ERRORS as e:
        raise gr.Error(f"Model family {name!r} could not be loaded: {e}") from None


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


def _prune(folder: Path, max_age_s: float = 3600) -> None:
    """Delete what the app wrote to `folder` longer than max_age_s ago (gradio has copied it by then)."""
    cutoff = time.time() - max_age_s
    for p in folder.iterdir():
        if p.stat().st_mtime < cutoff:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _mask_source(mask_upload, drawn):
    """The drawn mask when something was drawn, else the uploaded one (or None)."""
    stroke = drawn_mask(drawn)
    return stroke if stroke is not None else mask_upload


# ---- rendering precomputed results (no model runs) ----

def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _metrics_md(result: Result, index: int) -> str:
    chosen, base = result.view(index)
    rows = [("Top-GAP " + chosen.name, chosen)] + ([(f"baseline ({result.method})", base)] if base else [])
    lines = ["| map | prediction | l1 | IOU | threshold | mass on object |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {m.label} ({m.probability:.1%}) | {m.l1:.3f} | {_fmt(m.iou)} | {_fmt(m.threshold)} | "
              f"{_fmt(m.mass)} |" for n, m in rows]
    if not result.has_mask:
        lines.append("\nUpload or draw a mask to get IOU and mass on the object.")
    notes = result.notes + result.mask_notes
    if notes:
        lines.append("\n**Notes:** " + "; ".join(notes) + ".")
    return "\n".join(lines)


def _k_slider(result: Result | None, index: int) -> dict:
    if result is None:
        return gr.update()
    return gr.update(maximum=max(len(result.ks) - 1, 1), label=result.k_label(min(index, len(result.ks) - 1)))


def render(result: Result | None, index: int):
    """Overlays, top-3 labels, metrics for the index-th k: reads the stored result only."""
    if result is None:
        return None, None, None, None, "Upload an image (or pick an example) to see the CAMs."
    index = min(int(index), len(result.ks) - 1)
    chosen, base = result.view(index)
    return (png(chosen.overlay), chosen.top, png(base.overlay) if base else None, base.top if base else None,
            _metrics_md(result, index))


def bias_view(result: Result | None):
    """Table and plot across all k and the baseline."""
    if result is None:
        return None, None
    h, w = result.cam_size
    rows = [[m.name, m.k, round(m.k / (h * w), 4), m.label, round(m.probability, 3), m.iou, m.l1, m.mass]
            for m in result.topgap]
    if result.baseline:
        b = result.baseline
        rows.append([f"{b.name} ({result.method})", None, None, b.label, round(b.probability, 3), b.iou, b.l1, b.mass])
    table = [[round(v, 3) if isinstance(v, float) else v for v in row] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    frac = [m.k / (h * w) for m in result.topgap]
    for key, colour in (("l1", "tab:blue"), ("iou", "tab:green"), ("mass", "tab:red")):
        ys = [getattr(m, key) for m in result.topgap]
        if all(y is not None for y in ys):
            ax.plot(frac, ys, "o-", color=colour, label=f"Top-GAP {key}")
            if result.baseline and getattr(result.baseline, key) is not None:
                ax.axhline(getattr(result.baseline, key), color=colour, ls="--", lw=1, label=f"baseline {key}")
    ax.set_xscale("log")
    ax.set_xlabel("k / (h*w)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    plt.close(fig)
    return table, fig


# ---- events that run models ----

@gpu
def analyse(fam_name, image, mask_upload, drawn, method, index):
    """New image, family or method: run every model once and store the result."""
    if image is None:
        return (None, gr.update(), *render(None, 0), *bias_view(None), gr.update())
    fam = family(fam_name)
    try:
        result = explain_all(fam, image, method=method)
        background = result.image
        mask = _mask_source(mask_upload, drawn)
        if mask is not None:
            result = result.with_mask(mask, notes=["using the drawn mask"] if drawn_mask(drawn) is not None else [])
    except USER_ERRORS as e:
        raise gr.Error(str(e)) from None
    index = min(int(index), len(fam.ks) - 1)
    _prune(IMAGES)
    editor = {"background": background, "layers": [], "composite": background}
    return (result, _k_slider(result, index), *render(result, index), *bias_view(result), editor)


def remask(result, mask_upload, drawn, index):
    """New mask: recompute the metrics of the stored CAMs (no model runs)."""
    if result is None:
        return (None, *render(None, 0), *bias_view(None))
    mask = _mask_source(mask_upload, drawn)
    try:
        result = result.with_mask(mask, notes=["using the drawn mask"] if drawn_mask(drawn) is not None else [])
    except USER_ERRORS as e:
        raise gr.Error(str(e)) from None
    return (result, *render(result, index), *bias_view(result))


def switch_k(result, index):
    """Slider moved: pick the stored result for that k."""
    return (_k_slider(result, int(index)), *render(result, index))


@gpu
def robustness(fam_name, result, index, kind, eps255):
    """FGSM / PGD on this image against Top-GAP at the chosen k and the baseline."""
    if result is None:
        raise gr.Error("Upload an image first, then run the attack.")
    fam = family(fam_name)
    try:
        adv = attack_view(fam, result, int(index), kind, float(eps255) / 255)
    except USER_ERRORS as e:
        raise gr.Error(str(e)) from None
    chosen, base = result.view(int(index))
    gallery, lines = [], ["| model | clean | attacked | changed |", "|---|---|---|---|"]
    for m in [chosen] + ([base] if base else []):
        a = adv[m.name]
        gallery += [(png(m.overlay), f"{m.name}: clean, {m.label}"),
                    (png(a.overlay), f"{m.name}: {kind} eps={eps255:g}/255, {a.label}")]
        lines.append(f"| {m.name} | {m.label} ({m.probability:.1%}) | {a.label} ({a.probability:.1%}) | "
                     f"{'yes' if a.label != m.label else 'no'} |")
    steps = " (PGD: 10 steps, random start)" if kind == "pgd" else ""
    return gallery, "\n".join(lines) + f"\n\nWhite-box {kind.upper()}{steps} on each model's own prediction."


def downloads(result, index):
    """CAM PNGs, raw .npy and the JSON report of the chosen k, in a fresh folder of the app's own temp dir."""
    if result is None:
        raise gr.Error("Upload an image first; the downloads hold its CAMs.")
    index = int(index)
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
    _prune(DOWNLOADS)
    return [str(f) for f in files]


def model_card(fam_name):
    """README.md, card.json as a table and plots/*.png of the family, or 'no card yet'."""
    if not fam_name:
        return "No model family found; see the README for training one.", None, None
    try:
        folder = STORE.folder(fam_name)  # a Hub family: its downloaded folder, card included
    except InputError as e:
        return str(e), None, None
    readme, card, plots = folder / "README.md", folder / "card.json", sorted((folder / "plots").glob("*.png"))
    text = card_text(readme) if readme.is_file() else f"No card yet for **{fam_name}**."
    table = None
    if card.is_file():
        try:
            data = json.loads(card.read_text())
            table = _card_table(data)
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            text += f"\n\n(card.json could not be read: {e})"
    return text, table, [(str(p), p.stem) for p in plots] or None


def _card_table(data) -> list[list]:
    """Rows of card.json: a list of dicts or {model: {metric: value}} (nested dicts are flattened)."""
    rows = data if isinstance(data, list) else data.get("models", data)
    if isinstance(rows, dict):
        rows = [{"model": name, **(v if isinstance(v, dict) else {"value": v})} for name, v in rows.items()]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [keys] + [[json.dumps(r.get(k)) if isinstance(r.get(k), (dict, list)) else r.get(k) for k in keys]
                     for r in rows]


@gpu
def api_explain(image: str | None, mask: str | None, k: float | None, method: str, fam_name: str):
    """API: overlays (Top-GAP at k, baseline) and the JSON report {family, k, models: {name: {...}}}."""
    if not image:
        raise gr.Error("Send an image file.")
    fam = family(fam_name or DEFAULT)
    try:
        k = fam.ks[len(fam.ks) // 2] if k is None else int(k)
        if k not in fam.ks:
            raise InputError(f"k = {k} was not trained in family {fam.name!r}; choose one of {fam.ks}")
        result = explain_all(fam, image, mask=mask or None, method=method or "gradcam")
        index = result.index_of(k)
    except USER_ERRORS as e:
        raise gr.Error(str(e)) from None
    chosen, base = result.view(index)
    _prune(IMAGES)
    return png(chosen.overlay), png(base.overlay) if base else None, result.report(index)


# ---- layout ----

def _first_family() -> Family | None:
    """The default family when it is local (loaded now, so the slider starts with its k); Hub families load later."""
    if not DEFAULT or DEFAULT in STORE.remote:
        return None
    try:
        return STORE.get(DEFAULT)
    except USER_ERRORS as e:
        log.warning("default family %s could not be loaded: %s", DEFAULT, e)
        return None


def _examples() -> list[list[str | None]]:
    images = sorted((ASSETS / "images").glob("*.png")) if (ASSETS / "images").is_dir() else []
    return [[str(p), str(ASSETS / "masks" / p.name) if (ASSETS / "masks" / p.name).is_file() else None]
            for p in images]


with gr.Blocks(title="Top-GAP explorer", delete_cache=(3600, 3600)) as demo:
    gr.Markdown("# Top-GAP explorer\nThe model's own CAM (Top-GAP, min-max scaled) at each trained **k** against a "
                "post-hoc CAM of the unmodified model. Same scaling and colour map for both.")
    result_state = gr.State(None)
    with gr.Row():
        fam_dd = gr.Dropdown(FAMILIES, value=DEFAULT, label="Model family", elem_id="family")
        method_dd = gr.Dropdown(list(METHODS), value="gradcam", label="Baseline CAM method", elem_id="method")
    first = _first_family()
    k_slider = gr.Slider(0, max(len(first.ks) - 1, 1) if first else 1, value=0, step=1,
                         label=first.k_label(0) if first else "k", elem_id="k")
    with gr.Tab("Explain"):
        with gr.Row():
            image_in = checked(gr.Image(type="pil", image_mode=None, label="Image", elem_id="image", format="png"))
            mask_in = checked(gr.Image(type="pil", image_mode=None, label="Mask (upload: 0/255, 0/1, palette, trimap)",
                                       elem_id="mask_upload", format="png"))
            draw_in = gr.ImageMask(label="…or draw the object", type="numpy", sources=(), transforms=(),
                                   layers=False, elem_id="mask", format="png",
                                   brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"))
        if _examples():
            gr.Examples(_examples(), inputs=[image_in, mask_in], cache_examples=False, label="Examples",
                        examples_per_page=5)
        with gr.Row():
            with gr.Column():
                topgap_img = gr.Image(label="Top-GAP CAM (own)", format="png", interactive=False, elem_id="topgap_cam")
                topgap_lbl = gr.Label(num_top_classes=3, label="Top-GAP prediction")
            with gr.Column():
                base_img = gr.Image(label="Baseline CAM", format="png", interactive=False, elem_id="baseline_cam")
                base_lbl = gr.Label(num_top_classes=3, label="Baseline prediction")
        metrics_md = gr.Markdown("Upload an image (or pick an example) to see the CAMs.", elem_id="metrics")
        with gr.Row():
            dl_btn = gr.Button("Prepare downloads (CAM PNG, .npy, JSON)")
            dl_files = gr.File(label="Downloads", file_count="multiple", interactive=False)
    with gr.Tab("Bias inspection"):
        bias_table = gr.Dataframe(headers=["model", "k", "k/(h*w)", "prediction", "prob", "IOU", "l1", "mass"],
                                  interactive=False, label="All k and the baseline on this image")
        bias_plot = gr.Plot(label="Figures against k/(h*w)")
    with gr.Tab("Robustness"):
        with gr.Row():
            attack_kind = gr.Radio(list(ATTACKS), value="fgsm", label="Attack")
            eps = gr.Slider(1, 16, value=1, step=1, label="eps (x/255)")
            attack_btn = gr.Button("Attack this image", variant="primary")
        attack_gallery = gr.Gallery(label="Before / after", columns=4, format="png")
        attack_md = gr.Markdown()
    with gr.Tab("Model card"):
        card_md = gr.Markdown()
        card_table = gr.Dataframe(label="card.json", interactive=False)
        card_plots = gr.Gallery(label="Plots", columns=3)
    with gr.Row(visible=False):  # the documented /explain API endpoint
        api_image = gr.File(label="image", type="filepath", file_types=["image"])
        api_mask = gr.File(label="mask (optional)", type="filepath", file_types=["image"])
        api_k = gr.Number(label="k (a trained k; default: the middle one)", precision=0, value=None)
        api_method = gr.Dropdown(list(METHODS), value="gradcam", label="baseline method")
        api_family = gr.Textbox(label="family", value=DEFAULT or "")
        api_topgap = gr.Image(label="Top-GAP overlay", format="png")
        api_base = gr.Image(label="baseline overlay", format="png")
        api_report = gr.JSON(label="report")
        api_btn = gr.Button("explain")

    views = [topgap_img, topgap_lbl, base_img, base_lbl, metrics_md]
    bias = [bias_table, bias_plot]
    private = dict(api_visibility="undocumented")
    model_event = dict(concurrency_id=GROUP, concurrency_limit=1, **private)
    analyse_io = dict(fn=analyse, inputs=[fam_dd, image_in, mask_in, draw_in, method_dd, k_slider],
                      outputs=[result_state, k_slider, *views, *bias, draw_in], **model_event)
    gr.on([image_in.change, fam_dd.change, method_dd.change], **analyse_io)
    gr.on([mask_in.change, draw_in.change], remask, [result_state, mask_in, draw_in, k_slider],
          [result_state, *views, *bias], trigger_mode="always_last", **private)
    k_slider.change(switch_k, [result_state, k_slider], [k_slider, *views], **private)
    dl_btn.click(downloads, [result_state, k_slider], dl_files, **private)
    attack_btn.click(robustness, [fam_dd, result_state, k_slider, attack_kind, eps], [attack_gallery, attack_md],
                     **model_event)
    gr.on([demo.load, fam_dd.change], model_card, fam_dd, [card_md, card_table, card_plots], **private)
    api_btn.click(api_explain, [api_image, api_mask, api_k, api_method, api_family], [api_topgap, api_base, api_report],
                  api_name="explain", api_visibility="public", concurrency_id=GROUP, concurrency_limit=1)

demo.queue(max_size=64, default_concurrency_limit=1)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                max_file_size="10mb", allowed_paths=[], share=False)
