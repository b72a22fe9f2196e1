"""ScoreCAM's batch of masked inputs: time and peak memory per batch size, on a family's baseline.

ScoreCAM runs the model once per channel of the target layer (1280 for EfficientNet-Lite0), `batch_size` masked
images at a time (topgap.cam.SCORECAM_BATCH; pytorch-grad-cam's default is 16). Each size runs in a fresh process:
the seconds of one call and its peak RSS above the RSS before it (VmHWM after a reset, Linux). Printed as JSON:

    python bench/scorecam_batch.py --family models/oxford-pet-lite0 --sizes 1 2 4 8 16 \
        --out bench/results/scorecam_batch.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from timing import write_result  # noqa: E402  (bench/ is on sys.path when run as a script)

ONE = """
import json, sys, time
from pathlib import Path
import torch
import topgap.cam as cam
from topgap.explorer.explain import Family

def status(key):
    return int(next(li for li in open("/proc/self/status") if li.startswith(key)).split()[1]) / 1024

torch.manual_seed(0)
_, model, cfg = Family(sys.argv[1]).baseline
x = torch.randn(1, 3, *cfg.input_size)
cam.baseline_cam(model, x, method="gradcam")  # warm: first calls of CPU kernels are slow
cam._raw("scorecam").batch_size = int(sys.argv[2])
Path("/proc/self/clear_refs").write_text("5")
before, t0 = status("VmRSS"), time.perf_counter()
cam.baseline_cam(model, x, method="scorecam")
seconds = round(time.perf_counter() - t0, 2)
print(json.dumps({"seconds": seconds, "peak_above_rss_mb": round(status("VmHWM") - before, 1)}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", type=Path, required=True, help="a family folder with a baseline model")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    runs = {}
    for size in args.sizes:
        done = subprocess.run([sys.executable, "-c", ONE, str(args.family), str(size)], capture_output=True,
                              text=True, check=True, cwd=ROOT)
        runs[str(size)] = json.loads(done.stdout.strip().splitlines()[-1])
    write_result({"family": str(args.family), "by_batch_size": runs}, args.out)


if __name__ == "__main__":
    main()
