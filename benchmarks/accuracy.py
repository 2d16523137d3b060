"""Accuracy benchmark on the synthetic domain-shift benchmark: every method, seeds, two archs, two domains.

    python benchmarks/accuracy.py            # the full table (sized for < 2 h on a 2-core CPU)
    python benchmarks/accuracy.py --quick    # a ~10-minute subset (one arch, one domain, one seed)
    python benchmarks/accuracy.py --tune     # STvM decisions compared on the *tuning* split only

Writes benchmarks/results/accuracy{,_quick}.{md,json}, the threshold sweep plot, a reliability-vs-
correctness plot and qualitative figures. Each finished cell (arch, domain, method, seed) is cached
under --cache as JSON and skipped on re-run, so a run that is cut off continues where it stopped.
The table is computed on a held-out labelled split (`test`); tuning uses a separate split (`val`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from stvm_sdk import AdaptConfig, adapt, evaluate, load_model
from stvm_sdk.benchmark_data import DomainSpec, ensure_domain, ensure_trained
from stvm_sdk.supervised import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
LADDER = [
    "source_only",
    "adabn",
    "tent",
    "threshold_st",
    "mean_teacher",
    "confidence_weighted",
    "stvm_no_mocm",
    "stvm",
]
SWEEP = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class Plan:
    """What the benchmark runs; every number is stated in the table header."""

    archs: tuple[str, ...] = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")
    domains: tuple[str, ...] = ("target", "fog")
    seeds: tuple[int, ...] = (0, 1, 2)
    size: tuple[int, int] = (128, 256)
    n_source: int = 400
    n_target: int = 300  # unlabeled adaptation frames (also the oracle's labelled training set)
    n_tune: int = 40  # labelled tuning split (`val`)
    n_test: int = 100  # labelled held-out split (`test`): the table
    source_iters: int = 800
    adapt_iters: dict[str, int] = field(
        default_factory=lambda: {"lraspp_mobilenet_v3_large": 300, "deeplabv3_mobilenet_v3_large": 150}
    )
    warmup: int = 50
    sweep_arch: str = "lraspp_mobilenet_v3_large"

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            archs=("lraspp_mobilenet_v3_large",),
            domains=("target",),
            seeds=(0,),
            n_test=40,
            adapt_iters={"lraspp_mobilenet_v3_large": 120},
            warmup=30,
        )

    def train_cfg(self, arch: str) -> TrainConfig:
        return TrainConfig(arch=arch, iters=self.source_iters, batch_size=8, crop=None, seed=0)

    def adapt_cfg(self, arch: str, method: str, seed: int, **over: Any) -> AdaptConfig:
        h, w = self.size
        base = {
            "run.iters": self.adapt_iters[arch],
            "metric.warmup": self.warmup,
            "data.crop": (h, w),
            "data.batch_size": 4,
            "run.seed": seed,
            "run.checkpoint_every": 10_000,
            "run.log_every": 25,
            "mix.patch": max(8, h // 8),
        }
        return AdaptConfig(method=method).with_overrides({**base, **over})


def _cell(
    cache: Path, plan: Plan, arch: str, domain: str, name: str, seed: int, split: str, **over: Any
) -> dict[str, Any]:
    """Run (or read from cache) one adaptation and evaluate teacher, student and deliverable on ``split``."""
    key = f"{arch}/{domain}/{split}/{name}/seed{seed}"
    path = cache / "cells" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    spec = lambda d, s, n: DomainSpec(d, s, n, plan.size, 0)  # noqa: E731
    source = ensure_trained(
        spec("source", "train", plan.n_source), plan.train_cfg(arch), cache, progress=False
    )
    target = ensure_domain(spec(domain, "train", plan.n_target), cache)
    n_eval = plan.n_test if split == "test" else plan.n_tune
    evaluation = ensure_domain(spec(domain, split, n_eval), cache)
    if name == "oracle":
        oracle = ensure_trained(
            spec(domain, "train", plan.n_target), plan.train_cfg(arch), cache, progress=False
        )
        res = evaluate(load_model(oracle), evaluation, evaluation)
        out: dict[str, Any] = {"miou": res.miou, "per_class_iou": res.per_class_iou}
    else:
        method = name.split("@")[0]
        cfg = plan.adapt_cfg(arch, method, seed, **over)
        run_dir = cache / "runs" / key
        shutil.rmtree(run_dir, ignore_errors=True)
        result = adapt(source, target, config=cfg, out_dir=run_dir, progress=False)
        res = evaluate(result.model, evaluation, evaluation)
        out = {
            "miou": res.miou,
            "per_class_iou": res.per_class_iou,
            "deliverable": result.metrics["deliverable"],
        }
        if result.teacher is not None:
            out["miou_teacher"] = evaluate(result.teacher, evaluation, evaluation).miou
            out["miou_student"] = evaluate(result.student, evaluation, evaluation).miou
        out["config"] = cfg.to_dict()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def _summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    mious = [c["miou"] for c in cells]
    names = cells[0]["per_class_iou"].keys()
    per_class = {}
    for n in names:
        vals = [c["per_class_iou"][n] for c in cells if c["per_class_iou"][n] is not None]
        per_class[n] = statistics.fmean(vals) if vals else None
    return {
        "miou_mean": statistics.fmean(mious),
        "miou_std": statistics.pstdev(mious) if len(mious) > 1 else 0.0,
        "miou_per_seed": mious,
        "per_class_iou": per_class,
        "miou_teacher_mean": _mean([c.get("miou_teacher") for c in cells]),
        "miou_student_mean": _mean([c.get("miou_student") for c in cells]),
    }


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def methods(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    """(table name, config overrides): the ladder, STvM without decision 0, and the oracle."""
    rows: list[tuple[str, dict[str, Any]]] = [(m, {}) for m in LADDER]
    rows.insert(-1, ("stvm@bn_source", {"bn_init": "source"}))
    return rows


def run_table(plan: Plan, cache: Path) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for arch in plan.archs:
        for domain in plan.domains:
            block: dict[str, Any] = {}
            for name, over in methods(plan):
                seeds = plan.seeds if name not in ("source_only", "adabn") else plan.seeds[:1]
                cells = [_cell(cache, plan, arch, domain, name, s, "test", **over) for s in seeds]
                block[name] = _summary(cells)
                print(
                    f"{arch:32s} {domain:7s} {name:20s} {block[name]['miou_mean']:6.2f} "
                    f"± {block[name]['miou_std']:.2f}",
                    flush=True,
                )
            block["oracle"] = _summary([_cell(cache, plan, arch, domain, "oracle", 0, "test")])
            print(f"{arch:32s} {domain:7s} {'oracle':20s} {block['oracle']['miou_mean']:6.2f}", flush=True)
            table.setdefault(arch, {})[domain] = block
    return table


def run_sweep(plan: Plan, cache: Path) -> dict[str, float]:
    """threshold_st with the kept share of confident pixels swept (the paper's Figure 1)."""
    out = {}
    for keep in SWEEP:
        cell = _cell(
            cache,
            plan,
            plan.sweep_arch,
            plan.domains[0],
            f"threshold_st@{keep}",
            plan.seeds[0],
            "test",
            **{"optim.threshold_keep": keep},
        )
        out[f"{keep:.1f}"] = cell["miou"]
        print(f"sweep keep={keep:.1f}: {cell['miou']:.2f}", flush=True)
    return out


def write_markdown(
    plan: Plan, table: dict[str, Any], sweep: dict[str, float], path: Path, seconds: float
) -> None:
    lines = [
        "# Accuracy on the synthetic domain-shift benchmark",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, {platform.processor() or 'CPU'}; "
        f"torch {torch.__version__}. Wall time {seconds / 60:.1f} min (cached cells are not re-run).",
        "",
        f"Setup: {plan.size[0]}x{plan.size[1]} frames; source model trained {plan.source_iters} iters on "
        f"{plan.n_source} labelled `source` frames; adaptation on {plan.n_target} unlabeled target frames "
        f"(iters per arch: {plan.adapt_iters}, batch 4, metric warm-up {plan.warmup}); mIoU on {plan.n_test} "
        f"held-out labelled frames (`test` split, never used for tuning); seeds {list(plan.seeds)} "
        "(source_only/adabn are deterministic: one run); oracle = same arch trained on the target "
        "frames' labels.",
        "",
        "Command: `python benchmarks/accuracy.py" + (" --quick" if plan == Plan.quick() else "") + "`",
        "",
    ]
    for arch, domains in table.items():
        for domain, block in domains.items():
            lines += [
                f"## {arch} — {domain}",
                "",
                "| method | mIoU mean ± std | per seed | teacher | student |",
                "|---|---|---|---|---|",
            ]
            for name, s in block.items():
                seeds = ", ".join(f"{m:.1f}" for m in s["miou_per_seed"])
                t = f"{s['miou_teacher_mean']:.2f}" if s["miou_teacher_mean"] is not None else "-"
                st = f"{s['miou_student_mean']:.2f}" if s["miou_student_mean"] is not None else "-"
                lines.append(
                    f"| {name} | {s['miou_mean']:.2f} ± {s['miou_std']:.2f} | {seeds} | {t} | {st} |"
                )
            src, orc, stvm = (block[k]["miou_mean"] for k in ("source_only", "oracle", "stvm"))
            gap = orc - src
            closed = (stvm - src) / gap * 100 if gap > 0 else float("nan")
            lines += [
                "",
                f"STvM closes {closed:.0f}% of the source-only → oracle gap ({src:.1f} → {orc:.1f}).",
                "",
            ]
            names = list(block["oracle"]["per_class_iou"])
            lines += ["| class | " + " | ".join(block) + " |", "|---|" + "---|" * len(block)]
            for cls in names:
                vals = [block[m]["per_class_iou"].get(cls) for m in block]
                lines.append(
                    f"| {cls} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |"
                )
            lines.append("")
    if sweep:
        lines += [
            "## threshold_st: share of confident pixels kept (Figure 1)",
            "",
            "| kept | mIoU |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.2f} |" for k, v in sweep.items()] + [""]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path(".stvm_cache"))  # shared with `stvm demo`
    ap.add_argument("--no-figures", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    plan = Plan.quick() if args.quick else Plan()
    t0 = time.perf_counter()
    table = run_table(plan, args.cache)
    sweep = run_sweep(plan, args.cache)
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    # accuracy.json is exactly {arch: {domain: {method: {...}}}}; the rest goes to a sidecar.
    (RESULTS / f"accuracy{suffix}.json").write_text(json.dumps(table, indent=1))
    extra: dict[str, Any] = {"plan": asdict(plan), "threshold_sweep": sweep}
    if not args.no_figures:
        from accuracy_figures import write_figures  # type: ignore[import-not-found]

        extra["reliability_calibration"] = write_figures(plan, args.cache, sweep, table, RESULTS, suffix)
    (RESULTS / f"accuracy{suffix}_meta.json").write_text(json.dumps(extra, indent=1))
    write_markdown(plan, table, sweep, RESULTS / f"accuracy{suffix}.md", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
