"""Step curves: each self-training method's deliverable at 100, 200, 500, 1000 and 2000 steps, on `val`.

    python benchmarks/curves.py --quick --domain moderate             # the quick plan's source model
    python benchmarks/curves.py --arch A --domain D --steps 2000      # a block of the full plan
    python benchmarks/curves.py --quick --methods stvm mean_teacher   # some methods only

A short table rewards whoever learns fastest; a user runs the default ``run.iters``. Each method runs
once to the last step with the shipped defaults (the plan's batch, crop and seed; STvM's metric
warm-up as shipped, not the table's shorter one) with ``run.snapshots`` at the earlier steps, and every
snapshot is scored on the labelled `val` split (``--n-val`` frames; never the table's `test`). Per
method the report gives the curve, the best step, and the end minus the best as a paired-bootstrap 95 %
interval over the `val` frames: a method whose interval lies below 0 declined after its peak.
Each finished method is cached under --cache (``curves/``) and skipped on re-run. Writes
benchmarks/results/curves_<arch>_<domain>[_quick].{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accuracy import (
    TABLE_DELIVERY,
    Plan,
    current_config,
    method_over,
    save_frames,
    source_model,
)  # benchmarks/ on sys.path

from stvm_sdk import AdaptConfig, adapt, evaluate, load_model
from stvm_sdk.eval.metrics import paired_bootstrap_diff
from stvm_sdk.methods import resolve
from stvm_sdk.synthetic.cache import DomainSpec, ensure_domain

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (100, 200, 500, 1000, 2000)
METHODS = ("threshold_st", "mean_teacher", "confidence_weighted", "stvm_no_mocm", "stvm")


def curve_config(
    plan: Plan,
    arch: str,
    method: str,
    steps: tuple[int, ...],
    seed: int = 0,
    over: dict[str, Any] | None = None,
) -> AdaptConfig:
    """The shipped defaults for ``method`` at the plan's data settings, run to ``steps[-1]`` with a
    snapshot at every earlier step; ``over`` are plan keys as in :func:`method_over` (a variant)."""
    h, w = plan.size
    over = {
        "run.iters": steps[-1],
        "run.snapshots": list(steps[:-1]),
        "data.crop": (h, w),
        "data.batch_size": 4,
        "run.seed": seed,
        "run.checkpoint_every": 10_000,
        "run.log_every": 25,
        **TABLE_DELIVERY,  # every snapshot is scored here: the run trains on every frame
        **method_over(method, {"mix.patch": max(8, h // 8), **(over or {})}),  # the plan's patch for its size
    }
    return AdaptConfig(method=method).with_overrides(over)


def curve_key(plan: Plan, arch: str, domain: str, cfg: AdaptConfig, n_val: int) -> dict[str, Any]:
    """Everything a curve depends on. The config is the resolved one, every option of the method
    filled in: a changed default makes a cached curve stale, as it makes an accuracy cell stale."""
    data = {"size": plan.size, "n_target": plan.n_target, "source_iters": plan.source_iters}
    record = {"config": resolve(cfg)[0].to_dict(), "arch": arch, "domain": domain, "n_val": n_val, **data}
    return dict(json.loads(json.dumps(record)))


def run_curve(
    plan: Plan,
    arch: str,
    domain: str,
    method: str,
    steps: tuple[int, ...],
    n_val: int,
    cache: Path,
    over: dict[str, Any] | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Run (or read from cache) one method's curve: ``{"steps", "miou", "seconds"}`` plus per-frame
    confusions of every point in ``<cache>/curves/.../<method>[@tag].npz`` (a variant: ``over``)."""
    cfg = curve_config(plan, arch, method, steps, over=over)
    key = curve_key(plan, arch, domain, cfg, n_val)
    label = curve_label(method, tag)
    base = cache / "curves" / arch / domain / label
    record, frames = base.with_suffix(".json"), base.with_suffix(".npz")
    if record.is_file() and frames.is_file():
        with open(record) as f:
            done = json.load(f)
        recorded = done.get("key")
        if isinstance(recorded, dict):
            recorded = {**recorded, "config": current_config(recorded.get("config"))}
        if recorded == key:
            return dict(done)
    t0 = time.perf_counter()
    source = source_model(plan, arch, cache)
    target = ensure_domain(plan.spec(domain, "train"), cache)
    val = ensure_domain(DomainSpec(domain, "val", n_val, plan.size, 0), cache)
    run_dir = cache / "curve_runs" / arch / domain / label
    shutil.rmtree(run_dir, ignore_errors=True)
    result = adapt(source, target, config=cfg, out_dir=run_dir, progress=False)
    models = [(s["step"], load_model(s["path"])) for s in result.metrics.get("snapshots", [])]
    models.append((int(result.metrics["steps"]), result.model))
    mious, per_frame = [], []
    for _, model in models:
        res = evaluate(model, val, val, keep_frames=True)
        mious.append(res.miou)
        assert res.per_frame is not None
        per_frame.append(res.per_frame)
    out = {"key": key, "steps": [s for s, _ in models], "miou": mious,
           "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    base.parent.mkdir(parents=True, exist_ok=True)
    save_frames(torch.stack(per_frame), frames)
    record.write_text(json.dumps(out))  # last: the method is finished when its record is there
    return out


def curve_label(method: str, tag: str = "") -> str:
    """A curve's name in the cache and the tables: the method, and ``@tag`` for a variant."""
    return f"{method}@{tag}" if tag else method


def load_curve_frames(cache: Path, arch: str, domain: str, label: str) -> torch.Tensor:
    with np.load(cache / "curves" / arch / domain / f"{label}.npz") as data:
        return torch.from_numpy(data["per_frame"].astype(np.int64))


def settle(curve: dict[str, Any], frames: torch.Tensor) -> dict[str, Any]:
    """Best step, and end - best with its paired 95 % interval over the `val` frames."""
    mious = curve["miou"]
    best = max(range(len(mious)), key=lambda i: mious[i])
    diff, lo, hi = paired_bootstrap_diff(frames[-1], frames[best], resamples=1000)
    verdict = "holds" if hi >= 0 else "declines"
    return {"best_step": curve["steps"][best], "best_miou": mious[best], "end_minus_best": 100 * diff,
            "end_minus_best_ci": [100 * lo, 100 * hi], "verdict": verdict}  # fmt: skip


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs; a value is read as JSON where it parses (numbers, true, lists)."""
    over: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        try:
            over[key] = json.loads(value)
        except json.JSONDecodeError:
            over[key] = value
    return over


def plot(curves: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, c in curves.items():
        ax.plot(c["steps"], c["miou"], "o-", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel("mIoU on val (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick plan's (smaller) source model")
    ap.add_argument("--arch", default="lraspp_mobilenet_v3_large")
    ap.add_argument("--domain", default="moderate")
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="snapshot steps; the last ends")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--n-val", type=int, default=300, help="labelled `val` frames that score each point")
    ap.add_argument("--cache", type=Path, default=Path(".stvm_cache"))
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="a variant: a config key as the accuracy plan names it (run.iters, weight_scale, mix.tau), "
        "for every method; needs --tag",
    )  # fmt: skip
    ap.add_argument(
        "--tag", default="", help="the variant's name: curves are cached and tabled as method@tag"
    )
    args = ap.parse_args(argv)
    over = parse_sets(args.sets)
    if over and not args.tag:
        ap.error("--set makes a variant: name it with --tag")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    plan = Plan.quick() if args.quick else Plan()
    steps = tuple(sorted(set(args.steps)))
    t0 = time.perf_counter()
    curves, settled = {}, {}
    for method in args.methods:
        label = curve_label(method, args.tag)
        curves[label] = run_curve(
            plan, args.arch, args.domain, method, steps, args.n_val, args.cache, over, args.tag
        )
        frames = load_curve_frames(args.cache, args.arch, args.domain, label)
        settled[label] = settle(curves[label], frames)
        print(label, [f"{m:.2f}" for m in curves[label]["miou"]], settled[label]["verdict"], flush=True)
    seconds = time.perf_counter() - t0
    suffix = ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    name = f"curves_{args.arch}_{args.domain}{suffix}"
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Step curves: {args.arch} on `{args.domain}`, shipped defaults, mIoU on {args.n_val} `val` frames",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; this invocation "
        f"{seconds / 60:.1f} min (wall time per method when it ran, cached runs included: "
        + ", ".join(f"{m} {c['seconds'] / 60:.0f} min" for m, c in curves.items())
        + f"). Source model: the {'quick' if args.quick else 'full'} plan's ({plan.source_iters} "
        f"iterations). Command: `python benchmarks/curves.py {command}`",
        "",
        "| method | " + " | ".join(str(s) for s in steps) + " | best step | end − best [95 % CI] | |",
        "|---|" + "---|" * len(steps) + "---|---|---|",
    ]
    for method, c in curves.items():
        st = settled[method]
        lo, hi = st["end_minus_best_ci"]
        lines.append(
            f"| {method} | " + " | ".join(f"{m:.2f}" for m in c["miou"]) + f" | {st['best_step']} | "
            f"{st['end_minus_best']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {st['verdict']} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    out = {m: {"steps": c["steps"], "miou": c["miou"], **settled[m]} for m, c in curves.items()}
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    plot(curves, RESULTS / f"{name}.png", f"{args.arch} / {args.domain}: mIoU on val by step")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
