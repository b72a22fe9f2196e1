"""App performance: cold start, upload to all-k results, slider change, Top-GAP CAM vs GradCAM, peak memory.

Goals (issue 5): cold start <= 15 s; upload to all k <= 1.0 s (default zoo, 2 cores); slider <= 100 ms;
Top-GAP CAM / GradCAM on the baseline <= 0.5; peak RSS <= 2 GB. Medians in one run, printed as JSON:

    python bench/app.py [--family models/synth] [--repeats 7]

Without --family a random-weight resnet18 family (k 4, 16, 64 + baseline, 64x64 inputs) is made in a temp dir.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from timing import median_time  # noqa: E402  (bench/ is on sys.path when run as a script)


def cold_start(models: Path, family: str) -> float:
    """Seconds from `python app.py` to the first HTTP 200."""
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
                    return time.perf_counter() - t0
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t0 > 180:
                    raise RuntimeError("app.py did not start") from None
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", type=Path, help="a family folder (default: a random-weight test family)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    if args.family is None:
        from appfamily import make_family
        args.family = make_family(Path(tempfile.mkdtemp()), "bench")
    os.environ["TOPGAP_MODELS"] = str(args.family.parent)
    os.environ["TOPGAP_DEFAULT_FAMILY"] = args.family.name

    import torch

    from topgap.cam import baseline_cam, topgap_cam
    from topgap.explorer.explain import explain_all

    out = {"family": str(args.family), "threads": torch.get_num_threads(),
           "cold_start_s": round(cold_start(args.family.parent, args.family.name), 3)}
    import app  # noqa: E402  (after TOPGAP_MODELS is set)

    fam = app.STORE.get(args.family.name)
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    out["upload_to_all_k_s"] = round(median_time(lambda: explain_all(fam, image), args.repeats), 4)
    result = app.analyse(fam.name, image, None, None, "gradcam", 0)[0]
    indices = iter(range(10 ** 6))
    out["slider_change_s"] = round(median_time(lambda: app.switch_k(result, next(indices) % len(fam.ks)),
                                               args.repeats * 3), 4)
    name, model, cfg = fam.topgap[-1]
    x = fam.norms[name](result.x01)
    ours = median_time(lambda: topgap_cam(model, x, size=fam.input_size), args.repeats)
    bname, bmodel, _ = fam.baseline
    xb = fam.norms[bname](result.x01)
    theirs = median_time(lambda: baseline_cam(bmodel, xb, method="gradcam", size=fam.input_size), args.repeats)
    out.update(topgap_cam_s=round(ours, 4), gradcam_baseline_s=round(theirs, 4), cam_ratio=round(ours / theirs, 3))
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
