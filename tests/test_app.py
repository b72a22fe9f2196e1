"""The launched app through gradio_client and REST (/explain, errors, load, temp storage, logs), its handlers
called directly, plus the Space front matter and the Dockerfile."""
import csv
import importlib
import json
import os
import re
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from appfamily import KS, client_bursts, make_family, served_app
from topgap.explorer import blocks
from topgap.explorer.audit import COLUMNS
from topgap.explorer.examples import bundled_examples, env_examples, examples_fit
from topgap.explorer.handlers import PREFERRED
from topgap.explorer.views import METHOD_INFO, SIZE_HINT
from topgap.explorer.workspace import bound_storage

ROOT = Path(__file__).resolve().parents[1]
gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402


@pytest.fixture(scope="module")
def app_module(tmp_path_factory):
    """app.py imported against a temp models root holding one random-weight family."""
    models = tmp_path_factory.mktemp("models")
    make_family(models, "fam")
    old = os.environ.get("TOPGAP_MODELS")
    os.environ["TOPGAP_MODELS"] = str(models)
    sys.path.insert(0, str(ROOT))
    sys.modules.pop("app", None)
    try:
        yield importlib.import_module("app")
    finally:
        sys.path.remove(str(ROOT))
        if old is None:
            os.environ.pop("TOPGAP_MODELS", None)
        else:
            os.environ["TOPGAP_MODELS"] = old


@pytest.fixture(scope="module")
def page(app_module):
    """The page build_demo() makes, against the temp models root."""
    return app_module.build_demo()


@pytest.fixture(scope="module")
def ex(page):
    """The handlers behind the page."""
    return page.explorer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`python app.py` in a subprocess (its own memory to measure, its temp dir and log under `work`) on a free
    port; yields (process, url, work). Checks after stopping it that its temp folders are gone."""
    work = tmp_path_factory.mktemp("served")
    make_family(work / "models", "fam", card=True)
    with served_app(work / "models", workdir=work) as (proc, url):
        yield psutil.Process(proc.pid), url, work
    assert not list((work / "tmp").glob("topgap-app-*")), "the app's work folder outlived the process"


@pytest.fixture(scope="module")
def server(served):
    return served[:2]


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(d / "image.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 1  # 0/1 encoding
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(mask[::2, ::2]).save(d / "half_mask.png")  # 32x24: the image's aspect ratio
    Image.fromarray(np.zeros((20, 60), np.uint8)).save(d / "wide.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return d


def test_view_api_only_the_image_is_required(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = {p["parameter_name"]: p for p in api["/explain"]["parameters"]}
    assert list(params) == ["image", "mask", "family", "k", "method", "maps", "protocol"]
    assert params["protocol"]["parameter_default"] == "relu"
    assert [n for n, p in params.items() if not p["parameter_has_default"]] == ["image"]
    assert params["method"]["parameter_default"] == "gradcam" and params["k"]["parameter_default"] is None
    assert params["maps"]["parameter_default"] is False
    returns = api["/explain"]["returns"][0]["type"]
    assert {"prediction", "probabilities", "models", "k", "k_fraction", "cam_size"} <= set(returns["properties"])
    model = returns["properties"]["models"]["additionalProperties"]["properties"]
    assert {"label", "probability", "top", "l1", "iou", "threshold", "mass", "pxap", "map"} <= set(model)
    assert api["/families"]["parameters"] == []


def test_explain_with_the_image_only(client, files):
    report = client.predict(handle_file(files / "image.png"), api_name="/explain")
    assert report["family"] == "fam" and report["k"] == KS[1] and report["method"] == "gradcam"  # the middle k
    assert report["k_fraction"] == pytest.approx(KS[1] / (16 * 16)) and report["cam_size"] == [16, 16]
    assert set(report["models"]) == {f"k{k}" for k in KS} | {"baseline"} and report["model"] == f"k{KS[1]}"
    chosen = report["models"][f"k{KS[1]}"]
    assert report["prediction"] == chosen["label"] and report["probability"] == chosen["probability"]
    assert report["probabilities"] == chosen["top"] and max(chosen["top"].values()) == chosen["probability"]
    assert not report["has_mask"] and report["models"]["baseline"]["method"] == "gradcam"
    for m in report["models"].values():
        assert 0 <= m["probability"] <= 1 and 0 <= m["l1"] <= 1 and m["iou"] is None and m["label"]


def test_explain_with_every_argument(client, files):
    report = client.predict(image=handle_file(files / "image.png"), mask=handle_file(files / "mask.png"), family="fam",
                            k=KS[0], method="gradcam++", api_name="/explain")
    assert report["method"] == "gradcam++" and report["k"] == KS[0] and report["has_mask"]
    for m in report["models"].values():
        assert 0 < m["iou"] <= 1 and 0 <= m["threshold"] <= 1 and 0 <= m["mass"] <= 1 and 0 <= m["pxap"] <= 1
        assert "map" not in m  # maps only when asked for


def test_explain_returns_the_maps_when_asked(client, files):
    report = client.predict(handle_file(files / "image.png"), maps=True, api_name="/explain")
    for m in report["models"].values():
        cam = np.array(m["map"])
        assert cam.shape == tuple(report["cam_size"]) == (16, 16) and cam.min() == 0 and cam.max() == 1
        assert m["l1"] == pytest.approx(cam.mean(), abs=1e-4) and m["pxap"] is None  # l1 is this map's mean


def test_families_lists_ks_and_card_figures(client, served):
    out = client.predict(api_name="/families")
    assert out["default"] == "fam" and [f["name"] for f in out["families"]] == ["fam"]
    fam = out["families"][0]
    assert fam["ks"] == list(KS) and fam["source"] == "local" and fam["default"] and fam["card_error"] is None
    card = json.loads((served[2] / "models" / "fam" / "card.json").read_text())  # the bundled card, copied
    for name, m in card["evaluation"]["models"].items():
        assert fam["card"]["models"][name]["iou"] == pytest.approx(m["iou"])
        assert fam["card"]["models"][name]["accuracy"] == pytest.approx(m["clean"]["accuracy"])
    assert fam["card"]["verdicts"] == card["verdicts"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(family="nope"), r"^family: unknown model family 'nope'; available: fam"),
    (dict(method="nope"), r"^method: unknown CAM method 'nope'; choose one of gradcam"),
    (dict(protocol="nope"), r"^protocol: unknown CAM protocol 'nope'; choose one of paper, relu"),
    (dict(k=5), r"^k: k = 5 was not trained in family 'fam'; choose one of \[4, 16, 64\]"),
    (dict(mask="wide.png"),
     r"^mask: the mask is 60x20 \(aspect ratio 3.00\) but the image's aspect ratio is 1.33; send this image's mask"),
    (dict(mask="broken.png"), r"^mask: .*not an image"),
    (dict(image="broken.png"), r"^image: .*not an image"),
])
def test_bad_input_is_refused_clearly_and_the_app_goes_on(client, files, kwargs, message):
    args = {"image": handle_file(files / "image.png"), **{n: handle_file(files / v) if n in ("image", "mask") else v
                                                          for n, v in kwargs.items()}}
    with pytest.raises(AppError, match=message):
        client.predict(**args, api_name="/explain")
    assert client.predict(handle_file(files / "image.png"), api_name="/explain")["k"] == KS[1]


def test_mask_of_the_same_aspect_ratio_is_resized(client, files):
    report = client.predict(handle_file(files / "image.png"), handle_file(files / "half_mask.png"), api_name="/explain")
    # the note names the upload's own 64x48, not the 384x288 it is shown at (issue 26 item 5)
    assert report["has_mask"] and any("mask resized from 32x24 to 64x48" in n for n in report["notes"])
    same = client.predict(handle_file(files / "image.png"), handle_file(files / "mask.png"), api_name="/explain")
    assert same["has_mask"] and not any("mask resized" in n for n in same["notes"])


def _rest(url: str, data: list) -> str:
    """POST /gradio_api/call/explain, then read the event stream; returns its text."""
    req = urllib.request.Request(url + "gradio_api/call/explain", json.dumps({"data": data}).encode(),
                                 {"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    return urllib.request.urlopen(f"{url}gradio_api/call/explain/{event}", timeout=60).read().decode()


def test_rest_without_the_image_says_so(server, files):
    text = _rest(server[1], [])
    assert "event: error" in text and "/explain needs image" in text, text


def test_user_errors_logged_without_traceback(served, client, files):
    with pytest.raises(AppError):
        client.predict(handle_file(files / "broken.png"), api_name="/explain")
    _rest(served[1], [None])
    _rest(served[1], [])
    time.sleep(1)
    log = (served[2] / "app.log").read_text()
    assert "user error: image:" in log and "user error: /explain needs image" in log
    assert "Traceback" not in log, log[-3000:]


def test_mcp_off_by_default_and_without_the_package(monkeypatch, caplog):
    monkeypatch.delenv("TOPGAP_MCP", raising=False)
    assert blocks.mcp_enabled() is False
    monkeypatch.setenv("TOPGAP_MCP", "1")
    monkeypatch.setattr(blocks.importlib.util, "find_spec", lambda name: None)
    assert blocks.mcp_enabled() is False and "gradio[mcp] is not installed" in caplog.text
    monkeypatch.setattr(blocks.importlib.util, "find_spec", lambda name: object() if name == "mcp" else None)
    assert blocks.mcp_enabled() is True


def test_api_docstrings_describe_every_argument(ex):
    doc = ex.api_explain.__doc__
    for name in ("image", "mask", "family", "k", "method", "maps"):
        assert re.search(rf"^\s+{name}: \w", doc, re.M), name
    assert "Returns:" in ex.api_families.__doc__


def test_uploads_and_outputs_inside_the_work_folder(served, client, files):
    client.predict(handle_file(files / "image.png"), api_name="/explain")
    work = next((served[2] / "tmp").glob("topgap-app-*"))
    assert list((work / "gradio").rglob("image.png")), "gradio's uploads are not in the app's work folder"


def test_bound_storage_deletes_oldest_beyond_the_limit(tmp_path):
    now = time.time()
    for i, size in enumerate([100, 100, 100, 0]):  # oldest first; the empty file goes too
        f = tmp_path / f"f{i}"
        f.write_bytes(b"x" * size)
        os.utime(f, (now - 1000 + i, now - 1000 + i))
    (tmp_path / "new").write_bytes(b"x" * 100)  # younger than min_age_s: kept even over the limit
    left = bound_storage(tmp_path, max_bytes=250, min_age_s=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f2", "new"] and left == 200


def _image_session(ex, files, k=KS[1], mask=None):
    out = ex.update("fam", str(files / "image.png"), mask, None, "gradcam", k, None)
    return out


def test_k_control_lists_trained_k_and_switches_without_models(ex, files, monkeypatch):
    import topgap.explorer.explain as explain

    out = _image_session(ex, files, k=999)  # any k: the nearest trained one is used
    sess, radio = out[0], out[1]
    assert radio["choices"] == list(KS) and radio["value"] == KS[-1] and f"k = {KS[-1]}:" in radio["info"]
    monkeypatch.setattr(explain, "topgap_cam", lambda *a, **k: pytest.fail("the k control must not run a model"))
    monkeypatch.setattr(explain, "baseline_cam", lambda *a, **k: pytest.fail("the k control must not run a model"))
    for i, k in enumerate(KS):
        info, top, labels, *_ = ex.switch_k(sess, k)
        assert f"k = {k}:" in info["info"] and (np.asarray(Image.open(top)) == sess.result.topgap[i].overlay).all()
    shown, msg = ex.downloads(sess, KS[1])
    paths = shown["value"]
    assert shown["visible"] is True  # the box is hidden until it has files
    assert {Path(p).suffix for p in paths} == {".png", ".npy", ".json"} and msg == ""
    assert all(Path(p).is_relative_to(ex.work.downloads) for p in paths)
    assert json.loads(Path(paths[-1]).read_text())["k"] == KS[1]


def test_protocol_toggle_redoes_the_own_maps_without_a_model_and_keeps_the_mask(ex, files, monkeypatch):
    """Issue 26 item 3: the paper's CAM mode is min-max of the raw class map; the page's l1 is that map's mean and
    its IOU the library's best_iou on it; the baseline's map does not change."""
    import torch

    import topgap.explorer.explain as explain
    from topgap.data.imageio import fit_mask
    from topgap.metrics import best_iou

    image, mask = str(files / "image.png"), str(files / "mask.png")
    sess = _image_session(ex, files, mask=mask)[0]
    monkeypatch.setattr(explain, "topgap_cam", lambda *a, **k: pytest.fail("a protocol switch must not run a model"))
    monkeypatch.setattr(explain, "baseline_cam", lambda *a, **k: pytest.fail("a protocol switch must not run a model"))
    out = ex.update("fam", image, mask, None, "gradcam", KS[1], sess, "paper")
    paper = out[0].result
    assert paper.protocol == "paper" and paper.has_mask and out[0].mask_source == "uploaded mask"
    chosen = paper.topgap[1]
    raw = chosen.raw[0].double()
    expected = ((raw - raw.min()) / (raw.max() - raw.min())).numpy()  # the class map is 16x16: no resize
    np.testing.assert_allclose(chosen.cam_map, expected, atol=1e-5)
    assert chosen.l1 == pytest.approx(expected.mean(), abs=1e-5)
    obj, ign = paper.mask
    o, i, _ = fit_mask(obj, ign, chosen.cam_input.shape)
    assert chosen.iou == pytest.approx(best_iou(chosen.cam_input, o, i)[0])
    metrics = out[10]
    assert f"| {chosen.l1:.3f} | {chosen.iou:.3f} |" in metrics and "min-max of the raw map (the paper's" in metrics
    assert (paper.baseline.overlay == sess.result.baseline.overlay).all()
    back = ex.update("fam", image, mask, None, "gradcam", KS[1], out[0], "relu")[0].result
    assert back.protocol == "relu" and [m.l1 for m in back.topgap] == pytest.approx(
        [m.l1 for m in sess.result.topgap])
    assert torch.equal(back.topgap[0].raw, sess.result.topgap[0].raw)


def test_a_slow_method_keeps_the_topgap_maps_and_completes_in_its_own_step(ex, files):
    """Issue 26 item 5: with ScoreCAM the update answers with the Top-GAP maps and says the baseline is computing;
    complete_baseline (the "slow" queue) adds it, with the mask applied again; once done it is cached."""
    mask = str(files / "mask.png")
    sess = _image_session(ex, files, mask=mask)[0]
    out = ex.update("fam", str(files / "image.png"), mask, None, "scorecam", KS[1], sess)
    slow = out[0]
    assert slow.result.pending == "scorecam" and slow.result.baseline is None and out[6] is not None  # own map
    assert out[8] is None and "| baseline (scorecam) | computing… |" in out[10]  # no baseline map yet
    done = ex.complete_baseline(slow, KS[1])
    assert len(done) == 9 and done[0].result.pending is None and done[0].result.has_mask
    assert done[0].result.baseline.iou is not None and "baseline (scorecam)" in done[5] and done[3] is not None
    assert done[0].result.topgap[1].l1 == slow.result.topgap[1].l1  # the own maps are the ones shown before
    assert ex.complete_baseline(done[0], KS[1]) == (gr.skip(),) * 9  # nothing pending
    again = ex.update("fam", str(files / "image.png"), mask, None, "scorecam", KS[1], sess)[0]
    assert again.result.pending is None  # the cache holds the completed result


def test_another_clients_explain_is_answered_while_a_scorecam_request_runs(app_module, files):
    """Issue 26 item 5, an ordering check: client A's /explain with ScoreCAM is held inside its slow part (the
    baseline's copy); client B's /explain with GradCAM is answered meanwhile, and A's after it is let go."""
    ex = app_module.explorer_from_env()
    demo = app_module.build_demo(ex)
    entered, release = threading.Event(), threading.Event()
    slow_map = ex.slow_map

    def held(fam, result):
        entered.set()
        assert release.wait(120), "never released"
        return slow_map(fam, result)
    ex.slow_map = held
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        first = Client(demo.local_url, verbose=False).submit(handle_file(files / "image.png"), method="scorecam",
                                                             api_name="/explain")
        assert entered.wait(120), "the ScoreCAM request never reached its slow part"
        other = Client(demo.local_url, verbose=False).submit(handle_file(files / "image.png"), method="gradcam",
                                                             api_name="/explain")
        answer = other.result(timeout=60)  # while the ScoreCAM request is still held
        assert answer["models"]["baseline"]["label"] and not first.done()
        release.set()
        assert first.result(timeout=120)["models"]["baseline"]["label"]
    finally:
        release.set()
        demo.close()


def test_a_slow_baseline_does_not_land_on_a_page_that_moved_on(ex, files, tmp_path):
    """The slow step answers after the visitor may have shown another image: it must not put the old image's
    session and maps back (the map is cached for when they come back)."""
    from types import SimpleNamespace

    visitor = SimpleNamespace(session_hash="visitor-1")
    other = tmp_path / "other.png"
    Image.fromarray((np.random.default_rng(5).random((48, 64, 3)) * 255).astype(np.uint8)).save(other)
    slow = ex.update("fam", str(other), None, None, "scorecam", KS[1], None, "relu", visitor)[0]
    assert slow.result.pending == "scorecam"
    ex.update("fam", str(files / "image.png"), None, None, "scorecam", KS[1], slow, "relu", visitor)  # moved on
    assert ex.complete_baseline(slow, KS[1], visitor) == (gr.skip(),) * 9
    back = ex.update("fam", str(other), None, None, "scorecam", KS[1], None, "relu", visitor)[0]
    assert back.result.pending is None and back.result.baseline is not None  # cached by the skipped step
    assert ex.complete_baseline(slow, KS[1], None)[0].result.baseline is not None  # without a request: no check


def test_a_mask_of_another_aspect_ratio_is_refused_on_the_page_as_by_explain(ex, files):
    """Issue 26 item 5 (masks): the page stretched it (IOU 0.502 at threshold 0.000, one note at the end) where
    /explain refuses it; now both refuse it with the same words. One of the same aspect ratio is resized."""
    sess = _image_session(ex, files)[0]
    out = ex.update("fam", str(files / "image.png"), str(files / "wide.png"), None, "gradcam", KS[1], sess)
    assert out[4] == ("⚠️ The mask could not be used: the mask is 60x20 (aspect ratio 3.00) but the image's aspect "
                      "ratio is 1.33; send this image's mask (same size, or scaled with the same aspect ratio). IOU "
                      "and mass are cleared until a valid mask is given.")
    assert not out[0].result.has_mask and out[0].mask is None and out[5] is None
    half = ex.update("fam", str(files / "image.png"), str(files / "half_mask.png"), None, "gradcam", KS[1], out[0])
    assert half[0].result.has_mask and "mask resized from 32x24 to 64x48" in half[10]


def test_chained_events_never_drop_a_trigger(page):
    """A chained event (size assistant, slow baseline, the editor's picture) that is triggered again while it runs
    must run again after it ("always_last"): gradio's default for .then, "once", drops it (the likely cause of the
    size advice that kept "no mask" for a mask uploaded right after an image, about 1 run in 4 under load)."""
    chained = [d for d in page.get_config_file()["dependencies"] if any(t[1] == "then" for t in d["targets"])]
    assert len(chained) >= 4
    assert {d["trigger_mode"] for d in chained} == {"always_last"}


def test_an_upload_that_replaces_the_drawing_clears_its_strokes(ex, files):
    """Issue 26 item 5: drawn strokes stayed on screen after an upload replaced them as the mask in use."""
    image, mask = str(files / "image.png"), str(files / "mask.png")
    sess = _image_session(ex, files)[0]
    h, w = sess.result.image.shape[:2]
    layer = np.zeros((h, w, 4), np.uint8)
    layer[10:40, 10:40, 3] = 255
    drawn = {"background": sess.result.image, "layers": [layer], "composite": sess.result.image}
    out = ex.update("fam", image, None, drawn, "gradcam", KS[1], sess)
    assert out[0].mask_source == "drawn mask" and out[-1] == gr.skip()  # the editor keeps the strokes it has
    out = ex.update("fam", image, mask, drawn, "gradcam", KS[1], out[0])  # an upload while the strokes are there
    assert out[0].mask_source == "uploaded mask" and out[0].drawn_key is None
    # no value is sent into the editor that holds the strokes: the page clears it (a fresh token in the hidden box
    # draw_reset), then it gets the image again without strokes
    assert out[-1].isdigit()
    again = ex.editor_background(out[0])
    assert again["layers"] == [] and again["background"] is out[0].result.image
    late = ex.update("fam", image, mask, drawn, "gradcam", KS[1], out[0])  # sent before the page cleared them
    assert late[0].mask_source == "uploaded mask" and late[-1] == gr.skip()
    for cleared in (None, again):  # the editor's change events: emptied, then given the image again
        after = ex.update("fam", image, mask, cleared, "gradcam", KS[1], late[0])
        assert after[0].mask_source == "uploaded mask" and after[0].result.has_mask
    layer[50:60, 50:60, 3] = 255  # a new drawing is used again
    redrawn = ex.update("fam", image, mask, {**drawn, "layers": [layer]}, "gradcam", KS[1], after[0])
    assert redrawn[0].mask_source == "drawn mask"


def test_mask_kept_for_its_image_cleared_for_a_new_one(ex, files, tmp_path):
    sess = _image_session(ex, files, mask=str(files / "mask.png"))[0]
    assert sess.result.has_mask and sess.mask_source == "uploaded mask"
    out = ex.update("fam", str(files / "image.png"), str(files / "mask.png"), None, "gradcam++", KS[1], sess)
    assert out[0].result.has_mask and out[0].result.method == "gradcam++"  # method change keeps the mask
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(other)
    out = ex.update("fam", str(other), str(files / "mask.png"), None, "gradcam", KS[1], out[0])
    assert not out[0].result.has_mask and "previous image's mask was cleared" in out[4]
    assert "Upload or draw a mask" in out[10]
    # an event queued before the page emptied the mask box still carries the old mask: it must not come back,
    # nor erase the message
    late = ex.update("fam", str(other), str(files / "mask.png"), None, "gradcam", KS[1], out[0])
    assert not late[0].result.has_mask and late[4] == gr.skip()
    emptied = ex.update("fam", str(other), None, None, "gradcam", KS[1], late[0])  # the box is empty now
    later = ex.update("fam", str(other), str(files / "mask.png"), None, "gradcam", KS[1], emptied[0])
    assert not later[0].result.has_mask  # and one queued earlier arrives after it (seen in the browser): still ignored
    own = tmp_path / "own.png"
    Image.fromarray(np.eye(40, dtype=np.uint8) * 255).save(own)
    mine = ex.update("fam", str(other), str(own), None, "gradcam", KS[1], later[0])
    assert mine[0].result.has_mask and mine[0].mask_source == "uploaded mask"  # this image's own mask: used


def test_bad_image_keeps_the_results_and_says_so(ex, files):
    sess = _image_session(ex, files)[0]
    out = ex.update("fam", str(files / "broken.png"), None, None, "gradcam", KS[1], sess)
    assert "Still showing the previous image's results" in out[3]
    assert out[0].result is sess.result and out[6] == gr.skip()  # the shown CAM is not replaced
    assert out[-2] == str(files / "image.png")  # the box shows the image of the results again, not the refused one
    again = ex.update("fam", str(files / "broken.png"), None, None, "gradcam", KS[1], out[0])
    assert again[3] == gr.skip() and again[0].result is sess.result  # a queued twin event: said once, nothing new
    assert again[-2] == str(files / "image.png")
    fresh = ex.update("fam", str(files / "broken.png"), None, None, "gradcam", KS[1], None)
    assert fresh[0].result is None and fresh[-2] is None  # nothing was shown: the box is emptied


def test_bias_plot_marks_k_and_labels_do_not_overlap(ex, files):
    sess = _image_session(ex, files, mask=str(files / "mask.png"))[0]
    table, fig = ex.bias_view(sess, KS[1])
    lines = table.splitlines()
    assert lines[0] == "| model | k | k/(h*w) | prediction | prob | IOU | l1 | mass |" and len(lines) == 2 + len(KS) + 1
    chosen = sess.result.topgap[1]
    assert lines[3].startswith(f"| k{KS[1]} | {KS[1]} | {KS[1] / 256:.3f} | {chosen.label} | ")
    assert f"| {chosen.iou:.3f} | {chosen.l1:.3f} | {chosen.mass:.3f} |" in lines[3]
    assert lines[-1].startswith("| baseline (gradcam) | – | – |")
    ax = fig.axes[0]
    assert any(line.get_label() == f"selected k = {KS[1]}" for line in ax.get_lines())
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()]
    assert len(boxes) == len(KS)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), "x labels overlap"


def test_model_card_rendered_from_card_json(ex):
    text, plots, details = ex.model_card("fam")
    assert "No model card yet for **fam**" in text and plots is None and details == ""


def test_card_summary_first_no_local_paths_no_empty_columns(tmp_path):
    """Issue 26 item 7: what reproduces and what does not first, the tables in the details; the card machine's
    paths shown as DATA and OUT/; a column empty in every row is left out."""
    import shutil

    from appfamily import CARD
    from topgap.explorer.card_view import card_parts

    fam = tmp_path / "fam"
    shutil.copytree(CARD, fam)
    card = json.loads((fam / "card.json").read_text())
    card["commands"] = ["topgap train --data ../shared/data/pets --out runs/pets/seed$S", "ls ./runs/x myruns/y"]
    card["data"] = "Pets in ../../shared/data, research use."
    (fam / "card.json").write_text(json.dumps(card))
    summary, details, plots = card_parts(fam)
    assert summary.startswith(f"## {card['title']}") and "In words" in summary and "The promise" in summary
    assert "| metric |" not in summary and "| metric |" in details and "| ROAD |" in details  # tables: details
    assert "white-box" not in details  # no attack ran for this card: the columns empty in every row are left out
    assert "Pets in DATA, research use." in summary and "shared/data" not in summary + details
    assert "topgap train --data DATA/pets --out OUT/pets/seed$S" in details and "./runs/x myruns/y" in details
    assert len(plots) == len(card["plots"])
    from topgap.explorer.card_view import markdown_table

    assert markdown_table(["model", "ROAD", "k"], [["a", "–", "4"], ["b", "–", "–"]]).splitlines() == [
        "| model | k |", "|---|---|", "| a | 4 |", "| b | – |"]  # ROAD is empty in every row: left out


def test_eight_clients_memory_flat(server, files):
    process, url = server
    assert not client_bursts(url, files / "image.png", files / "mask.png", 8, 5)  # warm-up: every path, 8 sessions
    before = process.memory_info().rss
    errors = client_bursts(url, files / "image.png", files / "mask.png", 8, 25)
    after = process.memory_info().rss
    assert not errors, errors[:3]
    assert after < before * 1.10, f"RSS grew from {before / 2**20:.0f} MB to {after / 2**20:.0f} MB"


def test_space_front_matter():
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(ROOT / "README.md")
    data = card.data.to_dict()
    pinned = re.search(r"^gradio==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert data["sdk"] == "gradio" and data["sdk_version"] == pinned == gr.__version__
    assert data["app_file"] == "app.py" and data["python_version"] == "3.11" and data["license"] == "mit"
    assert data["title"] and data["emoji"] and data["colorFrom"] and data["colorTo"] and data["short_description"]
    assert len(data["short_description"]) <= 60


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "useradd -m -u 1000 user" in text and re.search(r"^USER user$", text, re.M)
    assert "WORKDIR $HOME/app" in text or "WORKDIR /home/user/app" in text
    assert "GRADIO_SERVER_NAME=0.0.0.0" in text and "GRADIO_SERVER_PORT=7860" in text
    assert re.search(r"^EXPOSE 7860$", text, re.M)
    assert "--index-url https://download.pytorch.org/whl/cpu" in text and "torch==2.15.0" in text
    assert text.index("COPY --chown=user requirements.txt") < text.index("COPY --chown=user . ")
    assert re.search(r'^CMD \["python", "app.py"\]$', text, re.M)
    assert ".git" in (ROOT / ".dockerignore").read_text().split()


def test_import_does_nothing_and_the_page_loads_no_family(tmp_path):
    """Importing app.py makes no folder and sets no env (issue 26 item 1); build_demo() makes the workspace and
    reads the trained k from config.json without loading a model."""
    import subprocess

    make_family(tmp_path / "models", "fam")
    (tmp_path / "tmp").mkdir()
    code = ("import os, sys, app; print(os.listdir(os.environ['TMPDIR']), 'GRADIO_TEMP_DIR' in os.environ); "
            "demo = app.build_demo(); k = next(b for b in demo.blocks.values() if getattr(b, 'elem_id', None) == 'k'); "
            "print(sorted(demo.explorer.store._loaded), [c[1] for c in k.choices], k.value, "
            "os.environ['GRADIO_TEMP_DIR'].startswith(str(demo.explorer.work.root))); "
            "print([m for m in ('timm', 'torchvision', 'pytorch_grad_cam') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**{n: v for n, v in os.environ.items() if n != "GRADIO_TEMP_DIR"},
                              "TOPGAP_MODELS": str(tmp_path / "models"), "PYTHONPATH": str(ROOT),
                              "TMPDIR": str(tmp_path / "tmp")})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert lines[-4] == "[] False"  # the import: no temp folder, no env
    assert lines[-3] == f"[] {list(KS)} {KS[1]} True"  # k from config.json, no model loaded
    assert lines[-2] == "[]"  # timm (torchvision, torch._dynamo) and grad-cam load with the models
    assert not list((tmp_path / "tmp").glob("topgap-app-*")), "the workspace outlived the process"


def test_first_view_computed_once_in_the_background_while_the_page_serves(app_module, monkeypatch):
    """docs/performance.md, cold start: build_demo(warm=True) returns before the first view is computed (a background
    thread computes it once the server serves: demo.serving, set by launch); two page loads that arrive before it
    is ready wait for that same computation, and a later one finds it cached: explain_all runs once, in that thread
    (an ordering and count check, no timing)."""
    import topgap.explorer.handlers as handlers

    real, calls, arrived = handlers.explain_all, [], []

    def counted(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)
    monkeypatch.setattr(handlers, "explain_all", counted)
    ex = app_module.explorer_from_env()
    demo = app_module.build_demo(ex, warm=True)
    assert isinstance(demo, gr.Blocks) and not ex.first_view.done() and calls == []  # returned, nothing computed
    image, mask = ex.first_example(ex.default, bundled_examples(ex.assets))
    explain, outputs = ex.explain, {}

    def counted_explain(*args, **kwargs):
        arrived.append(ex.first_view.done())
        return explain(*args, **kwargs)
    ex.explain = counted_explain

    def load(name):  # what a page load runs (app.py: demo.load(ex.update, ...))
        outputs[name] = ex.update(ex.default, image, mask, None, "gradcam", KS[1], None)
    loads = [threading.Thread(target=load, args=(n,)) for n in ("a", "b")]
    for t in loads:
        t.start()
    deadline = time.monotonic() + 120
    while len(arrived) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert arrived == [False, False] and calls == []  # both asked for it before it was ready; neither computes it
    demo.serving.set()  # as launch() does once the server runs
    for t in loads:
        t.join(120)
    assert calls == ["first-view"]  # computed once, in the background thread; both loads waited for it
    first = ex.first_view.result(timeout=0)
    assert outputs["a"][0].result.topgap[0].cam is first.topgap[0].cam is outputs["b"][0].result.topgap[0].cam
    assert "uploaded mask" in outputs["a"][10]  # each page's mask on the shared result
    later = ex.update(ex.default, image, mask, None, "gradcam", KS[1], None)
    assert calls == ["first-view"] and later[0].result.topgap[0].cam is first.topgap[0].cam  # cached
    for i in range(handlers.CACHED_RESULTS + 1):  # other images fill the cache: the first view stays in it
        ex._remember(("fam", f"other{i}", "gradcam", "relu"), first)
    assert ex._cached(ex._first_key) is first


def test_first_use_loads_the_family_once(ex, files, caplog):
    import logging

    ex.store._loaded.pop("fam", None)
    with caplog.at_level(logging.INFO, logger="topgap.app"):
        assert ex.load_family("fam") is ex.load_family("fam")
    assert caplog.text.count("loading model family fam") == 1
    msgs = list(ex.preload("fam"))
    assert msgs == [gr.skip()]  # loaded already: the page load says nothing
    ex.store._loaded.pop("fam")
    msgs = list(ex.preload("fam"))
    assert msgs[0].startswith("Loading model family 'fam'") and msgs[-1] == "" and ex.store.loaded("fam")


def test_size_prior_from_the_mask_or_a_typed_size_without_models(ex, files, monkeypatch):
    import topgap.explorer.explain as explain

    sess = _image_session(ex, files, mask=str(files / "mask.png"))[0]
    monkeypatch.setattr(explain, "topgap_cam", lambda *a, **k: pytest.fail("the size prior must not run a model"))
    monkeypatch.setattr(explain, "baseline_cam", lambda *a, **k: pytest.fail("the size prior must not run a model"))
    # mask: 20x30 of 48x64 pixels = 19.53% of the image; 0.1953125 * 16 * 16 = 50 cells; nearest k 64 (log scale)
    text, fig = ex.size_view(sess, KS[1], None)
    assert "**19.5%** of the image (uploaded mask)" in text and "**50.0** of the 16x16 = 256" in text
    assert "**k = 64**" in text
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert {"object: 50.0 cells", "nearest trained k = 64", f"selected k = {KS[1]}", "Top-GAP iou"} <= set(labels)
    assert ex.use_advised_k(sess, None) == 64
    text, _ = ex.size_view(sess, KS[1], 0.02)  # typed wins over the mask: 5.12 cells, nearest k 4
    assert "**2.0%** of the image (typed size)" in text and "**k = 4**" in text
    assert ex.use_advised_k(sess, 0.02) == 4
    text, fig = ex.size_view(sess, KS[1], 1.5)
    assert text.startswith("⚠️ The object size must be between 0 and 1, both excluded (got 1.5)")
    assert "Top-GAP l1" in [line.get_label() for line in fig.axes[0].get_lines()]  # the curves stay
    assert ex.use_advised_k(sess, 1.5) == gr.skip()


def test_the_size_box_starts_empty_and_empty_means_from_the_mask(page, ex, files):
    """The box is a Textbox: a gr.Number cannot be empty, showed 0 and sent it, and 0 was refused (issue 26)."""
    box = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "size_fraction")
    assert isinstance(box, gr.Textbox) and box.value == ""
    method = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "method")
    assert method.info == METHOD_INFO and "same map" in method.info  # tests/test_cam.py proves it
    sess = _image_session(ex, files, mask=str(files / "mask.png"))[0]
    for empty in ("", "  ", None):
        assert "(uploaded mask)" in ex.size_view(sess, KS[1], empty)[0]
        assert ex.use_advised_k(sess, empty) == 64
    assert "**2.0%** of the image (typed size)" in ex.size_view(sess, KS[1], " 0.02 ")[0]
    assert ex.size_view(sess, KS[1], "a quarter")[0].startswith(
        "⚠️ The object size must be a number between 0 and 1 (got 'a quarter')")


def test_size_prior_without_mask_or_image_says_what_to_do(ex, files):
    sess = _image_session(ex, files)[0]
    text, fig = ex.size_view(sess, KS[1], None)
    assert text == SIZE_HINT and fig is not None
    assert ex.size_view(None, KS[1], 0.5) == ("Upload an image (or pick an example) on the Explain tab "
                                                      "first. " + SIZE_HINT, None)


def test_faithfulness_view_plots_the_evaluations_road(ex, files, monkeypatch):
    from topgap.explorer.faith import road_curves

    assert ex.faithfulness_view(None, KS[1])[1].startswith("⚠️ Upload an image")
    sess = _image_session(ex, files)[0]
    fig, text = ex.faithfulness_view(sess, KS[1])
    curves = road_curves(ex.store.get("fam"), sess.result)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {f"k{k}: ROAD {curves[f'k{k}']['road']:.3f}" for k in KS} | {
        f"baseline (gradcam): ROAD {curves['baseline']['road']:.3f}"}
    assert lines[f"k{KS[1]}: ROAD {curves[f'k{KS[1]}']['road']:.3f}"].get_linewidth() == 2.5  # the selected k
    assert f"| k{KS[0]} | {curves[f'k{KS[0]}']['road']:.3f} |" in text and "| model | ROAD | 20% | 40% |" in text


def test_attack_tab_offers_both_pgd_rules_and_shows_steps_step_size_and_reach(page, ex, files):
    from topgap.explorer.explain import PGD_HELP, PGD_RULE, PGD_STEPS

    blocks = {getattr(b, "elem_id", None): b for b in page.blocks.values()}
    rule = blocks["pgd_rule"]
    assert rule.choices == [("Madry et al.: 2.5 eps / steps", "2.5eps/steps"),
                            ("Foolbox: eps / 30 per step", "foolbox")]
    assert rule.value == PGD_RULE and blocks["attack_help"].value == PGD_HELP
    assert ex.robustness("fam", None, KS[1], "pgd", 8, PGD_RULE)[1].startswith("⚠️ Upload an image")
    sess = _image_session(ex, files)[0]
    gallery, text = ex.robustness("fam", sess, KS[1], "pgd", 8, "foolbox")
    assert len(gallery) == 4 and text.startswith("| model | clean | attacked | changed |")
    assert f"- step rule: Foolbox: eps / 30 per step\n- {PGD_STEPS} steps of 0.267/255 = 0.00105" in text
    assert text.endswith("- reaches the eps boundary: no\n\nThese steps cannot reach the edge of the eps range: the "
                         "attack is weaker than its eps says.")
    assert ex.robustness("fam", sess, KS[1], "pgd", 8, "madry")[1].startswith("⚠️ unknown PGD step rule")


def test_audit_handler_table_csv_progress_and_refusals(ex, files, tmp_path):
    with zipfile.ZipFile(tmp_path / "batch.zip", "w") as z:
        z.write(files / "image.png", "a.png")
        z.write(files / "image.png", "b.png")
        z.write(files / "mask.png", "masks/a.png")
        z.writestr("../evil.png", b"x")

    class Progress:  # records what gr.Progress would show
        def tqdm(self, items, desc, unit):
            self.seen = (len(items), desc, unit)
            return items
    progress = Progress()
    table, csv_path, text = ex.audit("fam", "gradcam", [str(tmp_path / "batch.zip")], progress)
    assert progress.seen == (2, "Auditing", "image")
    lines = table.splitlines()  # Markdown: the headline figures, every column in the CSV
    assert lines[0] == "| image | mask | model | label | prob | l1 | IOU | mass |"
    rows = [line.split(" | ") for line in lines[2:]]
    assert len(rows) == 2 * (len(KS) + 1) and {r[1] for r in rows} == {"yes", "–"}
    assert text.startswith("2 images (1 with a mask) through 3 Top-GAP models and the baseline of **fam**: 8 rows.")
    assert "../evil.png: a name outside the zip's folder, ignored" in text
    assert Path(csv_path).is_relative_to(ex.work.downloads)
    with open(csv_path, newline="") as f:
        assert next(csv.reader(f)) == COLUMNS and len(f.readlines()) == len(rows)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert ex.audit("fam", "gradcam", [str(tmp_path / "junk.zip")], progress) == (
        None, None, "⚠️ Audit refused: junk.zip is not a readable zip file (File is not a zip file); zip the images "
        "again and upload it.")
    assert ex.audit("nope", "gradcam", [str(tmp_path / "batch.zip")], progress)[2].startswith(
        "⚠️ Audit refused: unknown model family 'nope'; available: fam")
    assert ex.audit("fam", "gradcam", None, progress)[2].startswith("⚠️ Upload a zip")
    assert ex.audit("fam", "scorecam", [str(tmp_path / "batch.zip")], progress)[2].startswith(
        "⚠️ The audit runs the fast CAM methods only: scorecam takes tens of seconds per image")


def test_backgrounds_view_every_model_on_every_variant(ex, files):
    assert ex.backgrounds_view(None, None)[2].startswith("⚠️ Upload an image (or pick an example)")
    no_mask = _image_session(ex, files)[0]
    assert ex.backgrounds_view(no_mask, None) == (None, None, "⚠️ This image has no mask: upload or draw a "
                                                          "mask of the object in the Explain tab, then swap its "
                                                          "background.")
    sess = _image_session(ex, files, mask=str(files / "mask.png"))[0]
    pictures, frame, text = ex.backgrounds_view(sess, str(files / "wide.png"))  # a second photo: 60x20
    variants = ["original", "on brick", "on grass", "on gravel", "on your photo", "on grey", "no_fg", "only_bg_t"]
    models = [f"k{k}" for k in KS] + ["baseline (gradcam)"]
    lines = frame.splitlines()  # a Markdown table: it wraps on a phone, where a Dataframe scrolled (issue 26)
    assert lines[0] == "| " + " | ".join(["variant"] + models) + " |"
    assert [row.split(" | ")[0].lstrip("| ") for row in lines[2:]] == variants
    assert pictures["columns"] == 1 + len(models) and len(pictures["value"]) == len(variants) * (1 + len(models))
    path, cap = pictures["value"][4 * 5]  # the row of the second photo: its input first, black (the photo) around
    shown, (obj, _) = np.asarray(Image.open(path)), sess.result.mask  # at the shown size (the image enlarged 6x)
    assert cap == "on your photo: input" and obj.mean() == pytest.approx(20 * 30 / (48 * 64))
    assert (shown[~obj] == 0).all() and (shown[obj] == sess.result.image[obj]).all()
    assert all(text.count(f"| {m} |") == 1 for m in models)
    sess.result = sess.result.with_mask(None)
    _, _, text = ex.backgrounds_view(sess, str(files / "broken.png"))
    assert text.startswith("⚠️ The second photo could not be used:")


def test_examples_suit_the_family_and_come_from_a_dataset(app_module, ex, tmp_path, monkeypatch):
    assert ex.default == "fam"  # TOPGAP_MODELS holds only the fake family (classes: the synthetic shapes)
    assert PREFERRED == ["synthetic-shapes", "oxford-pet-lite0", "synth"]  # in-distribution examples first
    assert [examples_fit(ex.store, k, "fam") for k in ("synthetic", "photo", "dataset")] == [True, False, True]
    assert examples_fit(ex.store, "photo", "not-on-disk") and examples_fit(ex.store, "synthetic", None)
    sets = dict((kind, s) for s, kind in bundled_examples(ROOT / "assets"))
    photos = ROOT / "assets" / "photos"
    assert sets["photo"].rows == [[str(photos / "chelsea.jpg"), str(photos / "masks" / "chelsea.png")]]
    assert sets["photo"].captions == ["chelsea (CC0 photo from scikit-image)"]
    captions = sets["synthetic"].captions  # the shortcut test first: usual, other background, background alone
    assert captions[:4] == [f"{c}, usual background" for c in ("circle", "square", "star", "triangle")]
    assert captions[8:12] == [f"{c}'s background, no object" for c in ("circle", "square", "star", "triangle")]
    assert all(mask is None for _, mask in sets["synthetic"].rows[8:12])  # no object, no mask
    monkeypatch.setenv("TOPGAP_EXAMPLES", str(tmp_path / "nothing"))
    assert env_examples() is None  # logged; the bundled examples stay
    image = tmp_path / "data" / "test" / "cat" / "a.png"
    image.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    (tmp_path / "data" / "masks" / "test" / "cat").mkdir(parents=True)
    Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(tmp_path / "data" / "masks" / "test" / "cat" / "a.png")
    monkeypatch.setenv("TOPGAP_EXAMPLES", str(tmp_path / "data"))
    assert env_examples().captions == ["cat (a)"]
    assert isinstance(app_module.build_demo(ex, env_examples()), gr.Blocks)


def test_examples_flag_with_an_unusable_folder_stops_with_a_message(tmp_path):
    import subprocess

    (tmp_path / "test" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "test" / "cat" / "a.png")  # no masks/
    proc = subprocess.run([sys.executable, "app.py", "--examples", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TOPGAP_MODELS": str(tmp_path / "none")})
    assert proc.returncode == 2
    assert f"examples folder {tmp_path}: split 'test' has no image with a mask" in proc.stderr


def test_app_starts_without_the_hub_examples_when_offline(tmp_path, monkeypatch):
    make_family(tmp_path / "models", "fam")
    monkeypatch.setenv("TOPGAP_HUB_EXAMPLES", "someone/pets@abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as without network, at once
    with served_app(tmp_path / "models", workdir=tmp_path) as (_, url):
        assert urllib.request.urlopen(url, timeout=10).status == 200
    assert (tmp_path / "app.log").read_text().count("Hub examples off: someone/pets@abc123 could not be read") == 1


def test_lenient_image_survives_gradio_rebuilding_it(tmp_path):
    """An unreadable upload reaches the handler as its path, also after an event updated the component (gradio then
    rebuilds it from its constructor arguments: that lost an instance-level wrapper and every output showed
    "Error"); other images keep gradio's error."""
    from gradio.data_classes import FileData

    from topgap.explorer.blocks import lenient

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    payload = FileData(path=str(broken))
    image = lenient(gr.Image(type="filepath", image_mode=None, elem_classes=["x"], render=False))
    rebuilt = gr.Image(**{**image.constructor_args, "render": False})  # what an update (gr.skip()) makes
    assert image.preprocess(payload) == rebuilt.preprocess(payload) == str(broken)
    assert rebuilt.elem_classes == ["x", "topgap-lenient"]
    with pytest.raises(Exception, match="(?i)truncat|cannot identify|broken"):
        gr.Image(type="filepath", image_mode=None, render=False).preprocess(payload)
