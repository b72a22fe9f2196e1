"""The launched app through gradio_client (/explain, errors, load), plus the Space front matter and the Dockerfile."""
import importlib
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from appfamily import KS, make_family, served_app

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
def server(tmp_path_factory):
    """`python app.py` in a subprocess (its own memory to measure) on a free port; yields (process, url)."""
    models = tmp_path_factory.mktemp("served_models")
    make_family(models, "fam")
    with served_app(models) as (proc, url):
        yield psutil.Process(proc.pid), url


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
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return d


def test_explain_without_mask(client, files):
    top, base, report = client.predict(handle_file(files / "image.png"), None, KS[1], "gradcam", "fam",
                                       api_name="/explain")
    assert Image.open(top).size == Image.open(base).size == (384, 288)  # 64x48 shown at DISPLAY_MIN = 384 px
    assert report["family"] == "fam" and report["k"] == KS[1]
    assert set(report["models"]) == {f"k{KS[1]}", "baseline"}
    for m in report["models"].values():
        assert 0 <= m["probability"] <= 1 and 0 <= m["l1"] <= 1 and m["iou"] is None and m["label"]


def test_explain_with_mask(client, files):
    _, _, report = client.predict(handle_file(files / "image.png"), handle_file(files / "mask.png"), KS[0],
                                  "gradcam++", "fam", api_name="/explain")
    assert report["method"] == "gradcam++"
    for m in report["models"].values():
        assert 0 < m["iou"] <= 1 and 0 <= m["threshold"] <= 1 and 0 <= m["mass"] <= 1


def test_broken_file_errors_and_app_keeps_serving(client, files):
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(files / "broken.png"), None, KS[0], "gradcam", "fam", api_name="/explain")
    with pytest.raises(AppError, match="choose one of"):
        client.predict(handle_file(files / "image.png"), None, 5, "gradcam", "fam", api_name="/explain")
    with pytest.raises(AppError, match="unknown model family"):
        client.predict(handle_file(files / "image.png"), None, KS[0], "gradcam", "nope", api_name="/explain")
    _, _, report = client.predict(handle_file(files / "image.png"), None, KS[0], "gradcam", "fam",
                                  api_name="/explain")
    assert report["k"] == KS[0]


def test_checked_image_turns_decode_failures_into_gr_error(app_module, files):
    from gradio.data_classes import FileData

    with pytest.raises(gr.Error, match="not a readable image"):
        app_module.checked(gr.Image(type="pil", image_mode=None)).preprocess(FileData(path=str(files / "broken.png")))


def test_slider_handler_reads_state_only(app_module, files, monkeypatch):
    import topgap.explorer.explain as ex

    result = app_module.analyse("fam", Image.open(files / "image.png"), None, None, "gradcam", 0)[0]
    monkeypatch.setattr(ex, "topgap_cam", lambda *a, **k: pytest.fail("the slider must not run a model"))
    monkeypatch.setattr(ex, "baseline_cam", lambda *a, **k: pytest.fail("the slider must not run a model"))
    for i in range(len(KS)):
        slider, top, labels, *_ = app_module.switch_k(result, i)
        assert str(KS[i]) in slider["label"] and (np.asarray(Image.open(top)) == result.topgap[i].overlay).all()
    remasked = app_module.remask(result, Image.open(files / "mask.png"), None, 1)[0]
    assert remasked.has_mask
    paths = app_module.downloads(remasked, 1)
    assert {Path(p).suffix for p in paths} == {".png", ".npy", ".json"}
    assert all(Path(p).is_relative_to(app_module.DOWNLOADS) for p in paths)


def test_eight_clients_memory_flat(server, files):
    process, url = server

    def burst(n: int, errors: list):
        c = Client(url, verbose=False)
        for _ in range(n):
            try:
                _, _, r = c.predict(handle_file(files / "image.png"), handle_file(files / "mask.png"), KS[1],
                                    "gradcam", "fam", api_name="/explain")
                assert r["models"]
            except Exception as e:  # noqa: BLE001  (collected and reported by the test)
                errors.append(repr(e))

    def round_of(n: int) -> list:
        errors: list = []
        threads = [threading.Thread(target=burst, args=(n, errors)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return errors

    assert not round_of(5)  # warm-up: every code path, 8 sessions
    before = process.memory_info().rss
    errors = round_of(25)
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
