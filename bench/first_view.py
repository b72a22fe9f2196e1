"""Time from navigation to the explorer's first view in Chromium: the example image, both maps and the metrics
table on the page, at 1280 x 900 (desktop) and 390 x 844 (a phone), with the app started cold and warm.

- cold: a fresh `python app.py`; the page is opened as soon as it answers (so the first view, computed in the
  background once it serves, is waited for); also timed from the process start;
- warm: the same server opened again by a new visitor (a fresh browser context: nothing cached in the browser), the
  first view cached on the server.

Each figure is the median of --repeats runs (a fresh server per cold run). Debian's Chromium through Playwright, as
tests/test_browser.py (`apt-get install -y chromium`, `pip install playwright`; never `playwright install`):

    python bench/first_view.py [--family models/oxford-pet-lite0] [--repeats 3] [--out bench/results/first_view.json]

An image below the screen that the page loads lazily counts once it has its source (a phone shows the first screen).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from timing import write_result  # noqa: E402  (bench/ is on sys.path when run as a script)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORTS = {"desktop": dict(viewport={"width": 1280, "height": 900}),
             "phone": dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)}
TIMEOUT_S = 300
# the first view is on the page: the image, both maps (with a source from the server; decoded when on screen, or
# lazy below it) and the metrics table
SHOWN = """() => {
    const ready = (sel) => {
        const img = document.querySelector(sel);
        if (!img || !img.getAttribute('src')) return false;
        const r = img.getBoundingClientRect();
        const on_screen = r.top < window.innerHeight && r.bottom > 0;
        return (img.complete && img.naturalWidth > 0) || (!on_screen && img.loading === 'lazy');
    };
    return ['#image img', '#topgap_cam img', '#baseline_cam img'].every(ready)
        && document.querySelector('#metrics table') !== null;
}"""


def start_app(models: Path, family: str | None) -> tuple[subprocess.Popen, str, float]:
    """`python app.py` serving `models` on a free port; returns (process, url, perf_counter at its start) once its
    page answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TOPGAP_MODELS": str(models), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", **({"TOPGAP_DEFAULT_FAMILY": family} if family else {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return proc, url, t0
        except OSError:
            if proc.poll() is not None or time.perf_counter() - t0 > TIMEOUT_S:
                proc.kill()
                raise RuntimeError("app.py did not start") from None
            time.sleep(0.05)


def first_view_s(browser, url: str, kind: str) -> float:
    """Seconds from navigating a fresh browser context (VIEWPORTS[kind]) to `url` until the first view is shown."""
    context = browser.new_context(**VIEWPORTS[kind])
    try:
        page = context.new_page()
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function(SHOWN, polling=50, timeout=TIMEOUT_S * 1000)
        return time.perf_counter() - t0
    finally:
        context.close()


def measure(models: Path, family: str | None, repeats: int) -> dict:
    """Per viewport: cold (navigation, and process start, to the first view) and warm (navigation to it), medians
    of `repeats` runs with every run listed."""
    from playwright.sync_api import sync_playwright

    runs = {kind: {"cold_s": [], "cold_from_process_start_s": [], "warm_s": []} for kind in VIEWPORTS}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for _ in range(repeats):
                for kind, r in runs.items():
                    proc, url, started = start_app(models, family)
                    try:
                        t_nav = time.perf_counter()
                        cold = first_view_s(browser, url, kind)
                        r["cold_s"].append(round(cold, 3))
                        r["cold_from_process_start_s"].append(round(t_nav + cold - started, 3))
                        r["warm_s"].append(round(first_view_s(browser, url, kind), 3))
                    finally:
                        proc.terminate()
                        proc.wait(timeout=30)
        finally:
            browser.close()
    out = {}
    for kind, r in runs.items():
        out[kind] = {"viewport": VIEWPORTS[kind]["viewport"],
                     **{name: round(statistics.median(values), 3) for name, values in r.items()},
                     "runs": r}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", type=Path, default=None,
                   help="a family folder, served as the default family with its siblings (default: the app's own "
                        "default under models/)")
    p.add_argument("--repeats", type=int, default=3, help="runs per viewport, cold (a fresh server each) and warm")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "first_view.json"),
                   help="the JSON written (atomically)")
    args = p.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        sys.exit(f"{CHROMIUM} missing: apt-get install -y chromium")
    models = args.family.resolve().parent if args.family else ROOT / "models"
    result = {"family": str(args.family) if args.family else "the app's default", "repeats": args.repeats,
              **measure(models, args.family.name if args.family else None, args.repeats)}
    write_result(result, args.out)


if __name__ == "__main__":
    main()
