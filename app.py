"""Top-GAP explorer: the model's own CAM across k against a GradCAM baseline (the Gradio UI; what each event does
lives in topgap.explorer.handlers, the logic beneath it in topgap.explorer).

    python app.py   # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT honoured)

    python app.py --examples DIR   # the examples gallery from a local dataset with masks (env: TOPGAP_EXAMPLES)

TOPGAP_HUB_EXAMPLES="owner/name@revision" (a dataset repo holding Oxford-IIIT Pet in its official layout) adds a
few of its test images, downloaded at start (on a Space: its first start); without network, one log line.

Env: TOPGAP_MODELS (models root, default models/ beside this file), TOPGAP_DEFAULT_FAMILY (default
"oxford-pet-lite0", else "synthetic-shapes" or "synth" when present), TOPGAP_HUB_FAMILIES ("owner/repo@revision,...":
families pushed with `topgap push`, listed beside the local ones; a local folder named like the repo is the
fallback), TOPGAP_MAX_STORAGE_MB (the temp folder's bound), TOPGAP_MCP=1 (serve /explain and /families as MCP tools
too; needs `pip install "gradio[mcp]"`).

API (typed, `gr.api`): /explain(image, mask=None, family=None, k=None, method="gradcam", maps=False) -> report,
/families(). Importing this file does nothing: build_demo() makes the temp folder and the page, main() serves it;
families load on first use (a page load starts loading the default one).
"""
import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import gradio as gr

from topgap.cam import METHODS
from topgap.explorer.audit import IMAGE_SUFFIXES
from topgap.explorer.blocks import CSS, ExplorerBlocks, lenient, mcp_enabled
from topgap.explorer.examples import ExampleSet, bundled_examples, dataset_examples, env_examples, examples_fit, \
    hub_examples
from topgap.explorer.explain import (ATTACKS, PGD_HELP, PGD_RULE, PGD_RULE_NAMES, PGD_STEPS, PROTOCOL, PROTOCOL_NAMES,
                                     InputError)
from topgap.explorer.handlers import Explorer
from topgap.explorer.views import AUDIT_HELP, METHOD_INFO
from topgap.explorer.zerogpu import gpu

HERE = Path(__file__).resolve().parent
PITCH = """## Top-GAP explorer
**Top-GAP** (*Top-GAP: Integrating Size Priors in CNNs for more Robustness, Interpretability, and Bias Mitigation*)
pools only the **k** highest cells of each class map, and an l1 term pushes the rest to zero. **Look for:** is the own
CAM (left) tighter on the object than GradCAM on the same backbone trained without it (right)? Lower l1 is sparser."""
# the JET colour map of every overlay (cv2.COLORMAP_JET), low to high
JET = "#00007f,#0000ff,#007fff,#00ffff,#7fff7f,#ffff00,#ff7f00,#ff0000,#7f0000"
COLOUR_BAR = ('<div id="colour_bar" style="display:flex;align-items:center;gap:8px;font-size:13px">'
              '<span>CAM low</span><span style="flex:0 1 260px;height:12px;border-radius:3px;'
              f'background:linear-gradient(to right,{JET})"></span><span>high (each map min-max scaled)</span></div>')
MODEL_EVENT = dict(concurrency_id="models", concurrency_limit=1)  # every event that runs a model: one queue
PRIVATE = dict(api_visibility="undocumented")
CLEAR_STROKES = """() => { document.querySelector('#mask button[aria-label="Clear canvas"]')?.click(); }"""


def explorer_from_env() -> Explorer:
    """The families of TOPGAP_MODELS (default models/ beside this file) and a fresh workspace."""
    return Explorer(os.environ.get("TOPGAP_MODELS", HERE / "models"), HERE / "assets")


def _explain_tab(ui: dict, example_sets, ex: Explorer, first: tuple):
    with gr.Row(elem_id="explain_row"):
        with gr.Column(min_width=300, elem_id="left_col"):
            ui["image"] = lenient(gr.Image(first[0], type="filepath", image_mode=None, label="Image",
                                           elem_id="image", format="png", height=260))
            ui["image_msg"] = gr.Markdown(elem_id="image_msg", elem_classes="msg")
            ui["example_cols"] = []
            for examples, kind in example_sets:  # shown when they suit the family (examples_fit)
                with gr.Column(visible=examples_fit(ex.store, kind, ex.default), min_width=300,
                               elem_classes="examples") as col:
                    gr.Examples(examples.rows, [ui["image"], ui["mask"]], label=examples.label,  # mask: loaded, not
                                cache_examples=False, examples_per_page=8, visible_columns=[0])  # shown

                ui["example_cols"].append(col)
        with gr.Column(min_width=300, scale=2, elem_id="maps_col"):
            with gr.Row(equal_height=True):
                for key, label, elem in (("topgap", "Top-GAP CAM (own)", "topgap_cam"),
                                         ("base", "Baseline CAM", "baseline_cam")):
                    ui[f"{key}_img"] = gr.Image(label=label, format="png", interactive=False, elem_id=elem, height=260,
                                                min_width=150, buttons=["download"])  # more hid the label on phones
            gr.HTML(COLOUR_BAR)
            ui["metrics"] = gr.Markdown("Computing the CAMs of the example…" if first[0] else  # its load event
                                        "Upload an image (or pick an example) to see the CAMs.", elem_id="metrics")
            ui["hint"] = gr.Markdown(elem_id="hint")
            with gr.Accordion("Top-3 predictions of both models", open=False):
                with gr.Row():
                    for key, label in (("topgap", "Top-GAP"), ("base", "Baseline")):
                        ui[f"{key}_lbl"] = gr.Label(num_top_classes=3, label=f"{label} prediction", min_width=150)
            with gr.Accordion("Wipe between the own CAM (left) and the baseline's (right) on the same image",
                              open=False):
                ui["slider"] = gr.ImageSlider(label="own CAM | baseline CAM", interactive=False, format="png",
                                              elem_id="wipe", height=320)
    with gr.Accordion("Mask: IOU and mass on the object (optional; belongs to the image above)", open=True):
        with gr.Row():
            ui["mask"].render()
            ui["draw"] = gr.ImageMask(label="…or draw the object on the image", type="numpy", sources=(),
                                      transforms=(), layers=False, elem_id="mask", format="png", height=260,
                                      brush=gr.Brush(colors=["#ff0000"], color_mode="fixed"))
            ui["mask_view"] = gr.Image(label="Mask in use (green: object, yellow: left out)", format="png",
                                       interactive=False, elem_id="mask_view", height=260)
        ui["mask_msg"] = gr.Markdown(elem_id="mask_msg", elem_classes="msg")
        ui["draw_reset"] = gr.Textbox(visible="hidden", elem_id="draw_reset")
    ui["dl_btn"] = gr.Button("Prepare downloads (CAM PNG, .npy, JSON)", elem_id="dl_btn")
    ui["dl_files"] = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads",
                             visible=False)  # shown with its files, under the button
    ui["dl_msg"] = gr.Markdown(elem_classes="msg")


def _bias_tab(ui: dict):
    gr.Markdown("**Size prior.** Top-GAP pools the top k of the h x w cells of each class map: k should be about the "
                "object's area in class-map cells (paper, section 3.2).")
    with gr.Row():
        # a Textbox, not a Number: Gradio's Number cannot be empty (it shows and sends 0, which the assistant must
        # refuse), and empty is how "from the mask" is asked for
        ui["size"] = gr.Textbox("", label="Object size (fraction of the image, 0 < f < 1; empty: from the mask)",
                                placeholder="e.g. 0.25", max_lines=1, elem_id="size_fraction", min_width=300)
        ui["size_btn"] = gr.Button("Use the nearest trained k", elem_id="use_k")
    ui["size_md"] = gr.Markdown(elem_id="size_advice")
    ui["bias_plot"] = gr.Plot(label="This image's figures against k (k/(h*w)); grey: the selected k, dotted: the "
                              "object's area", elem_id="bias_plot")
    gr.Markdown("**All k and the baseline on this image**")
    ui["bias_table"] = gr.Markdown(elem_id="bias_table", elem_classes="fit")
    ui["faith_btn"] = gr.Button("Measure faithfulness (ROAD) on this image", elem_id="faith_btn")
    ui["faith_plot"] = gr.Plot(label="ROAD per share of pixels removed", elem_id="faith_plot")
    ui["faith_md"] = gr.Markdown(elem_id="faith_md")


def _attack_tab(ui: dict):
    gr.Markdown(PGD_HELP, elem_id="attack_help")
    with gr.Row():
        ui["attack_kind"] = gr.Radio(list(ATTACKS), value="fgsm", label="Attack")
        ui["pgd_rule"] = gr.Radio([(name, key) for key, name in PGD_RULE_NAMES.items()], value=PGD_RULE,
                                  label="PGD step rule", info=f"{PGD_STEPS} steps; FGSM takes one step of eps",
                                  elem_id="pgd_rule")
        ui["eps"] = gr.Slider(1, 16, value=1, step=1, label="eps (x/255)")
        ui["attack_btn"] = gr.Button("Attack this image", variant="primary")
    ui["attack_gallery"] = gr.Gallery(label="Before / after", columns=2, format="png", object_fit="contain",
                                      height="auto", elem_id="attack_gallery")
    ui["attack_md"] = gr.Markdown(elem_id="attack_md", elem_classes="fit")


def _backgrounds_tab(ui: dict, n_models: int):
    gr.Markdown("**Background swap**: the object of the image above (its mask from the Explain tab, uploaded or "
                "drawn) pasted on CC0 textures, your second photo and blank grey, or removed (No-FG: blacked out; "
                "Only-BG-T: filled with its own background), as in `topgap backgrounds` (the Backgrounds Challenge, "
                "Xiao et al., ICLR 2021). Every model of the family on each.")
    with gr.Row():
        ui["photo"] = lenient(gr.Image(type="filepath", image_mode=None, format="png", height=200,
                                       label="Optional: a second photo as background", elem_id="bg_photo"))
        ui["swap_btn"] = gr.Button("Swap the background", variant="primary", elem_id="swap_btn")
    ui["swap_md"] = gr.Markdown(elem_id="swap_md", elem_classes="fit")
    ui["swap_gallery"] = gr.Gallery(label="Each row: the variant, then every model's map on it", format="png",
                                    columns=n_models + 1, object_fit="contain", height="auto", elem_id="swap_gallery")
    gr.Markdown("**Label and probability per variant and model**")
    ui["swap_table"] = gr.Markdown(elem_id="swap_table", elem_classes="fit")


def _card_tab(ui: dict):
    ui["card_md"] = gr.Markdown(elem_id="card", elem_classes="card")
    ui["card_plots"] = gr.Gallery(label="Plots (click to enlarge)", columns=2, object_fit="contain", height="auto",
                                  format="png", elem_id="card_plots")
    with gr.Accordion("Details: every figure, the training, the commands", open=False):
        ui["card_details"] = gr.Markdown(elem_id="card_details", elem_classes="card")


def _audit_tab(ui: dict):
    gr.Markdown(AUDIT_HELP)
    with gr.Row():
        ui["audit_files"] = gr.File(label="Zip or images", file_count="multiple", elem_id="audit_files",
                                    file_types=[".zip", *IMAGE_SUFFIXES])
        ui["audit_csv"] = gr.File(label="CSV", interactive=False, elem_id="audit_csv")
    ui["audit_btn"] = gr.Button("Audit these images", variant="primary", elem_id="audit_btn")
    ui["audit_md"] = gr.Markdown(elem_id="audit_msg")
    gr.Markdown("**Per image and model** (the figures /explain returns; every column is in the CSV)")
    ui["audit_table"] = gr.Markdown(elem_id="audit_table", elem_classes="fit")


def _wire(demo: gr.Blocks, ui: dict, ex: Explorer, example_sets):
    """Every event: the one for image, mask, drawing, family and method; k, the tabs' buttons, the API."""
    views = [ui[n] for n in ("topgap_img", "topgap_lbl", "base_img", "base_lbl", "metrics", "hint", "slider")]
    state, fam, k = ui["state"], ui["family"], ui["k_value"]
    ui["k"].change(None, ui["k"], k, js="(k) => k", queue=False, **PRIVATE)
    # chained events run "always_last": by default a trigger that comes while the last one runs would be dropped
    size_args = dict(fn=ex.size_view, inputs=[state, k, ui["size"]], outputs=[ui["size_md"], ui["bias_plot"]],
                     trigger_mode="always_last", **PRIVATE)
    update_inputs = [fam, ui["image"], ui["mask"], ui["draw"], ui["method"], k, state, ui["protocol"]]
    update_outputs = [state, ui["k"], ui["family_msg"], ui["image_msg"], ui["mask_msg"], ui["mask_view"], *views,
                      ui["bias_table"], ui["bias_plot"], ui["image"], ui["draw_reset"]]
    slow_args = dict(fn=gpu(ex.complete_baseline), inputs=[state, k], outputs=[state, *views, ui["bias_table"]],
                     concurrency_id="slow", concurrency_limit=1, show_progress_on=[ui["base_img"]],
                     show_progress="minimal", trigger_mode="always_last", **PRIVATE)  # its own queue
    changed = gr.on([ui["image"].change, ui["mask"].change, ui["draw"].change, fam.change, ui["method"].change,
                     ui["protocol"].change], gpu(ex.update), update_inputs, update_outputs,
                    trigger_mode="always_last", **MODEL_EVENT, **PRIVATE)
    changed.then(**size_args)
    changed.then(**slow_args)
    gr.on([ui["size"].submit, ui["size"].blur], **size_args)
    ui["size_btn"].click(ex.use_advised_k, [state, ui["size"]], ui["k"], **PRIVATE)
    ui["draw_reset"].change(None, js=CLEAR_STROKES, queue=False, **PRIVATE).then(  # a new image, replaced strokes
        ex.editor_background, state, ui["draw"], show_progress="hidden", trigger_mode="always_last", **PRIVATE)
    # a new upload empties the mask box in the page itself, at once
    ui["image"].upload(None, None, ui["mask"], js="() => null", queue=False, **PRIVATE)
    gr.on([ui["image"].change, k.change], lambda: gr.update(value=None, visible=False), None, ui["dl_files"],
          queue=False, **PRIVATE)  # the prepared files were of another image or k: hidden again
    k.change(ex.switch_k, [state, k], [ui["k"], *views], **PRIVATE).then(**size_args)
    ui["faith_btn"].click(gpu(ex.faithfulness_view), [state, k], [ui["faith_plot"], ui["faith_md"]], **MODEL_EVENT,
                          **PRIVATE)
    ui["dl_btn"].click(ex.downloads, [state, k], [ui["dl_files"], ui["dl_msg"]], **PRIVATE)
    ui["attack_btn"].click(gpu(ex.robustness), [fam, state, k, ui["attack_kind"], ui["eps"], ui["pgd_rule"]],
                           [ui["attack_gallery"], ui["attack_md"]], **MODEL_EVENT, **PRIVATE)
    ui["audit_btn"].click(gpu(ex.audit), [fam, ui["method"], ui["audit_files"]],
                          [ui["audit_table"], ui["audit_csv"], ui["audit_md"]], **MODEL_EVENT, **PRIVATE)
    gr.on([demo.load, fam.change], ex.model_card, fam, [ui["card_md"], ui["card_plots"], ui["card_details"]],
          **PRIVATE)
    ui["swap_btn"].click(gpu(ex.backgrounds_view), [state, ui["photo"]],
                         [ui["swap_gallery"], ui["swap_table"], ui["swap_md"]], **MODEL_EVENT, **PRIVATE)
    fam.change(lambda f: [gr.update(visible=examples_fit(ex.store, kind, f)) for _, kind in example_sets], fam,
               ui["example_cols"], queue=False, **PRIVATE)
    demo.load(ex.preload, fam, ui["family_msg"], **MODEL_EVENT, **PRIVATE)
    if ui["image"].value:  # the first view: the default family's first example, computed once in the background
        # when the server serves (start_first_view): a load before it is done waits for it, later ones find it cached
        demo.load(gpu(ex.update), update_inputs, update_outputs, **MODEL_EVENT, **PRIVATE).then(**size_args)
    # its own queue, so that a ScoreCAM request (its slow part on a copy of the baseline) never holds up a fast one;
    # the calls take turns on the models with the page's events (Explorer._models)
    gr.api(gpu(ex.api_explain), api_name="explain", concurrency_id="explain", concurrency_limit=4)
    gr.api(ex.api_families, api_name="families", concurrency_limit=None)


def build_demo(ex: Explorer | None = None, dataset: ExampleSet | None = None, hub: ExampleSet | None = None,
               warm: bool = False) -> gr.Blocks:
    """The explorer's page and its typed API (/explain, /families). Cheap: no family is loaded here; the default
    family's trained k are read from its config files and its models load on first use. `ex`: the families and
    workspace (default: explorer_from_env()); `dataset`: examples from a local dataset (--examples), shown first;
    `hub`: Oxford-IIIT Pet photos from the Hub; `warm`: load the default family and compute the first view in a
    background thread once the server serves (Explorer.start_first_view; demo.serving): a load waits for it."""
    ex = ex or explorer_from_env()
    example_sets = ([(dataset, "dataset")] if dataset else []) + ([(hub, "photo")] if hub else []) + \
        bundled_examples(ex.assets)
    ks0 = ex.store.trained_ks(ex.default) if ex.default else []  # from config.json: no model is loaded here
    ui: dict = {}
    with ExplorerBlocks(title="Top-GAP explorer", delete_cache=(600, 3600)) as demo:
        gr.Markdown(PITCH, elem_id="pitch")
        ui["state"] = gr.State(None)
        with gr.Row(equal_height=True):
            ui["family"] = gr.Dropdown(ex.families, value=ex.default, label="Model family", elem_id="family",
                                       min_width=160)
            k0 = ex.store.default_k(ex.default) if ks0 else None  # the card's chosen k (else the middle one)
            ui["k"] = gr.Radio(ks0, value=k0, elem_id="k", min_width=300, scale=2,
                               label="k (trained values of this family)")
            # the handlers read k from this mirror, never from the radio: gradio checks a radio's value against the
            # choices it last sent this session, and a family switch can race its own new choices
            ui["k_value"] = gr.Number(k0, visible="hidden", precision=0, elem_id="k_value")
            ui["method"] = gr.Dropdown(list(METHODS), value="gradcam", label="Baseline CAM method", elem_id="method",
                                       min_width=160, info=METHOD_INFO)
            ui["protocol"] = gr.Radio([(name, key) for key, name in PROTOCOL_NAMES.items()], value=PROTOCOL,
                                      label="Own CAM post-processing", elem_id="protocol", min_width=300, scale=2)
        ui["family_msg"] = gr.Markdown(elem_id="family_msg", elem_classes="msg")
        first = ex.first_example(ex.default, example_sets)
        ui["mask"] = lenient(gr.Image(first[1], type="filepath", image_mode=None, elem_id="mask_upload",
                                      format="png", render=False, height=260,
                                      label="Upload a mask (0/255, 0/1, palette, trimap)"))
        with gr.Tabs(overflow_behavior="wrap"):  # on a phone every tab stays in sight (no "..." menu)
            for title, builder in (("Explain", lambda: _explain_tab(ui, example_sets, ex, first)),
                                   ("Bias", lambda: _bias_tab(ui)), ("Attack", lambda: _attack_tab(ui)),
                                   ("Backgrounds", lambda: _backgrounds_tab(ui, len(ks0) + 1)),
                                   ("Card", lambda: _card_tab(ui)), ("Audit", lambda: _audit_tab(ui))):
                with gr.Tab(title):
                    builder()
        _wire(demo, ui, ex, example_sets)
    if warm:
        ex.start_first_view(example_sets, after=demo.serving)
    demo.queue(max_size=64, default_concurrency_limit=1)
    demo.explorer = ex  # the handlers behind this page (tests call them directly)
    return demo


def main(argv: list[str] | None = None) -> None:
    """Parse --examples, build the page and serve it until SIGTERM or Ctrl-C (the temp folder goes at exit)."""
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description="Top-GAP explorer (see docs/app.md)")
    parser.add_argument("--examples", metavar="DIR", help="a local dataset with masks (folder format or Oxford-IIIT "
                        "Pet) whose first images per class become the examples gallery (env: TOPGAP_EXAMPLES)")
    args = parser.parse_args(argv)
    hub = hub_examples(os.environ["TOPGAP_HUB_EXAMPLES"]) if os.environ.get("TOPGAP_HUB_EXAMPLES") else None
    try:
        demo = build_demo(None, dataset_examples(args.examples) if args.examples else env_examples(), hub, warm=True)
    except InputError as e:
        parser.error(str(e))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # sys.exit runs atexit: the temp folder is removed
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                max_file_size="10mb", allowed_paths=[], share=False, css=CSS, mcp_server=mcp_enabled())


if __name__ == "__main__":
    main()
