"""Prediction latency with asynchronous adaptation running beside it, against the same predictor
adapting on nothing, measured side by side in one run.

    python benchmarks/async_latency.py [--arch lraspp_mobilenet_v3_large] [--method stvm] [--frames 200]

Frames are handed over at a steady rate (``--gap`` seconds between predictions); the rows alternate
off / on / off so drift on a shared machine shows. The source model is the accuracy benchmark's (cached
under --cache; trained there on first use). Prints a Markdown table and the p99 ratio.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import Plan, source_model  # noqa: E402

from stvm_sdk import load_model  # noqa: E402
from stvm_sdk.stream import AsyncAdapter, OnlineAdapter, StreamConfig  # noqa: E402


def measure(source: object, method: str, adapt: bool, frames: int, gap: float) -> dict[str, float]:
    """Prediction times (ms) of ``frames`` frames through an :class:`AsyncAdapter`."""
    every = 1 if adapt else 10**9  # off: the same predictor and thread split, adapting on nothing
    adapter = OnlineAdapter(source, method, stream=StreamConfig(every=every))  # type: ignore[arg-type]
    runner = AsyncAdapter(adapter)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 256, generator=g) for _ in range(8)]
    times = []
    try:
        for i in range(frames):
            times.append(runner.step(images[i % 8]).predict_s)
            time.sleep(gap)
    finally:
        runner.close()
    ms = 1000 * np.asarray(times[10:])  # the first frames warm the allocator up
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "steps": adapter.steps_run}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="lraspp_mobilenet_v3_large")
    ap.add_argument("--method", default="stvm")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.07, help="seconds between predictions")
    ap.add_argument("--cache", type=Path, default=Path(".stvm_cache"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    source = load_model(source_model(Plan(), args.arch, args.cache))
    rows = [(name, measure(source, args.method, on, args.frames, args.gap))
            for name, on in (("off", False), ("on", True), ("off", False))]  # fmt: skip
    print(f"# Prediction beside asynchronous {args.method} ({args.arch}, 128x256, {platform.machine()}, "
          f"{torch.get_num_threads()} threads split 1 + 1)\n")  # fmt: skip
    print("| adaptation | predict p50 ms | predict p99 ms | steps |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['p50']:.1f} | {r['p99']:.1f} | {r['steps']} |")
    off = min(rows[0][1]["p99"], rows[2][1]["p99"]), max(rows[0][1]["p99"], rows[2][1]["p99"])
    on = rows[1][1]["p99"]
    print(f"\np99 ratio on / off: {on / off[1]:.2f}x to {on / off[0]:.2f}x (the two off rows bracket it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
