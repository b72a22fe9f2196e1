"""End to end in Debian's Chromium (Playwright): upload, overlays, k slider, mask upload + IOU, drawing, error toast.

Needs `pip install playwright` and `apt-get install -y chromium` (never `playwright install`); skips otherwise.
"""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appfamily import KS, make_family, served_app

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the PyPI package)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    make_family(models, "fam")
    with served_app(models) as (_, address):
        yield address


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(d / "image.png")
    mask = np.zeros((96, 96), np.uint8)
    mask[20:70, 30:80] = 255
    Image.fromarray(mask).save(d / "mask.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    return d


def test_browser_flow(url, files):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        try:
            page.goto(url)
            expect = sync_api.expect
            page.locator("#image input[type=file]").set_input_files(str(files / "image.png"))
            expect(page.locator("#topgap_cam img")).to_be_visible(timeout=60_000)
            expect(page.locator("#baseline_cam img")).to_be_visible(timeout=60_000)
            expect(page.locator("#metrics")).to_contain_text("Upload or draw a mask", timeout=30_000)

            before = page.locator("#topgap_cam img").get_attribute("src")
            slider = page.locator("#k input[type=range]")
            slider.fill(str(len(KS) - 1))
            expect(page.locator("#metrics")).to_contain_text(f"k{KS[-1]}", timeout=30_000)
            expect(page.locator("#k")).to_contain_text(f"k = {KS[-1]}")
            assert page.locator("#topgap_cam img").get_attribute("src") != before

            page.locator("#mask_upload input[type=file]").set_input_files(str(files / "mask.png"))
            expect(page.locator("#metrics")).not_to_contain_text("Upload or draw a mask", timeout=30_000)
            iou = page.locator("#metrics table tbody tr").first.locator("td").nth(3).inner_text()
            assert 0 < float(iou) <= 1

            canvas = page.locator("#mask canvas").first
            expect(canvas).to_be_visible(timeout=30_000)
            page.wait_for_timeout(1500)  # the background image is drawn into the editor
            box = canvas.bounding_box()
            cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(cx - 40, cy - 40)
            page.mouse.down()
            for dx in range(-40, 41, 10):
                page.mouse.move(cx + dx, cy + dx / 2, steps=3)
            page.mouse.up()
            expect(page.locator("#metrics")).to_contain_text("using the drawn mask", timeout=30_000)

            page.locator("#image button[aria-label='Clear']").first.click() if page.locator(
                "#image button[aria-label='Clear']").count() else None
            page.locator("#image input[type=file]").set_input_files(str(files / "broken.png"))
            expect(page.get_by_text("not a readable image").first).to_be_visible(timeout=30_000)
        finally:
            page.screenshot(path=str(ARTIFACTS / "browser_flow.png"), full_page=True)
            browser.close()
