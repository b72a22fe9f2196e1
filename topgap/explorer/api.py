"""The app's typed API (the /explain and /families endpoints, also served as MCP tools): payloads and their JSON
schemas, written as TypedDicts that gradio turns into the schema `Client.view_api()` shows.

The figures are :meth:`topgap.explorer.explain.Result.report`'s, post-processed as `topgap evaluate` does.
"""
from __future__ import annotations

from typing import NotRequired, TypedDict

from .card_view import CardError, card_figures, load_card
from .explain import FamilyStore, Result

__all__ = ["ModelReport", "ExplainReport", "FamilyInfo", "FamiliesReport", "explain_payload", "families_payload"]


class ModelReport(TypedDict):
    """One model's answer: its kind ("topgap" or "baseline"), k (None for the baseline), predicted label and its
    probability, the top-3 probabilities, l1 sparsity of its map at the class-map resolution, and against the mask
    (None without one) the best IOU, its threshold, the CAM mass on the object and the image's PxAP (pixel average
    precision, Choe et al. 2020). The baseline adds "method". With maps=True, "map" is the CAM itself: min-max
    scaled to [0, 1] at the class-map resolution (cam_size rows of cam_size columns, 4 decimals), the map l1 is
    measured on."""
    kind: str
    k: int | None
    label: str
    probability: float
    top: dict[str, float]
    l1: float
    iou: float | None
    threshold: float | None
    mass: float | None
    pxap: float | None
    map: NotRequired[list[list[float]]]


class ExplainReport(TypedDict):
    """/explain's answer: the chosen k and its share k/(h*w) of the h x w class map (cam_size), the Top-GAP model
    at k (model) with its prediction, probability and top-3 probabilities, every k's and the baseline's
    ModelReport (models), whether a mask was used, notes on conversions, and the protocol: the own CAMs'
    post-processing ("relu": ReLU then min-max, as GradCAM's; "paper": min-max of the raw class map)."""
    family: str
    method: str
    protocol: str
    k: int
    k_fraction: float
    cam_size: list[int]
    model: str
    prediction: str
    probability: float
    probabilities: dict[str, float]
    has_mask: bool
    models: dict[str, ModelReport]
    notes: list[str]


class FamilyInfo(TypedDict):
    """One family: where it comes from ("local" or "hub"), whether its models are loaded, its trained k (empty for
    a Hub family not downloaded yet), class map size and classes once loaded (else None), and the figures of its
    card.json (None without a card): {title, models: {name: {kind, k, accuracy, collapsed, iou_paper, iou_relu,
    pxap_*, mass_in_mask_*, l1_* (older cards: iou, pxap, mass_in_mask, l1), road, white_box_rate,
    black_box_rate}}, verdicts} (:func:`topgap.explorer.card_view.card_figures`)."""
    name: str
    source: str
    default: bool
    loaded: bool
    ks: list[int]
    cam_size: list[int] | None
    classes: list[str] | None
    card: dict | None
    card_error: str | None


class FamiliesReport(TypedDict):
    """/families' answer: the default family's name and every family."""
    default: str | None
    families: list[FamilyInfo]


def explain_payload(result: Result, index: int, maps: bool = False) -> ExplainReport:
    """The /explain answer for the index-th trained k: every k and the baseline from one :class:`Result`; maps=True
    adds each model's CAM at the class-map resolution."""
    chosen, _ = result.view(index)
    report = result.report(maps=maps)
    h, w = result.cam_size
    return {"family": result.family, "method": result.method, "protocol": result.protocol, "k": chosen.k,
            "k_fraction": round(chosen.k / (h * w), 6), "cam_size": [h, w], "model": chosen.name,
            "prediction": chosen.label, "probability": round(chosen.probability, 6),
            "probabilities": {n: round(p, 6) for n, p in chosen.top.items()},
            "has_mask": result.has_mask, "models": report["models"], "notes": report["notes"]}


def _family_info(store: FamilyStore, name: str, default: str | None) -> FamilyInfo:
    remote = name in store.remote
    fam = store.loaded(name)
    card, error = None, None
    if fam is not None or not remote:  # a Hub family's card is read once it is downloaded (on first use)
        try:
            data = load_card(fam.folder if fam is not None else store.folder(name))
            card = card_figures(data) if data is not None else None
        except CardError as e:
            error = str(e)
    return {"name": name, "source": "hub" if remote else "local", "default": name == default, "loaded": fam is not None,
            "ks": list(fam.ks) if fam is not None else store.trained_ks(name),
            "cam_size": list(fam.cam_size) if fam is not None else None,
            "classes": list(fam.class_names) if fam is not None else None, "card": card, "card_error": error}


def families_payload(store: FamilyStore, default: str | None) -> FamiliesReport:
    """What the app serves: every family (local and Hub), never loading one."""
    return {"default": default, "families": [_family_info(store, n, default) for n in store.names()]}
