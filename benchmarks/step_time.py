"""Cost of one adaptation step against one supervised step of the same trained model, batch and crop.

    python benchmarks/step_time.py                      # lraspp, the quick plan's trained source model
    python benchmarks/step_time.py --plan full --arch deeplabv3_mobilenet_v3_large

Every method of the registry's ladder takes its real step (``Method.step``) on real target frames,
built as ``adapt()`` builds it (target BatchNorm statistics first), with the metric warm-up off so
STvM's step is the full one. The reference is a plain supervised step: the same network, SGD, batch
and crop, cross-entropy on labelled source frames. Steps are interleaved (one step of each, round after
round) so a change of machine load hits every row alike; medians are reported. Then STvM's step is
profiled by phase (``stvm_sdk.methods.base.phase``) and timed with CPU denormals flushed and not.

Writes benchmarks/results/step_time.md with the machine named. The models and frames come from the
accuracy benchmark's cache (``--cache``, shared with ``accuracy.py``).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as nnf
from accuracy import Plan, source_model  # benchmarks/ is on sys.path when this runs as a script
from torch import Tensor

from stvm_sdk import AdaptConfig, load_model
from stvm_sdk.data import scan_frames
from stvm_sdk.data.batches import BatchLoader, step_generator
from stvm_sdk.methods import get_method, ladder, resolve
from stvm_sdk.methods.base import PHASE_PREFIX, Method, phase
from stvm_sdk.methods.parts.norm import reestimate_bn
from stvm_sdk.models import SegModel, forward_logits, normalize
from stvm_sdk.synthetic.cache import ensure_domain

RESULTS = Path(__file__).resolve().parent / "results"
Step = Callable[[int], None]


def build(name: str, source: SegModel, target: list[Tensor], plan: Plan, arch: str) -> Method:
    """``name``'s method as ``adapt()`` builds it: target BN statistics, then the networks."""
    cfg = resolve(plan.adapt_cfg(arch, name, 0, **{"metric.warmup": 0, "run.iters": 10_000}))[0]
    work = source.clone()
    if get_method(name).reestimate_bn:
        reestimate_bn(work.module, (normalize(x, work.mean, work.std) for x in target))
    return get_method(name).build(work, cfg, torch.Generator().manual_seed(0))


def supervised_step(source: SegModel, labelled: list[tuple[Tensor, Tensor]], cfg: AdaptConfig) -> Step:
    """A plain supervised step: forward, cross-entropy, backward, SGD (the adaptation's optimiser)."""
    net = copy.deepcopy(source.module).train()
    o = cfg.optim
    opt = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)

    def step(i: int) -> None:
        images, labels = labelled[i % len(labelled)]
        with phase("student"):
            logits = forward_logits(net, normalize(images, source.mean, source.std))
        with phase("student_loss"):
            loss = nnf.cross_entropy(logits, labels, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            opt.step()

    return step


def method_step(method: Method, target: list[Tensor]) -> Step:
    def step(i: int) -> None:
        method.step(target[i % len(target)], i, step_generator(0, i, stream=3))

    return step


def interleaved(steps: dict[str, Step], warmup: int, rounds: int) -> dict[str, float]:
    """Median wall seconds per step of each entry, one step of each per round."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(r)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def profile_phases(step: Step, start: int, n: int) -> dict[str, float]:
    """Mean milliseconds per step spent in each named phase (and in all of the step) over ``n`` steps."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(start, start + n):
            step(i)
    total = (time.perf_counter() - t0) / n * 1e3
    out = {
        e.key[len(PHASE_PREFIX) :]: e.cpu_time_total / 1e3 / n
        for e in prof.key_averages()
        if e.key.startswith(PHASE_PREFIX)
    }
    return {**out, "whole step": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--plan", choices=("quick", "full"), default="quick", help="whose source model and frames"
    )
    ap.add_argument("--arch", default="lraspp_mobilenet_v3_large")
    ap.add_argument("--cache", type=Path, default=Path(".stvm_cache"))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    plan = Plan.quick() if args.plan == "quick" else Plan()
    t_start = time.perf_counter()
    source = load_model(source_model(plan, args.arch, args.cache))
    # Batches decoded up front: the rows time the step, not PNG decoding.
    n = args.warmup + args.rounds + 4
    kw = {"batch_size": 4, "crop": plan.size, "resize": None, "seed": 0}
    tgt = BatchLoader(scan_frames(ensure_domain(plan.spec("target", "train"), args.cache)).frames, **kw)  # type: ignore[arg-type]
    target = [tgt.batch(i) for i in range(n)]
    src = scan_frames(*(2 * [ensure_domain(plan.spec("source", "train"), args.cache)]), require_labels=True)
    lab = BatchLoader(src.labelled, with_labels=True, **kw)  # type: ignore[arg-type]
    labelled = [lab.labelled_batch(i) for i in range(n)]
    tgt.close(), lab.close()

    methods = {m.name: build(m.name, source, target, plan, args.arch) for m in ladder() if m.trains()}
    cfg = methods["stvm"].cfg
    steps = {"supervised": supervised_step(source, labelled, cfg)}
    steps.update({name: method_step(m, target) for name, m in methods.items()})
    median = interleaved(steps, args.warmup, args.rounds)
    for name, s in median.items():
        print(f"{name:20s} {s * 1e3:7.0f} ms/step  {s / median['supervised']:.2f}x supervised", flush=True)

    stvm = steps["stvm"]
    phases = profile_phases(stvm, args.warmup + args.rounds, 4)
    sup_phases = profile_phases(steps["supervised"], args.warmup + args.rounds, 4)
    denormal = {}
    for flush in (False, True, False, True):
        torch.set_flush_denormal(flush)
        d = interleaved({"supervised": steps["supervised"], "stvm": stvm}, 1, max(2, args.rounds // 2))
        for k, v in d.items():
            denormal.setdefault((k, flush), []).append(v)
    torch.set_flush_denormal(False)
    write(
        args,
        plan,
        median,
        phases,
        sup_phases,
        {k: statistics.median(v) for k, v in denormal.items()},
        t_start,
    )


def write(
    args: argparse.Namespace,
    plan: Plan,
    median: dict[str, float],
    phases: dict[str, float],
    sup_phases: dict[str, float],
    denormal: dict[tuple[str, bool], float],
    t_start: float,
) -> None:
    sup = median["supervised"]
    whole = phases["whole step"]
    known = sum(v for k, v in phases.items() if k != "whole step")
    lines = [
        f"# Step time: {args.arch}, batch 4, {plan.size[0]}x{plan.size[1]}, "
        f"trained source model ({args.plan} plan)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; 1-min load average at the end {os.getloadavg()[0]:.1f}.",
        f"Command: `python benchmarks/step_time.py {' '.join(sys.argv[1:])}` "
        f"({time.perf_counter() - t_start:.0f} s). Medians of {args.rounds} interleaved rounds after "
        f"{args.warmup} warm-up rounds; STvM's metric warm-up is off (its full step).",
        "",
        "| step | ms/step (median) | x supervised |",
        "|---|---|---|",
        *[f"| {k} | {v * 1e3:.0f} | {v / sup:.2f} |" for k, v in median.items()],
        "",
        "## Where STvM's step goes (torch.profiler, mean of 4 steps)",
        "",
        "| phase | ms/step | share | supervised step |",
        "|---|---|---|---|",
        *[
            f"| {k} | {v:.0f} | {v / whole:.0%} | {sup_phases.get(k, 0.0):.0f} |"
            for k, v in sorted(phases.items(), key=lambda kv: -kv[1])
            if k != "whole step"
        ],
        f"| (outside named phases) | {whole - known:.0f} | {(whole - known) / whole:.0%} | |",
        f"| whole step (profiled) | {whole:.0f} | 100% | {sup_phases['whole step']:.0f} |",
        "",
        "## Flushing CPU denormals (`torch.set_flush_denormal(True)`), interleaved, 2 repeats",
        "",
        "| step | denormals kept, ms | flushed, ms | flushed / kept |",
        "|---|---|---|---|",
        *[
            f"| {k} | {denormal[(k, False)] * 1e3:.0f} | {denormal[(k, True)] * 1e3:.0f} | "
            f"{denormal[(k, True)] / denormal[(k, False)]:.2f} |"
            for k in ("supervised", "stvm")
        ],
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_time.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
