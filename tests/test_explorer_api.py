"""The typed API's payloads (topgap.explorer.api): /families without loading anything, /explain from one Result."""
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from appfamily import CARD, KS, make_family
from topgap.explorer.api import explain_payload, families_payload
from topgap.explorer.explain import FamilyStore, explain_all
from topgap.metrics import PxAP


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_family(root, "carded", card=True)
    make_family(root, "plain", ks=(8,))
    (make_family(root, "broken", ks=(2,)) / "card.json").write_text("{not json")
    return FamilyStore(root)


def test_families_read_without_loading(store):
    out = families_payload(store, "plain")
    assert out["default"] == "plain" and [f["name"] for f in out["families"]] == ["broken", "carded", "plain"]
    info = {f["name"]: f for f in out["families"]}
    assert not store._loaded, "listing families must not load models"
    assert info["carded"]["ks"] == list(KS) and info["plain"]["ks"] == [8] and info["plain"]["default"]
    assert all(not f["loaded"] and f["cam_size"] is None and f["classes"] is None for f in info.values())
    assert info["plain"]["card"] is None and info["plain"]["card_error"] is None
    assert "card.json is not valid JSON" in info["broken"]["card_error"] and info["broken"]["card"] is None
    k16 = info["carded"]["card"]["models"]["k16"]
    assert k16["kind"] == "topgap" and k16["k"] == 16
    bundled = json.loads((CARD / "card.json").read_text())
    for key in ("pxap", "iou", "l1"):  # the card's own figures, passed through
        assert k16[key] == bundled["evaluation"]["models"]["k16"][key]
    assert k16["accuracy"] == bundled["evaluation"]["models"]["k16"]["clean"]["accuracy"]


def test_loaded_family_reports_its_geometry(store):
    store.get("plain")
    info = families_payload(store, None)["families"][2]
    assert info["loaded"] and info["cam_size"] == [16, 16] and info["classes"] == ["circle", "square", "triangle",
                                                                                      "star"]


def test_explain_payload_chosen_k_and_every_model(store):
    fam = store.get("carded")
    result = explain_all(fam, np.zeros((64, 64, 3), np.uint8))
    out = explain_payload(result, 2)
    assert out["k"] == KS[2] and out["model"] == f"k{KS[2]}" and out["k_fraction"] == KS[2] / 256
    assert set(out["models"]) == {"k4", "k16", "k64", "baseline"}
    assert out["prediction"] == result.topgap[2].label and out["probabilities"] == out["models"]["k64"]["top"]
    assert out["models"] == result.report()["models"]  # the same figures as the downloads' report


def test_explain_maps_are_the_class_maps_l1_and_pxap_measure(store):
    fam = store.get("carded")
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 255
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    result = explain_all(fam, image).with_mask(mask)
    assert all("map" not in m for m in explain_payload(result, 0)["models"].values())  # small by default
    out = explain_payload(result, 0, maps=True)
    maps = {m.name: m for m in result.topgap + [result.baseline]}
    for name, m in out["models"].items():
        cam = np.array(m["map"])
        assert cam.shape == tuple(out["cam_size"]) == (16, 16)  # 64 px input, 4 feature maps: 64 / 4
        assert cam.min() == 0 and cam.max() == 1  # min-max scaled
        assert m["l1"] == pytest.approx(cam.mean(), abs=1e-4)  # l1 is measured on this very map
        own = maps[name].cam_input  # at the input size (64x64), where IOU, mass and PxAP are measured
        pxap = PxAP()
        pxap.update(own, mask)
        assert 0 <= m["pxap"] <= 1 and m["pxap"] == round(pxap.summary(), 6)
        assert m["pxap"] == pytest.approx(average_precision_score(mask.ravel(), own.ravel()), abs=0.01)
    assert explain_payload(result.with_mask(None), 0)["models"]["k4"]["pxap"] is None
