"""Shared helpers of the benchmarks: the median of repeated calls after warm-up, and the JSON a run leaves."""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from topgap.io import write_json


def write_result(result: dict, out: str | None) -> dict:
    """Print `result` as JSON and, with `out`, write it there atomically with the command that made it, the CPU
    count and the 1-minute load average (a loaded machine's timings say so): the file README figures cite."""
    result = {"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(),
              "load_average_1min": round(os.getloadavg()[0], 2), **result}
    if out:
        write_json(Path(out), result)
    print(json.dumps(result, indent=2))
    return result


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time in seconds of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_times(fns: list[Callable[[], object]], repeats: int, warmup: int = 2) -> list[float]:
    """Median wall times of each of `fns`, called in turn (interleaved), so a load on a shared machine hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]
