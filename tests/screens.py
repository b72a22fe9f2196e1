"""The docs' screenshots of the explorer, retaken: `make screens` (or `python tests/screens.py [--out DIR]`).

Serves `python app.py` on the bundled families (models/, the default family's first example as the first view) and
shoots it in Debian's Chromium through Playwright, as tests/test_browser.py does (`apt-get install -y chromium`,
`pip install playwright`; never `playwright install`):

- desktop.png: the first view at 1280 x 900 (the README's picture);
- phone.png: the first two screens at 390 x 844 (a phone);
- tab-<name>.png: each tab at 1280 px with its result (Bias and Card as they open, Attack after FGSM, Backgrounds
  after the swap, Audit after auditing three bundled examples with their masks), from the tabs down (at most
  2400 px), scaled to 960 px wide.

Each PNG is quantised to 256 colours (a screenshot has few), so the set stays around 1 MB of the tracked tree.
Not a test: pytest collects only test_*.py.
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appfamily import served_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
LONG = 180_000  # ms: real families on a shared 2-core machine
TAB_WIDTH = 960  # the tab shots are scaled to this width: the docs show them at most this wide
TABS = ("Explain", "Bias", "Attack", "Backgrounds", "Card", "Audit")


def save(shot: bytes, path: Path, width: int | None = None) -> None:
    """Write the PNG bytes `shot` to `path`, scaled to `width` px (None: as shot), quantised to 256 colours."""
    im = Image.open(io.BytesIO(shot)).convert("RGB")
    if width and im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
    im.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def first_view(page, url: str) -> None:
    page.goto(url)
    page.locator("#metrics").get_by_text("Top-GAP k").first.wait_for(timeout=LONG)
    page.wait_for_timeout(1500)  # the plots and images settle


def audit_zip(workdir: Path) -> Path:
    """A zip of three bundled examples with their masks (masks/<stem>.png), as the Audit tab takes them."""
    path = workdir / "audit.zip"
    with zipfile.ZipFile(path, "w") as z:
        for image in sorted((ROOT / "assets" / "images").glob("*-background-*.png"))[:3]:
            z.write(image, image.name)
            z.write(ROOT / "assets" / "masks" / image.name, f"masks/{image.name}")
    return path


def loaded(page) -> None:
    """Scroll through the page so that lazy images load, wait until every visible one has, back to the top."""
    height = page.evaluate("() => document.documentElement.scrollHeight")
    for y in range(0, height, 600):
        page.evaluate(f"() => window.scrollTo(0, {y})")
        page.wait_for_timeout(150)
    page.wait_for_function("() => [...document.images].filter(i => i.offsetParent !== null)"
                           ".every(i => i.complete && i.naturalWidth > 0)", timeout=LONG)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(500)


def tab_result(page, name: str, workdir: Path) -> None:
    """Open tab `name` and wait for its result."""
    page.get_by_role("tab", name=name, exact=True).click()
    wait = {"Bias": "#bias_table table", "Card": "#card"}
    if name == "Attack":
        page.get_by_role("button", name="Attack this image").click()
        wait["Attack"] = "#attack_md table, #attack_md p"
    elif name == "Backgrounds":
        page.locator("#swap_btn").click()
        wait["Backgrounds"] = "#swap_table table"
    elif name == "Audit":
        page.locator("#audit_files input[type=file]").set_input_files(str(audit_zip(workdir)))
        page.locator('#audit_files a[href*="/gradio_api/file="]').first.wait_for(timeout=LONG)
        page.locator("#audit_btn").click()
        wait["Audit"] = "#audit_table table"
    if name in wait:
        page.locator(wait[name]).first.wait_for(timeout=LONG)
    page.wait_for_timeout(1500)
    loaded(page)


def shoot(out: Path, models: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp, served_app(models, timeout=300) as (_, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        first_view(phone, url)
        save(phone.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": 390, "height": 2 * 844}),
             out / "phone.png")
        written.append(out / "phone.png")
        phone.close()
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        first_view(page, url)
        save(page.screenshot(), out / "desktop.png")
        written.append(out / "desktop.png")
        for name in TABS:
            tab_result(page, name, Path(tmp))
            top = page.get_by_role("tab", name=name, exact=True).bounding_box()["y"] - 16
            height = page.evaluate("() => document.documentElement.scrollHeight") - top
            path = out / f"tab-{name.lower()}.png"
            save(page.screenshot(full_page=True, clip={"x": 0, "y": top, "width": 1280, "height": min(height, 2400)}),
                 path, width=TAB_WIDTH)
            written.append(path)
        browser.close()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screens", help="where the PNGs go")
    parser.add_argument("--models", type=Path, default=ROOT / "models", help="the families to serve")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        sys.exit(f"{CHROMIUM} missing: apt-get install -y chromium")
    for path in shoot(args.out, args.models):
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
