"""gradio pieces the explorer's page is built from: Blocks that answer short API calls with a message, image
inputs that let an unreadable file through to its handler, the page's CSS, and the MCP switch."""
from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import threading

import gradio as gr
from gradio.components.api_component import Api

from .handlers import user_error

__all__ = ["ExplorerBlocks", "lenient", "mcp_enabled", "CSS"]

log = logging.getLogger("topgap.app")

CSS = """
#metrics table, .card table {display: block; overflow-x: auto; max-width: 100%}
#metrics td, #metrics th, .card td, .card th, .fit td, .fit th {white-space: nowrap}
.msg p {color: #b45309; margin: 0}
/* galleries grow with their rows (gradio caps an "auto" height at 55vh and scrolls inside) and show whole captions */
#attack_gallery .grid-wrap, #swap_gallery .grid-wrap, #card_plots .grid-wrap {max-height: none !important;
  overflow-y: visible !important}
#attack_gallery .caption-label, #swap_gallery .caption-label {white-space: normal; max-width: 94%}
@media (max-width: 640px) {
  .gradio-container {padding: 4px !important}
  #metrics table, .card table {font-size: 12px}
  /* the metrics fit 390 px: cells wrap between words (never inside one) instead of scrolling */
  #metrics table, .fit table, .card table {display: table; width: 100%; font-size: 11px}
  #metrics td, #metrics th, .fit td, .fit th, .card td, .card th {white-space: normal; word-break: normal;
    overflow-wrap: normal; padding: 2px !important}
  /* the phone's first screens: image, then both maps and their figures, then the examples */
  #left_col {display: contents !important}
  #explain_row > * {flex: 1 1 100% !important; min-width: 100% !important}
  #image, #image_msg {order: 1}
  #maps_col {order: 2}
  #explain_row .examples {order: 3}
  /* every column of a gallery on screen (gradio's columns are at least 100 px wide: 5 of them are cut off) */
  #attack_gallery .grid-container, #swap_gallery .grid-container {
    grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr)) !important; gap: 4px !important}
  #swap_gallery .caption-label {font-size: 9px; padding: 1px 2px !important; max-width: 100%}
  /* the six tabs in one line of 390 px where they fit (they wrap otherwise) */
  .tab-container > button[role=tab] {padding: 0 8px !important}
}
"""


class ExplorerBlocks(gr.Blocks):
    """gr.Blocks whose API calls with too few values get the defaults of a typed endpoint's (gr.api) optional
    arguments, or a message naming the missing ones (gradio raises a plain ValueError there, which reaches REST
    clients as {"error": null}); `serving` is set once launch() has started the server (work deferred until the
    page is served waits for it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.serving = threading.Event()

    def launch(self, *args, **kwargs):
        try:
            return super().launch(*args, **kwargs)
        finally:  # with prevent_thread_lock=True (or a failed start: the waiting work is not left hanging)
            self.serving.set()

    def block_thread(self) -> None:
        self.serving.set()  # launch() calls this once the server runs, and returns only when it stops
        super().block_thread()

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


LENIENT = "topgap-lenient"  # the CSS class that marks an image input as lenient


def _lenient_preprocess(strict):
    def preprocess(self, payload):
        try:
            return strict(self, payload)
        except Exception:  # noqa: BLE001  (any decoding failure; the handler decodes the file again and says why)
            if LENIENT not in (self.elem_classes or []):
                raise
            return getattr(payload, "path", None)

    preprocess.lenient = True
    return preprocess


def lenient(component: gr.Image) -> gr.Image:
    """Let a file Gradio cannot open through as its path, so the handler reports it next to its input (once,
    in words) instead of failing the whole event (every output an "Error" badge, one toast per event).

    An event that updates a component (gr.skip() too) makes gradio rebuild it for the session from its constructor
    arguments, so the mark is a CSS class kept there, read by gr.Image.preprocess (wrapped once; other images keep
    gradio's behaviour). A gr.Image subclass would make gradio write an app.pyi stub.
    """
    if not getattr(gr.Image.preprocess, "lenient", False):
        gr.Image.preprocess = _lenient_preprocess(gr.Image.preprocess)
    classes = [*(component.elem_classes or []), LENIENT]
    component.elem_classes = component.constructor_args["elem_classes"] = classes
    return component


def mcp_enabled() -> bool:
    """MCP tools (the typed endpoints) on when TOPGAP_MCP=1 and gradio[mcp] is installed; off by default."""
    if os.environ.get("TOPGAP_MCP", "0") != "1":
        return False
    if importlib.util.find_spec("mcp") is None:
        log.warning("TOPGAP_MCP=1 but gradio[mcp] is not installed (pip install 'gradio[mcp]'); MCP stays off")
        return False
    return True
