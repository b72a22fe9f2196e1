"""Wall time of `topgap evaluate` with its defaults: both CAM protocols, FGSM + PGD, the short eps curve, ROAD and the
sanity check on their stratified samples, k chosen on val.

Goal (issue 22, item 9): ``topgap evaluate FAMILY --data D --split test --select-split val`` with no other option
finishes within 10 minutes for a 4-model family on a 300-image split on 2 CPU cores. One run of exactly that command
(2 torch threads), timed from start to exit; the JSON (wall time, the load average around it, what ran) is printed
and written to bench/results/evaluate_defaults.json:

    python bench/evaluate_defaults.py [--family models/oxford-pet-lite0] [--data ../shared/data/oxford-iiit-pet-3breeds]

The family defaults to the shipped pets family (3 breeds, 298 test images) and to models/synthetic-shapes when the
pets data is absent (then --data must name that family's `topgap synth` data). The report goes to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PETS = ROOT.parent / "shared" / "data" / "oxford-iiit-pet-3breeds"
LIMIT_S = 600


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default=None, help="default models/oxford-pet-lite0 (models/synthetic-shapes without "
                                                  "the pets data)")
    p.add_argument("--data", default=None, help=f"dataset root (default {PETS})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "evaluate_defaults.json"))
    args = p.parse_args()
    pets = PETS.is_dir()
    family = Path(args.family or ROOT / "models" / ("oxford-pet-lite0" if pets else "synthetic-shapes"))
    data = Path(args.data or PETS)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "topgap", "evaluate", str(family), "--data", str(data), "--split", "test",
               "--select-split", "val", "--out", tmp]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        load = os.getloadavg()[0]
        start = time.perf_counter()
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if run.returncode:
            sys.exit(f"topgap evaluate failed ({run.returncode}):\n{run.stderr[-3000:]}")
        results = json.loads((Path(tmp) / "results.json").read_text())
    out = {"command": " ".join(["topgap", *cmd[3:-2]]), "family": family.name,
           "dataset": results["dataset"],
           "n_images": results["n_images"], "models": len(results["models"]), "threads": args.threads,
           "cpus": os.cpu_count(), "wall_s": round(wall, 1), "limit_s": LIMIT_S, "fits": wall <= LIMIT_S,
           "load_average_1min": {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)},
           "ran": {"protocols": list(results["protocols"]), "cam_target": results["cam_target"],
                   "attacks": results["attacks"], "pgd": [results["pgd_steps"], results["pgd_rule"]],
                   "eps_curve": [round(e * 255, 3) for e in results["eps_curve"]],
                   "sample_sizes": {part: rec["n"] for part, rec in results["samples"].items()},
                   "selection": (results.get("selection") or {}).get("by")},
           "estimates_printed": [line for line in run.stderr.splitlines() if "on the first image" in line]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
