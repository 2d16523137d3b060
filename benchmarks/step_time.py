"""CPU time of one adaptation step, per method, for a torchvision model (issue 2's closing figure).

    python benchmarks/step_time.py --arch lraspp_mobilenet_v3_large --batch 4 --size 256x512

Reports wall-clock and process CPU seconds per step (median over --steps after --warmup), side by
side for the methods asked, and writes benchmarks/results/step_time.md with the machine named.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from stvm_sdk.boundary.args import parse_hw
from stvm_sdk.config import AdaptConfig
from stvm_sdk.data.batches import step_generator
from stvm_sdk.method.stvm import Adapter
from stvm_sdk.models import IMAGENET_MEAN, IMAGENET_STD, build_torchvision

RESULTS = Path(__file__).resolve().parent / "results"


def time_method(
    arch: str, method: str, batch: int, size: tuple[int, int], warmup: int, steps: int
) -> tuple[float, float]:
    torch.manual_seed(0)
    net = build_torchvision(arch, 19)
    cfg = AdaptConfig(method=method).with_overrides({"metric.warmup": 0, "run.iters": warmup + steps})
    adapter = Adapter(
        net, "classifier", 19, cfg, IMAGENET_MEAN, IMAGENET_STD, torch.Generator().manual_seed(0)
    )
    x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(1))
    wall, cpu = [], []
    for step in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        adapter.step(x, step, step_generator(0, step))
        if step >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="lraspp_mobilenet_v3_large")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", default="256x512")
    ap.add_argument("--methods", default="stvm,stvm_no_mocm,mean_teacher")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    size = parse_hw(args.size)
    assert size is not None
    threads = torch.get_num_threads()
    rows = []
    for method in args.methods.split(","):
        wall, cpu = time_method(args.arch, method, args.batch, size, args.warmup, args.steps)
        rows.append((method, wall, cpu))
        print(f"{method:14s} wall {wall:.2f} s/step   process CPU {cpu:.2f} s/step", flush=True)
    load = os.getloadavg()[0]
    lines = [
        f"# Adaptation step time: {args.arch}, batch {args.batch}, {args.size}",
        "",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, "
        f"{threads} threads; 1-min load average at the end {load:.1f} (other jobs were running if > 2).",
        "",
        "Command: `python benchmarks/step_time.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| method | wall s/step (median) | process CPU s/step |",
        "|---|---|---|",
        *[f"| {m} | {w:.2f} | {c:.2f} |" for m, w, c in rows],
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_time.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
