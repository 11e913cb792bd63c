#!/usr/bin/env python3
"""Benchmark the SMICNet patch classifier: batched throughput against the authors' one-predict-per-patch loop.

Why: the authors classify one 81x81 patch per ``model.predict`` call, which makes their sliding window
take minutes; batching and the rewritten inference graph are where the speed of our inference comes from.
This prints one JSON line, all figures measured in the same process:

* ``patches_per_s`` / ``patches_per_s_channels_last``: preprocessing from raw patches + forward + softmax
  with ``predict_proba`` (the rewritten graph of ``SMICNet.inference_logits``), per batch size, in the
  default and the channels-last memory layout;
* ``reference_patches_per_s...``: the same with the layer-for-layer ``forward`` (the Keras port, the
  reference the rewrite is tested against), and ``speedup_rewrite_vs_reference``;
* the Keras-emulating loop (preprocess one patch, predict one patch, back to numpy) and the speed-ups over it.

Usage: ``python benchmarks/bench_smicnet_forward.py [--device cpu|cuda] [--threads N] [--seconds S]``.
Random weights are used (speed does not depend on them). On a loaded machine the figures drop; the
1-minute load average is reported alongside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np


def _rate(step: Callable[[], Any], patches_per_step: int, seconds: float, sync: Callable[[], None]) -> float:
    """Patches per second of ``step`` over at least ``seconds`` (and at least one step) after one warm-up."""
    step()
    sync()
    done, start = 0, time.perf_counter()
    while True:
        step()
        sync()
        done += patches_per_step
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per figure")
    parser.add_argument("--batches", default="1,64,256,2048", help="comma-separated batch sizes")
    args = parser.parse_args(argv)

    import torch
    from CochleaLandmarksLib.smicnet_model import build_smicnet
    from CochleaLandmarksLib.smicnet_preprocess import quantize_patches, quantize_patches_torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batches = [int(b) for b in args.batches.split(",")]
    rng = np.random.default_rng(0)
    raw = rng.normal(300.0, 400.0, size=(max(batches), 81, 81)).astype(np.float32)
    model = build_smicnet(device)

    def batched(n: int, layout: Any, reference: bool = False) -> Callable[[], Any]:
        patches = raw[:n]

        def classify(x: Any) -> Any:
            x = x.contiguous(memory_format=layout)
            if not reference:
                return model.predict_proba(x)
            with torch.inference_mode():
                return torch.softmax(model.eval()(x), dim=1)

        if device.type == "cpu":
            return lambda: classify(torch.from_numpy(quantize_patches(patches))[:, None]).numpy()
        on_device = torch.from_numpy(patches).to(device)
        return lambda: classify(quantize_patches_torch(on_device)[:, None])

    def keras_loop() -> None:  # the authors' procedure: one patch, one predict, result back on the host
        for patch in raw[:16]:
            x = torch.from_numpy(quantize_patches(patch[None]))[:, None].to(device)
            model.predict_proba(x).cpu().numpy()

    result: dict[str, Any] = {"benchmark": "smicnet_forward", "device": str(device), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                              "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    baseline = _rate(keras_loop, 16, args.seconds, sync)
    for layout_name, layout in (("patches_per_s", torch.contiguous_format),
                                ("patches_per_s_channels_last", torch.channels_last)):
        model.to(memory_format=layout)
        result[layout_name] = {str(n): round(_rate(batched(n, layout), n, args.seconds, sync), 1) for n in batches}
        result[f"reference_{layout_name}"] = {str(n): round(_rate(batched(n, layout, True), n, args.seconds, sync), 1)
                                              for n in batches}
        result[f"speedup_rewrite_vs_reference{layout_name[len('patches_per_s'):]}"] = {
            n: round(v / result[f"reference_{layout_name}"][n], 2) for n, v in result[layout_name].items()}
    model.to(memory_format=torch.contiguous_format)
    result["baseline_one_predict_per_patch_per_s"] = round(baseline, 1)
    for key in ("patches_per_s", "patches_per_s_channels_last"):
        result[f"speedup_vs_baseline{key[len('patches_per_s'):]}"] = {
            n: round(v / baseline, 2) for n, v in result[key].items()}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
