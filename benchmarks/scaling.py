"""Data-parallel throughput of ``stvm adapt``: 1 process vs 2 processes (gloo on CPU here).

Runs the real command (``stvm adapt --nproc-per-node N``) on generated frames with a randomly
initialised lraspp_mobilenet_v3_large (5 classes), per-process batch B fixed (weak scaling: the
global batch is B x N). The window between the run's 1st and 3rd log records (past warm-up, before
saving) gives the global wall-clock rate in images/s. On a shared machine that rate depends on what
else runs, so the CPU time of the whole process tree (launcher and workers, read from /proc) over
the same window is reported too: the compute each image costs, which contention distorts far less.

Usage: ``python benchmarks/scaling.py [--iters 24] [--batch 2] [--crop 128x256] [--repeats 1]``
writes ``benchmarks/results/scaling.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# (processes, threads per process, sync_bn): 1x1 is the unit; 1x2 is the same two cores as 2x1.
CONFIGS = [(1, 1, False), (1, 2, False), (2, 1, False), (2, 1, True)]


def make_inputs(root: Path, n: int = 16, size: tuple[int, int] = (256, 512)) -> tuple[Path, Path]:
    """``n`` frames of coloured blocks and a 5-class lraspp checkpoint (random weights)."""
    from stvm_sdk.models import build_torchvision

    rng = np.random.default_rng(0)
    images = root / "frames"
    images.mkdir(parents=True)
    for i in range(n):
        lab = rng.integers(0, 5, (size[0] // 32, size[1] // 32)).repeat(32, 0).repeat(32, 1)
        img = rng.integers(0, 255, (5, 3))[lab] + rng.integers(-20, 20, (*size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images / f"f{i:02d}.png")
    torch.manual_seed(0)
    net = build_torchvision("lraspp_mobilenet_v3_large", 5)
    ckpt = root / "lraspp.pt"
    torch.save({"arch": "lraspp_mobilenet_v3_large", "num_classes": 5, "state_dict": net.state_dict()}, ckpt)
    return images, ckpt


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by process ``root`` and all its descendants (Linux)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # not a process, or it just ended
        pid = int(entry.name)
        parents[pid], ticks[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree, grew = tree | more, bool(more)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def run_once(
    images: Path, ckpt: Path, out: Path, config: tuple[int, int, bool], a: argparse.Namespace
) -> tuple[float, float]:
    """One ``stvm adapt`` run; (images/s, CPU ms per image) between its 1st and 3rd log records."""
    procs, threads, sync_bn = config
    cfg = out.with_suffix(".toml")
    cfg.write_text(
        f"[run]\niters = {a.iters}\nlog_every = {a.iters // 4}\ncheckpoint_every = {a.iters}\n"
        f"sync_bn = {'true' if sync_bn else 'false'}\n"
        # BN in train mode, as when scaling.md was measured (sync_bn only matters then)
        '[methods.stvm]\nstudent_bn = "train"\n[methods.stvm.metric]\nwarmup = 2\n'
    )
    cmd = [sys.executable, "-m", "stvm_sdk.cli", "adapt", "--source", str(ckpt), "--target", str(images)]
    cmd += ["--out", str(out), "--config", str(cfg), "--batch-size", str(a.batch), "--crop", a.crop]
    cmd += ["--json", "--nproc-per-node", str(procs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, marks = out / "metrics.jsonl", {}  # log records written -> (CPU s of the tree, time)
    try:
        while proc.poll() is None:
            n = len(log.read_text().splitlines()) if log.is_file() else 0
            if n not in marks:
                marks[n] = (_tree_cpu(proc.pid), time.perf_counter())
            time.sleep(0.05)
    finally:
        if proc.poll() is None:  # this script failed: do not leave the run behind
            proc.kill()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read() if proc.stderr else ''}")
    images_between = (a.iters // 4) * 2 * a.batch * procs  # records 1 -> 3: two logging intervals
    (cpu1, t1), (cpu3, t3) = marks[1], marks[3]
    return images_between / (t3 - t1), 1000 * (cpu3 - cpu1) / images_between


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=24)
    p.add_argument("--batch", type=int, default=2, help="per process")
    p.add_argument("--crop", default="128x256")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.md")
    a = p.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images, ckpt = make_inputs(Path(tmp))
        for config in CONFIGS:
            name = "r{}{}{:d}".format(*config)
            runs = [run_once(images, ckpt, Path(tmp) / f"{name}{k}", config, a) for k in range(a.repeats)]
            ips, ms = (statistics.median(r[i] for r in runs) for i in range(2))
            rows.append((*config, ips, ms))
            print(f"{name}: {ips:.2f} images/s, {ms:.0f} CPU-ms/image", flush=True)
    write_report(a, rows, load_before, os.getloadavg())


def write_report(a: argparse.Namespace, rows: list, load_before: tuple, load_after: tuple) -> None:
    base = rows[0][3]
    lines = [
        "# Data-parallel scaling of `stvm adapt` (CPU processes, gloo)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, Python {platform.python_version()}; load average "
        f"{load_before[0]:.1f} before / {load_after[0]:.1f} after (a shared machine: other jobs ran).",
        f"lraspp_mobilenet_v3_large (5 classes), method stvm, crop {a.crop}, per-process batch {a.batch}, "
        f"{a.iters} steps, median of {a.repeats} run(s). Both figures cover the same steady-state window "
        f"(steps {a.iters // 4}-{3 * a.iters // 4}, between the 1st and 3rd log records): images/s is the "
        "global wall-clock rate, CPU-ms/image the CPU time (user + system) the whole process tree spent "
        "per image (far less sensitive than wall time to what else runs).",
        "",
        f"Command: `python benchmarks/scaling.py --iters {a.iters} --batch {a.batch} --crop {a.crop} "
        f"--repeats {a.repeats}`",
        "",
        "| processes | threads each | sync_bn | global batch | images/s | vs 1x1 | CPU-ms/image | vs 1x1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cpu_base = rows[0][4]
    for procs, threads, sync_bn, ips, ms in rows:
        lines.append(
            f"| {procs} | {threads} | {'on' if sync_bn else 'off'} | {a.batch * procs} | {ips:.2f} | "
            f"{ips / base:.2f}x | {ms:.0f} | {ms / cpu_base:.2f}x |"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
