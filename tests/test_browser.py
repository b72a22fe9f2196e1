"""End to end in Debian's Chromium (Playwright), as a new user meets the app (issue 12): the k control across
families, a mask tied to its image, errors next to their input, the model card, a phone layout.

Needs `pip install playwright` and `apt-get install -y chromium` (never `playwright install`); skips otherwise.
One served app and one browser for the module.
"""
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appfamily import CARD, KS, make_family, served_app

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
KS2 = (8, 32)  # a second family with fewer k: an index-based control would go out of range
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the PyPI package)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)
expect = sync_api.expect
LONG = 60_000
GREY = 128  # grey.png's value: the drawing editor's background in the stroke test


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    make_family(models, "fam", card=True)
    make_family(models, "fam2", ks=KS2)
    make_family(models, "pets-card", card=ROOT / "models" / "oxford-pet-lite0")  # the shipped card, tiny models
    make_family(models, "fam3", ks=KS2)  # loaded only by test_first_switch_to_a_family_says_loading_once
    with served_app(models, workdir=tmp_path_factory.mktemp("app")) as (_, address):  # its log: app/app.log
        yield address


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def page(browser, url, request):
    phone = "phone" in request.node.name
    pg = browser.new_page(viewport={"width": 390, "height": 844} if phone else {"width": 1440, "height": 900},
                          is_mobile=phone, has_touch=phone)
    pg.goto(url)
    expect(pg.locator("#k")).to_contain_text(str(KS[1]), timeout=LONG)
    expect(pg.locator("#metrics")).to_contain_text(f"Top-GAP k{KS[1]}", timeout=LONG)  # the first view is shown
    yield pg
    pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    pg.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(d / f"{name}.png")
    mask = np.zeros((96, 96), np.uint8)
    mask[20:70, 30:80] = 255
    Image.fromarray(mask).save(d / "mask.png")
    trimap = np.full((96, 96), 2, np.uint8)  # Oxford trimap: 1 object, 2 background, 3 boundary
    trimap[30:60, 30:60], trimap[28:30, 28:62] = 1, 3
    Image.fromarray(trimap).save(d / "trimap.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(d / "tiny.png")
    Image.fromarray(np.full((20, 60), 255, np.uint8)).save(d / "wide_mask.png")  # another aspect ratio
    Image.fromarray(np.full((96, 96, 3), GREY, np.uint8)).save(d / "grey.png")  # red strokes stand out on it
    return d


def upload(page, elem: str, path: Path, explained: bool = True):
    """Upload `path` into `elem`; for an image that is `explained`, wait until the metrics show its result (they
    showed another: the first view, or the previous image). The metrics' markdown is read, not the box: gradio's
    progress text ("queue: 1/1 | 0.5s") in the box changes before the result comes."""
    metrics = "#metrics [data-testid=markdown]"
    before = page.locator(metrics).inner_text() if elem == "image" and explained else None
    page.locator(f"#{elem} input[type=file]").set_input_files(str(path))
    if before is not None:
        page.wait_for_function("([m, t]) => !document.querySelector(m).innerText.includes(t)",
                               arg=[metrics, before[:200]], timeout=LONG)
        settled(page)  # the metrics also change for an event of the old image (the mask box emptied at once)


def settled(page):
    """Wait until no event runs or waits in the queue: gradio draws a progress text on the outputs of each."""
    for _ in range(2):
        page.wait_for_function("() => !document.querySelector('.progress-text, .eta-bar')", timeout=LONG)
        page.wait_for_timeout(300)


def uploaded(page, elem: str, name: str):
    """Wait until the file `name` of File component `elem` is on the server (its link points there), so that a
    click that sends it does not race the upload."""
    link = page.locator(f'#{elem} a[download="{name}"][href*="/gradio_api/file="]')
    expect(link).to_have_count(1, timeout=LONG)


def pick_family(page, name: str):
    page.locator("#family input").click()
    page.get_by_role("option", name=name, exact=True).click()


def no_error_badges(page):
    """No error or warning toast (an info toast, such as "loading family", is expected) and no error badge."""
    page.wait_for_timeout(500)
    bad = page.locator(".toast-body.error, .toast-body.warning")
    assert bad.count() == 0, bad.all_inner_texts()
    assert page.get_by_text("Error", exact=True).count() == 0


def test_k_control_speaks_k_across_families(page, files):
    upload(page, "image", files / "a.png")
    expect(page.locator("#metrics")).to_contain_text(f"k{KS[1]}", timeout=LONG)
    page.locator("#k").get_by_text(str(KS[-1]), exact=True).click()  # the largest k of fam (index 2)
    expect(page.locator("#metrics")).to_contain_text(f"k{KS[-1]}", timeout=LONG)
    expect(page.locator("#k")).to_contain_text(f"k = {KS[-1]}:")
    pick_family(page, "fam2")  # has only 2 k: the nearest trained k (32 for 64) is selected
    expect(page.locator("#metrics")).to_contain_text(f"k{KS2[-1]}", timeout=LONG)
    assert page.locator("#k input[type=radio]").count() == len(KS2)
    expect(page.locator("#k input[type=radio]:checked")).to_have_value(str(KS2[-1]))
    upload(page, "image", files / "b.png")  # every later action still works
    expect(page.locator("#metrics")).to_contain_text(f"k{KS2[-1]}", timeout=LONG)
    pick_family(page, "fam")  # back: the k last shown there, not the nearest to fam2's (issue 26: 1024 -> 288 -> 256)
    expect(page.locator("#k input[type=radio]:checked")).to_have_value(str(KS[-1]), timeout=LONG)
    page.locator("#k").get_by_text(str(KS[1]), exact=True).click()  # by nearest k alone: 16 -> 8 in fam2 -> 4 here
    expect(page.locator("#metrics")).to_contain_text(f"k{KS[1]}", timeout=LONG)
    pick_family(page, "fam2")
    expect(page.locator("#k input[type=radio]:checked")).to_have_value(str(KS2[-1]), timeout=LONG)
    pick_family(page, "fam")
    expect(page.locator("#k input[type=radio]:checked")).to_have_value(str(KS[1]), timeout=LONG)
    expect(page.locator("#downloads")).to_be_hidden()  # no tall empty box beside the button (issue 26 item 9)
    page.get_by_role("button", name="Prepare downloads").click()
    expect(page.locator("#downloads")).to_contain_text("report", timeout=LONG)
    button, box = (page.locator(f"#{e}").bounding_box() for e in ("dl_btn", "downloads"))
    assert box["y"] >= button["y"] + button["height"] - 1  # under the button
    upload(page, "image", files / "a.png")  # another image: the previous image's files go
    expect(page.locator("#downloads")).to_be_hidden(timeout=LONG)
    no_error_badges(page)


def test_mask_belongs_to_its_image(page, files):
    upload(page, "image", files / "a.png")
    expect(page.locator("#metrics")).to_contain_text("Upload or draw a mask", timeout=LONG)
    upload(page, "mask_upload", files / "mask.png")
    expect(page.locator("#metrics")).to_contain_text("uploaded mask", timeout=LONG)
    page.locator("#mask_view").scroll_into_view_if_needed()  # its picture loads lazily, once on screen
    expect(page.locator("#mask_view img")).to_be_visible()
    page.locator("#method input").click()
    page.get_by_role("option", name="gradcam++", exact=True).click()  # kept across a method change
    expect(page.locator("#metrics")).to_contain_text("baseline (gradcam++)", timeout=LONG)
    expect(page.locator("#metrics")).to_contain_text("uploaded mask")
    pick_family(page, "fam2")  # and across a family change (k 16 -> 8, the nearer trained k, smaller on ties)
    expect(page.locator("#metrics")).to_contain_text(f"k{KS2[0]}", timeout=LONG)
    expect(page.locator("#metrics")).to_contain_text("uploaded mask")
    upload(page, "image", files / "b.png")  # a new image: the old mask is not reused, and the user is told
    expect(page.locator("#mask_msg")).to_contain_text("previous image's mask was cleared", timeout=LONG)
    expect(page.locator("#metrics")).to_contain_text("Upload or draw a mask", timeout=LONG)
    expect(page.locator("#mask_upload img")).to_have_count(0)
    expect(page.locator("#mask_view img")).to_have_count(0)


def editor_strokes(page) -> int:
    """Red brush pixels (#ff0000) on grey.png in the drawing editor, once it shows the picture (while an event runs
    it is covered by gradio's progress overlay): counted in the grey picture's rows and columns only, so the
    toolbar's red colour swatch is not counted, with the pointer (a red brush circle) moved away."""
    page.locator("#mask").scroll_into_view_if_needed()
    page.mouse.move(0, 0)
    for _ in range(120):
        shot = np.asarray(Image.open(io.BytesIO(page.locator("#mask").screenshot())).convert("RGB")).astype(int)
        grey = (np.abs(shot - GREY) < 6).all(-1)
        rows, cols = np.nonzero(grey.sum(1) > 50)[0], np.nonzero(grey.sum(0) > 50)[0]
        if len(rows) > 50:
            box = shot[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            return int(((box[..., 0] > 150) & (box[..., 1] < 100) & (box[..., 2] < 100)).sum())
        page.wait_for_timeout(250)
    raise AssertionError("the drawing editor never showed grey.png")


def draw_stroke(page, shift: int = 0):
    """Drag the brush across the editor's middle, `shift` px lower (once its picture shows, without strokes) and
    wait until the drawing is the mask in use. Strokes an upload replaced are never used again, even drawn anew to
    the pixel: a stroke after them is shifted."""
    assert editor_strokes(page) == 0
    box = page.locator("#mask canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy - 40 + shift)
    page.mouse.down()
    for dx in range(-40, 41, 10):
        page.mouse.move(cx + dx, cy + dx / 2 + shift, steps=3)
    page.mouse.up()
    expect(page.locator("#metrics")).to_contain_text("using the drawn mask", timeout=LONG)


def test_a_drawn_stroke_replaced_by_an_uploaded_mask_is_cleared(page, files):
    """Issue 26 item 5: drawn strokes stayed on screen after an upload replaced them as the mask in use. The page
    clears them with the editor's own button and the editor gets its picture back; it keeps working after."""
    upload(page, "image", files / "grey.png")
    draw_stroke(page)
    assert editor_strokes(page) > 200
    upload(page, "mask_upload", files / "mask.png")
    expect(page.locator("#metrics")).to_contain_text("using the uploaded mask", timeout=LONG)
    for _ in range(40):
        if editor_strokes(page) == 0:
            break
        page.wait_for_timeout(250)
    assert editor_strokes(page) == 0, "the replaced drawing's strokes are still on screen"
    page.wait_for_timeout(1500)  # the cleared editor's own change events: the upload stays in use
    expect(page.locator("#metrics")).to_contain_text("using the uploaded mask")
    assert "processing" not in page.locator("#mask").inner_text()
    draw_stroke(page, shift=12)  # the editor still works: a new drawing replaces the upload
    assert editor_strokes(page) > 200
    no_error_badges(page)


def test_errors_next_to_their_input_once_and_outputs_kept(page, files):
    upload(page, "image", files / "a.png")
    expect(page.locator("#topgap_cam img")).to_be_visible(timeout=LONG)
    upload(page, "mask_upload", files / "mask.png")
    expect(page.locator("#metrics")).to_contain_text("uploaded mask", timeout=LONG)
    upload(page, "mask_upload", files / "wide_mask.png")  # another image's mask: refused, as /explain does
    expect(page.locator("#mask_msg")).to_contain_text("the mask is 60x20 (aspect ratio 3.00)", timeout=LONG)
    upload(page, "mask_upload", files / "mask.png")
    expect(page.locator("#metrics")).to_contain_text("uploaded mask", timeout=LONG)
    upload(page, "mask_upload", files / "broken.png")  # a bad mask: said by the mask, the old IOU goes
    expect(page.locator("#mask_msg")).to_contain_text("mask could not be used", timeout=LONG)
    expect(page.locator("#metrics")).to_contain_text("Upload or draw a mask")
    upload(page, "image", files / "broken.png", explained=False)  # a bad image: said once by the image, the CAMs stay
    expect(page.locator("#image_msg")).to_contain_text("upload it again", timeout=LONG)
    page.wait_for_timeout(1500)
    assert page.get_by_text("Still showing the previous image").count() == 1  # once, not a toast per event
    expect(page.locator("#topgap_cam img")).to_be_visible()
    upload(page, "image", files / "tiny.png", explained=False)  # 1x1: refused, not "explained" (issue 26)
    expect(page.locator("#image_msg")).to_contain_text("The image is 1x1 px, too small to explain", timeout=LONG)
    # the box shows the image whose results are on screen (96x96 a.png), not the refused 1x1 picture (issue 26 item 9)
    page.wait_for_function("() => { const i = document.querySelector('#image img'); return i && i.complete && "
                           "i.naturalWidth === 96 && i.naturalHeight === 96; }", timeout=LONG)
    no_error_badges(page)


def test_trimap_shown_visibly(page, files):
    upload(page, "image", files / "a.png")
    expect(page.locator("#topgap_cam img")).to_be_visible(timeout=LONG)
    upload(page, "mask_upload", files / "trimap.png")
    expect(page.locator("#metrics")).to_contain_text("trimap", timeout=LONG)
    view = page.locator("#mask_view img")
    page.locator("#mask_view").scroll_into_view_if_needed()  # lazy loading
    expect(view).to_be_visible()
    page.wait_for_function("document.querySelector('#mask_view img').naturalWidth > 0")
    green = page.evaluate("""() => { const img = document.querySelector('#mask_view img');
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const p = g.getImageData(Math.round(c.width * 45 / 96), Math.round(c.height * 45 / 96), 1, 1).data;
        return [p[0], p[1], p[2]]; }""")
    assert green[1] > 110 and green[1] > green[0] + 30, green  # the object (value 1) is a visible green


def test_model_card_from_schema_with_plots(page):
    page.get_by_role("tab", name="Card").click()
    card = page.locator("#card")
    title = json.loads((CARD / "card.json").read_text())["title"]
    expect(card).to_contain_text(title, timeout=LONG)
    expect(card).to_contain_text("The promise")  # the summary first: what reproduces and what does not
    assert card.locator("table").count() == 0  # the tables are in the details
    page.get_by_text("Details: every figure, the training, the commands").click()
    details = page.locator("#card_details")
    expect(details.locator("table").first.locator("th").first).to_have_text("metric", timeout=LONG)
    evaluation = details.locator("table").filter(has=page.locator("th", has_text="ROAD")).first
    expect(evaluation.locator("th").first).to_have_text("model")
    imgs = page.locator("#card_plots img")
    expect(imgs.first).to_be_visible(timeout=LONG)
    n_plots = len(json.loads((CARD / "card.json").read_text())["plots"])
    assert imgs.count() == n_plots  # every plot the card lists, none broken
    for i in range(n_plots):
        imgs.nth(i).scroll_into_view_if_needed()
        page.wait_for_function(f"document.querySelectorAll('#card_plots img')[{i}].naturalWidth > 0")
    fits = imgs.evaluate_all("els => els.map(e => getComputedStyle(e).objectFit)")
    assert set(fits) == {"contain"}, fits
    row = evaluation.locator("tbody tr").first  # one line per row, not wrapped letter by letter
    assert row.bounding_box()["height"] < 60


def test_phone_layout(page, files):
    tabs = ["Explain", "Bias", "Attack", "Backgrounds", "Card", "Audit"]
    expect(page.get_by_role("tab", name="Explain")).to_be_visible()
    for tab in tabs:  # every tab in sight, none behind gradio's "More tabs" menu (issue 26)
        expect(page.get_by_role("tab", name=tab)).to_be_in_viewport()
    assert page.get_by_role("button", name="More tabs").count() == 0
    thumbs = page.locator(".examples img")  # examples as thumbnails of the images (the masks load with them)
    expect(thumbs.first).to_be_visible()
    before = page.locator("#metrics").inner_text()
    thumbs.nth(1).click()  # the second example (a square on its usual background), with its mask
    page.wait_for_function("(t) => !document.querySelector('#metrics').innerText.includes(t)", arg=before[:200],
                           timeout=LONG)
    expect(page.locator("#metrics")).to_contain_text("uploaded mask", timeout=LONG)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"page scrolls sideways: {width} px"
    ys = [page.locator(f"#{e}").bounding_box()["y"] for e in ("image", "topgap_cam", "baseline_cam", "metrics")]
    assert ys == sorted(ys), ys  # image, maps and metrics in reading order
    dd = page.locator("#family").bounding_box()
    assert dd["width"] >= 300
    lines = page.evaluate("""() => [...document.querySelectorAll('#metrics td')]
        .filter(td => /^[0-9.]+$/.test(td.innerText.trim())).map(td => {
            const r = document.createRange(); r.selectNodeContents(td); return r.getClientRects().length; })""")
    assert lines and set(lines) == {1}, lines  # figures on one line each (names may wrap between words)


def test_size_prior_assistant(page, files):
    upload(page, "image", files / "a.png")
    expect(page.locator("#metrics")).to_contain_text(f"k{KS[1]}", timeout=LONG)
    upload(page, "mask_upload", files / "mask.png")
    expect(page.locator("#metrics")).to_contain_text("uploaded mask", timeout=LONG)
    page.get_by_role("tab", name="Bias").click()
    # 50x50 of 96x96 pixels = 27.1%: 0.2713 * 16 * 16 = 69.4 cells, nearest trained k 64
    expect(page.locator("#size_advice")).to_contain_text("27.1% of the image (uploaded mask)", timeout=LONG)
    expect(page.locator("#size_advice")).to_contain_text("69.4 of the 16x16 = 256")
    expect(page.locator("#bias_plot")).to_be_visible()
    box = page.locator("#size_fraction textarea, #size_fraction input").first
    expect(box).to_have_value("")  # empty: the size comes from the mask
    box.fill("1.5")
    box.press("Enter")
    expect(page.locator("#size_advice")).to_contain_text("The object size must be between 0 and 1", timeout=LONG)
    box.fill("0.02")
    box.press("Enter")
    expect(page.locator("#size_advice")).to_contain_text("2.0% of the image (typed size)", timeout=LONG)
    page.get_by_role("button", name="Use the nearest trained k").click()
    expect(page.locator("#k input[type=radio]:checked")).to_have_value(str(KS[0]), timeout=LONG)
    expect(page.locator("#size_advice")).to_contain_text(f"k = {KS[0]}")
    no_error_badges(page)


def test_batch_audit_table_csv_and_bad_zip(page, files, tmp_path):
    with zipfile.ZipFile(tmp_path / "batch.zip", "w") as z:
        for name, member in (("a.png", "a.png"), ("b.png", "b.png"), ("mask.png", "masks/a.png")):
            z.write(files / name, member)
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not a zip")
    page.get_by_role("tab", name="Audit").click()
    upload(page, "audit_files", tmp_path / "batch.zip")
    uploaded(page, "audit_files", "batch.zip")
    page.locator("#audit_btn").click()
    expect(page.locator("#audit_msg")).to_contain_text("2 images (1 with a mask)", timeout=LONG)
    table = page.locator("#audit_table")
    expect(table.locator("td").filter(has_text="yes").first).to_be_visible()  # a.png's mask
    expect(table.get_by_role("row")).to_have_count(1 + 2 * (len(KS) + 1))  # header, every k and the baseline per image
    with page.expect_download() as dl:
        page.locator("#audit_csv a").first.click()
    lines = Path(dl.value.path()).read_text().splitlines()
    assert lines[0].startswith("image,mask,model,kind,k,label") and len(lines) == 1 + 2 * (len(KS) + 1)
    no_error_badges(page)
    page.locator("#audit_files").get_by_role("button", name="Clear").click()
    upload(page, "audit_files", tmp_path / "junk.zip")
    uploaded(page, "audit_files", "junk.zip")
    page.locator("#audit_btn").click()
    expect(page.locator("#audit_msg")).to_contain_text("Audit refused: junk.zip is not a readable zip file",
                                                       timeout=LONG)


def test_backgrounds_tab_every_model_on_every_background(page, files):
    upload(page, "image", files / "a.png")
    expect(page.locator("#metrics")).to_contain_text(f"k{KS[1]}", timeout=LONG)
    page.get_by_role("tab", name="Backgrounds").click()
    page.get_by_role("button", name="Swap the background").click()
    expect(page.locator("#swap_md")).to_contain_text("upload or draw a mask of the object in the Explain tab",
                                                     timeout=LONG)
    page.get_by_role("tab", name="Explain").click()
    upload(page, "mask_upload", files / "mask.png")
    expect(page.locator("#metrics")).to_contain_text("uploaded mask", timeout=LONG)
    page.get_by_role("tab", name="Backgrounds").click()
    upload(page, "bg_photo", files / "b.png")
    expect(page.locator('#bg_photo img[src*="/gradio_api/file="]')).to_have_count(1, timeout=LONG)  # on the server
    page.get_by_role("button", name="Swap the background").click()
    variants = ["original", "on brick", "on grass", "on gravel", "on your photo", "on grey", "no_fg", "only_bg_t"]
    expect(page.locator("#swap_table")).to_contain_text("only_bg_t", timeout=LONG)
    for v in variants:
        expect(page.locator("#swap_table")).to_contain_text(v)
    expect(page.locator("#swap_table")).to_contain_text("baseline (gradcam)")
    expect(page.locator("#swap_gallery img")).to_have_count(len(variants) * (1 + len(KS) + 1), timeout=LONG)
    expect(page.locator("#swap_md")).to_contain_text("same label on other backgrounds")
    expect(page.locator("#swap_gallery")).to_contain_text("on your photo · baseline (gradcam):")
    no_error_badges(page)


def test_faithfulness_road_per_image(page, files):
    page.get_by_role("tab", name="Bias").click()
    page.locator("#faith_btn").click()  # the first view's example (without an image: tests/test_app.py)
    expect(page.locator("#faith_md tbody tr")).to_have_count(len(KS) + 1, timeout=LONG)
    page.get_by_role("tab", name="Explain").click()
    upload(page, "image", files / "a.png")
    expect(page.locator("#metrics")).to_contain_text(f"k{KS[1]}", timeout=LONG)
    page.get_by_role("tab", name="Bias").click()
    page.locator("#faith_btn").click()
    rows = page.locator("#faith_md tbody tr")
    expect(rows).to_have_count(len(KS) + 1, timeout=LONG)  # one ROAD row per model, the baseline included
    assert [r.locator("td").first.inner_text() for r in rows.all()] == [f"k{k}" for k in KS] + ["baseline"]
    expect(page.locator("#faith_plot")).to_be_visible()
    no_error_badges(page)


def test_protocol_toggle_and_wipe_slider(page, files):
    """Issue 26 item 3: the own CAM's post-processing is chosen on the page and said in the metrics; the baseline's
    map stays; the wipe slider shows both maps of the chosen k."""
    upload(page, "image", files / "a.png")
    expect(page.locator("#metrics")).to_contain_text("Own CAM: ReLU, then min-max", timeout=LONG)
    base = page.locator("#baseline_cam img").get_attribute("src")
    page.locator("#protocol").get_by_text("min-max of the raw map", exact=False).click()
    # the fake family's class maps are positive everywhere, so both protocols draw the same own map here; that they
    # differ where the map has negative cells is tests/test_explain.py's
    expect(page.locator("#metrics")).to_contain_text("Own CAM: min-max of the raw map", timeout=LONG)
    assert page.locator("#baseline_cam img").get_attribute("src") == base
    page.get_by_text("Wipe between the own CAM").click()
    expect(page.locator("#wipe img")).to_have_count(2, timeout=LONG)
    no_error_badges(page)


def _bottom(page, selector: str) -> float:
    box = page.locator(selector).bounding_box()
    return box["y"] + box["height"]


def test_first_view_explains_itself(page):
    """Issue 26 item 2, desktop: pitch with the paper's title, colour bar, the first example's image, both maps and
    their figures above the fold without a click."""
    expect(page.locator("#pitch")).to_contain_text("Top-GAP: Integrating Size Priors in CNNs")
    expect(page.locator("#colour_bar")).to_contain_text("CAM low")
    for elem in ("#image img", "#topgap_cam img", "#baseline_cam img", "#metrics table"):
        expect(page.locator(elem).first).to_be_visible()
        assert _bottom(page, elem) <= 900, elem
    no_error_badges(page)


def test_first_view_on_a_phone(page):
    """Issue 26 items 2 and 6, phone: image, both maps side by side and the metrics within two screens; the page and
    the metrics table no wider than the screen (no inner scroll, no column hidden)."""
    for elem in ("#image img", "#topgap_cam img", "#baseline_cam img", "#metrics table"):
        assert _bottom(page, elem) <= 2 * 844, elem
    own, base = page.locator("#topgap_cam").bounding_box(), page.locator("#baseline_cam").bounding_box()
    assert abs(own["y"] - base["y"]) < 5 and own["x"] + own["width"] <= base["x"] + 1  # side by side
    widths = page.evaluate("""() => [document.documentElement.scrollWidth,
        ...[...document.querySelectorAll('#metrics table')].map(t => t.scrollWidth - t.clientWidth)]""")
    assert widths[0] <= 390 and all(w <= 0 for w in widths[1:]), widths


def test_scorecam_keeps_the_topgap_maps_and_follows(page, files):
    """Issue 26 item 5: ScoreCAM runs in its own queue: the Top-GAP map and the k control stay on screen, the
    metrics say it is computing, then its map and figures arrive."""
    upload(page, "image", files / "a.png")
    page.locator("#method input").click()
    page.get_by_role("option", name="scorecam", exact=True).click()
    expect(page.locator("#metrics")).to_contain_text("baseline (scorecam)", timeout=LONG)
    expect(page.locator("#topgap_cam img")).to_be_visible()
    expect(page.locator("#k")).to_be_visible()
    expect(page.locator("#metrics")).not_to_contain_text("computing", timeout=LONG)
    expect(page.locator("#baseline_cam img")).to_be_visible()
    no_error_badges(page)


def test_every_tab_fits_a_phone(page, files):  # "phone" in the name: a 390 px page
    """Issue 26 items 6 and 4: on every tab at 390 px (each with its result), the page does not scroll sideways, no
    table hides a column behind an inner scroll, no word in a table is broken across lines, and no gallery scrolls
    inside itself (every row and caption in the page)."""
    overflow = """() => [document.documentElement.scrollWidth, ...[...document.querySelectorAll('table')]
        .filter(t => t.offsetParent !== null).map(t => {
            const box = t.parentElement;
            return Math.max(t.scrollWidth - t.clientWidth, box.scrollWidth - box.clientWidth);
        })]"""
    broken = """() => [...document.querySelectorAll('td, th')].filter(c => c.offsetParent !== null).flatMap(c => {
        const out = [];
        for (const node of c.childNodes) {
            if (node.nodeType !== 3) continue;
            for (const m of node.textContent.matchAll(/\\S+/g)) {
                const r = document.createRange(); r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
                if (new Set([...r.getClientRects()].map(x => Math.round(x.top))).size > 1) out.push(m[0]);
            }
        }
        return out; })"""
    inner_scroll = """() => [...document.querySelectorAll('.gallery-container *, [id$=_gallery] *, #card_plots *')]
        .filter(e => e.offsetParent !== null && ['auto', 'scroll'].includes(getComputedStyle(e).overflowY)
                && e.scrollHeight > e.clientHeight + 1).map(e => e.className).concat(
            [...document.querySelectorAll('[id$=_gallery] .caption-label')].filter(e => e.offsetParent !== null
                && e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)).concat(
            [...document.querySelectorAll('[id$=_gallery] .thumbnail-item')].filter(e => e.offsetParent !== null
                && e.getBoundingClientRect().right > window.innerWidth).map(() => "a thumbnail off screen"))"""
    upload(page, "image", files / "a.png")
    upload(page, "mask_upload", files / "mask.png")
    expect(page.locator("#metrics")).to_contain_text("uploaded mask", timeout=LONG)
    results = {"Attack": ("Attack this image", "#attack_md table"), "Backgrounds": ("Swap the background",
                                                                               "#swap_table table")}
    for name in ("Explain", "Bias", "Attack", "Backgrounds", "Card", "Audit"):
        page.get_by_role("tab", name=name).click()
        if name in results:
            button, shown = results[name]
            page.get_by_role("button", name=button).click()
            expect(page.locator(shown)).to_be_visible(timeout=LONG)
        page.wait_for_timeout(800)
        if name == "Card":
            page.get_by_text("Details: every figure, the training, the commands").click()
            page.wait_for_timeout(500)
        widths = page.evaluate(overflow)
        assert widths[0] <= 390 and all(w <= 1 for w in widths[1:]), (name, widths)
        assert page.evaluate(broken) == [], name
        assert page.evaluate(inner_scroll) == [], name


def test_first_switch_to_a_family_says_loading_once(page):
    """Issue 26 item 9: the first switch to another family showed its "Loading model family" toast twice."""
    page.evaluate("""() => { window.loadingToasts = 0; new MutationObserver((records) => { for (const r of records)
        for (const n of r.addedNodes) if (n.nodeType === 1 && (n.matches('.toast-body') ? [n] :
            n.querySelectorAll('.toast-body')).length && n.textContent.includes('Loading model family fam3'))
            window.loadingToasts += 1; }).observe(document.body, {childList: true, subtree: true}); }""")
    pick_family(page, "fam3")
    expect(page.locator("#k input[type=radio]")).to_have_count(len(KS2), timeout=LONG)
    page.wait_for_timeout(2000)
    assert page.evaluate("window.loadingToasts") == 1


def test_the_shipped_pets_card_reads_summary_first(page):
    """Issue 26 item 7 on the real card (models/oxford-pet-lite0): the promise and what does not reproduce come
    first, without tables; no path of the machine that made it; every plot loads; nothing overflows the page."""
    pick_family(page, "pets-card")
    page.get_by_role("tab", name="Card").click()
    card = page.locator("#card")
    expect(card).to_contain_text("The promise", timeout=LONG)
    text = card.inner_text()
    assert card.locator("table").count() == 0 and "../shared" not in text and "runs/" not in text
    assert text.index("The promise") < 3000, "the summary is not near the top"
    imgs = page.locator("#card_plots img")
    expect(imgs.first).to_be_visible(timeout=LONG)
    for i in range(imgs.count()):
        imgs.nth(i).scroll_into_view_if_needed()
        page.wait_for_function(f"document.querySelectorAll('#card_plots img')[{i}].naturalWidth > 0")
    page.get_by_text("Details: every figure, the training, the commands").click()
    expect(page.locator("#card_details table").first).to_be_visible(timeout=LONG)
    assert "../shared" not in page.locator("#card_details").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 1440
