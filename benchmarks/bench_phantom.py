"""Speed of the phantom generator: one JSON line with seconds per case (issue 3 targets).

Targets: a 0.3 mm, 40 mm field-of-view CT case in under 10 s and a post-operative case in under
30 s on 2 CPU cores. A fixed numpy workload timed in the same process is the baseline, so figures
from machines of different speed can be compared (``*_per_baseline``).

Usage: ``python benchmarks/bench_phantom.py [--repeat N]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _baseline() -> float:
    """Seconds for a fixed elementwise numpy workload about the size of one 40 mm case."""
    x = np.linspace(0.0, 1.0, 2_400_000, dtype=np.float32)
    t = time.perf_counter()
    for _ in range(40):
        x = np.sqrt(x * x + np.float32(0.5)) - np.float32(0.25)
    return time.perf_counter() - t


def _time_case(kind: str, repeat: int, **kwargs) -> float:
    from CochleaCommonLib.phantom import generate_case

    best = float("inf")
    for i in range(repeat):
        t = time.perf_counter()
        generate_case(kind, 1000 + i, **kwargs)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="cases per kind; the best time is reported")
    args = parser.parse_args()
    base = _baseline()
    ct = _time_case("ct", args.repeat, spacing=0.3, fov_mm=40.0)
    cbct = _time_case("cbct", args.repeat, spacing=0.3, fov_mm=40.0)
    post = _time_case("postop", args.repeat, spacing=0.3, fov_mm=40.0)
    print(json.dumps({
        "benchmark": "phantom", "cpu_count": os.cpu_count(), "repeat": args.repeat,
        "baseline_numpy_s": round(base, 3),
        "ct_0.3mm_40mm_s": round(ct, 2), "cbct_0.3mm_40mm_s": round(cbct, 2), "postop_0.3mm_40mm_s": round(post, 2),
        "ct_per_baseline": round(ct / base, 1), "postop_per_baseline": round(post / base, 1),
        "targets_s": {"ct": 10.0, "postop": 30.0}, "meets_targets": bool(ct < 10.0 and post < 30.0),
    }))


if __name__ == "__main__":
    main()
