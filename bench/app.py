"""App performance: cold start, upload to all-k results, k change, Top-GAP CAM vs GradCAM, memory.

Goals (issues 5, 12 and 13): cold start (to the first HTTP 200; families load on first use) <= 10 s (issue 13:
<= 15 s); upload to all k <= 1.0 s (default zoo, 2 cores); k change <= 50 ms
server time; Top-GAP CAM / GradCAM on the baseline <= 0.5; RSS <= 1.5 GB after the heaviest session (issue 26: every
family, every tab: explain with a mask, ScoreCAM, bias plot, ROAD, attack, backgrounds, downloads, card, an audit of 64
images); issue 13: slider <= 100 ms, peak RSS <= 2 GB, 8 clients x 25 /explain calls with 0 errors and the server's
RSS growing < 10%; issue 26: another client's /explain answered while a ScoreCAM request runs (its time beside the
time alone). Medians in one run, printed as JSON:

    python bench/app.py [--family models/synth] [--repeats 7] [--clients 8 --requests 25]
    python bench/app.py --family models/oxford-pet-lite0 --start-only --repeats 5   # cold start only: medians of 5

Without --family a random-weight resnet18 family (k 4, 16, 64 + baseline, 64x64 inputs) is made in a temp dir.
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from timing import median_time, write_result  # noqa: E402  (bench/ is on sys.path when run as a script)

GOALS = {"cold_start_s": 15.0, "upload_to_all_k_s": 1.0, "k_change_s": 0.1, "cam_ratio": 0.5,  # at most
         "rss_after_heaviest_session_mb": 1536, "peak_rss_mb": 2048, "load_errors": 0, "rss_growth_pct": 10}
AUDIT_IMAGES = 64


def cold_start(models: Path, family: str, image: Path | None = None) -> tuple[float, float | None]:
    """Seconds from `python app.py` to the first HTTP 200, and (given an image) to the first /explain answer
    (families load on first use, so that one includes loading and warming up the default family)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TOPGAP_MODELS": str(models), "TOPGAP_DEFAULT_FAMILY": family,
           "GRADIO_SERVER_PORT": str(port)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200:
                    first = time.perf_counter() - t0
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 180:
                    raise RuntimeError("app.py did not start") from None
                time.sleep(0.1)
        if image is None:
            return first, None
        from gradio_client import Client, handle_file

        Client(f"http://127.0.0.1:{port}/", verbose=False).predict(handle_file(image), api_name="/explain")
        return first, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def load(models: Path, image: Path, mask: Path, clients: int, requests: int) -> dict:
    """A served app under `clients` x `requests` /explain calls (with a mask), after a warm-up round of 5 each:
    errors, seconds, the server's RSS before and after (growth in %) and its peak RSS (VmHWM)."""
    import psutil
    from appfamily import client_bursts, served_app

    with served_app(models) as (proc, url):
        server = psutil.Process(proc.pid)
        warm_errors = client_bursts(url, image, mask, clients, 5)
        before, t0 = server.memory_info().rss, time.perf_counter()
        errors = client_bursts(url, image, mask, clients, requests)
        seconds, after = time.perf_counter() - t0, server.memory_info().rss
        peak = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                    if line.startswith("VmHWM"))
    return {"clients": clients, "requests_each": requests, "errors": len(errors) + len(warm_errors),
            "first_error": (errors + warm_errors or [None])[0], "seconds": round(seconds, 1),
            "rss_before_mb": round(before / 2**20, 1), "rss_after_mb": round(after / 2**20, 1),
            "rss_growth_pct": round(100 * (after / before - 1), 1), "server_peak_rss_mb": round(peak / 1024, 1)}


def scorecam_two_clients(models: Path, image: Path) -> dict:
    """A served app: client B's /explain (GradCAM) alone, then while client A's ScoreCAM /explain runs. Seconds of
    each, and whether B was answered before A (the ordering the issue asks for)."""
    from appfamily import served_app
    from gradio_client import Client, handle_file

    with served_app(models) as (_, url):
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        b.predict(handle_file(image), api_name="/explain")  # warm: the family loads on first use
        t0 = time.perf_counter()
        b.predict(handle_file(image), api_name="/explain")
        alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = a.submit(handle_file(image), method="scorecam", api_name="/explain")
        time.sleep(0.5)  # A is in its slow part
        t1 = time.perf_counter()
        b.predict(handle_file(image), api_name="/explain")
        during, b_done = time.perf_counter() - t1, slow.done()
        slow.result(timeout=600)
        scorecam = time.perf_counter() - t0
    return {"gradcam_explain_alone_s": round(alone, 2), "gradcam_explain_during_scorecam_s": round(during, 2),
            "scorecam_explain_s": round(scorecam, 2), "answered_before_scorecam": not b_done}


def _vm_hwm_mb() -> float:
    """This process's peak RSS since the last _reset_peak (VmHWM, Linux)."""
    line = next(li for li in Path("/proc/self/status").read_text().splitlines() if li.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: '5' to clear_refs), so that each step's own peak can be read."""
    Path("/proc/self/clear_refs").write_text("5")


def heaviest_session(ex, image: Path, mask: Path, folder: Path) -> dict[str, float]:
    """Every family through every tab as one visitor would: explain with a mask, every k, ScoreCAM (its slow
    queue), the size prior, ROAD, PGD, backgrounds, downloads, the card, and an audit of AUDIT_IMAGES images.
    Returns each step's peak RSS in MB (the larger over families): which step sets the session's peak."""
    from topgap.explorer.explain import PGD_RULE

    rng = np.random.default_rng(1)
    batch = folder / "audit"
    batch.mkdir(exist_ok=True)
    for i in range(AUDIT_IMAGES):
        Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8)).save(batch / f"{i:02d}.jpg")
    peaks: dict[str, float] = {}

    def step(name, fn, *args):
        _reset_peak()
        out = fn(*args)
        peaks[name] = round(max(peaks.get(name, 0.0), _vm_hwm_mb()), 1)
        return out

    for name in ex.families:
        s = step("explain", ex.update, name, str(image), str(mask), None, "gradcam", 16, None)[0]
        for k in s.result.ks:
            step("k_change", ex.switch_k, s, k)
        slow = step("scorecam_fast_part", ex.update, name, str(image), str(mask), None, "scorecam", s.result.ks[-1],
                    s)[0]
        step("scorecam", ex.complete_baseline, slow, s.result.ks[-1])
        step("size_prior", ex.size_view, s, s.result.ks[-1], None)
        step("road", ex.faithfulness_view, s, s.result.ks[-1])
        step("pgd", ex.robustness, name, s, s.result.ks[0], "pgd", 2, PGD_RULE)
        step("backgrounds", ex.backgrounds_view, s, None)
        step("downloads", ex.downloads, s, s.result.ks[0])
        step("card", ex.model_card, name)
        step("audit", ex.audit, name, "gradcam", sorted(str(f) for f in batch.iterdir()), _NoProgress())
    return peaks


class _NoProgress:
    def tqdm(self, items, **_):
        return items


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", type=Path, help="a family folder (default: a random-weight test family)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None, help="also write the JSON here (e.g. bench/results/app.json)")
    p.add_argument("--clients", type=int, default=8, help="load: concurrent gradio_client sessions (0: skip)")
    p.add_argument("--requests", type=int, default=25, help="load: /explain calls per client")
    p.add_argument("--start-only", action="store_true", help="only the cold start and the start to the first "
                   "/explain, each the median of --repeats fresh starts (every start listed)")
    args = p.parse_args()
    if args.family is None:
        from appfamily import make_family
        args.family = make_family(Path(tempfile.mkdtemp()), "bench")
    os.environ["TOPGAP_MODELS"] = str(args.family.parent)
    os.environ["TOPGAP_DEFAULT_FAMILY"] = args.family.name

    import torch

    from topgap.cam import baseline_cam, topgap_cam
    from topgap.explorer.explain import explain_all

    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    folder = Path(tempfile.mkdtemp())
    Image.fromarray(image).save(folder / "image.png")
    if args.start_only:
        runs = [cold_start(args.family.parent, args.family.name, folder / "image.png") for _ in range(args.repeats)]
        write_result({"goals": {"cold_start_s": GOALS["cold_start_s"]}, "family": str(args.family),
                      "cold_start_s": round(statistics.median(r[0] for r in runs), 3),
                      "start_to_first_explain_s": round(statistics.median(r[1] for r in runs), 3),
                      "cold_start_runs_s": [round(r[0], 3) for r in runs],
                      "start_to_first_explain_runs_s": [round(r[1], 3) for r in runs]}, args.out)
        return
    start, first_explain = cold_start(args.family.parent, args.family.name, folder / "image.png")
    out = {"goals": GOALS, "family": str(args.family), "threads": torch.get_num_threads(),
           "cold_start_s": round(start, 3),
           "start_to_first_explain_s": round(first_explain, 3)}
    import psutil

    import app  # noqa: E402  (after TOPGAP_MODELS is set)

    ex = app.explorer_from_env()
    fam = ex.store.get(args.family.name)
    out["upload_to_all_k_s"] = round(median_time(lambda: explain_all(fam, image), args.repeats), 4)
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[100:300, 200:400] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    sess = ex.update(fam.name, str(folder / "image.png"), None, None, "gradcam", fam.ks[0], None)[0]
    ks = iter(fam.ks * 10 ** 5)
    out["k_change_s"] = round(median_time(lambda: ex.switch_k(sess, next(ks)), args.repeats * 3), 4)
    out["bias_plot_after_k_change_s"] = round(median_time(lambda: ex.size_view(sess, next(ks), 0.1), args.repeats), 4)
    masked = ex.update(fam.name, str(folder / "image.png"), str(folder / "mask.png"), None, "gradcam", fam.ks[0],
                       None)[0]
    out["backgrounds_swap_s"] = round(median_time(lambda: ex.backgrounds_view(masked, None), args.repeats), 3)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the steps reset VmHWM (and with it
    # ru_maxrss), so the session's peak is the larger of this, the steps' peaks and the peak after them
    out["heaviest_session_step_peak_rss_mb"] = heaviest_session(ex, folder / "image.png", folder / "mask.png", folder)
    out["rss_after_heaviest_session_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)
    name, model, cfg = fam.topgap[-1]
    x = fam.norms[name](sess.result.x01)
    ours = median_time(lambda: topgap_cam(model, x, size=fam.input_size), args.repeats)
    bname, bmodel, _ = fam.baseline
    xb = fam.norms[bname](sess.result.x01)
    theirs = median_time(lambda: baseline_cam(bmodel, xb, method="gradcam", size=fam.input_size), args.repeats)
    out.update(topgap_cam_s=round(ours, 4), gradcam_baseline_s=round(theirs, 4), cam_ratio=round(ours / theirs, 3))
    out["peak_rss_mb"] = round(max(peak_before, *out["heaviest_session_step_peak_rss_mb"].values(),
                                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), 1)
    out["scorecam_two_clients"] = scorecam_two_clients(args.family.parent, folder / "image.png")
    if args.clients:
        out["load"] = load(args.family.parent, folder / "image.png", folder / "mask.png", args.clients, args.requests)
    write_result(out, args.out)


if __name__ == "__main__":
    main()
