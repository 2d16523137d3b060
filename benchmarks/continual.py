"""Continual adaptation benchmark: one stream, target -> fog -> night -> target, repeated for rounds.

    python benchmarks/continual.py            # 2 archs x 5 methods x 3 seeds, 10 rounds
    python benchmarks/continual.py --quick    # lraspp, seed 0, 2 rounds

The continual protocol of the test-time-adaptation literature (CoTTA) on the synthetic domains: every
frame is seen once, in order; each is predicted by the current deliverable *before* the method adapts
on it, and those online predictions are scored against the frame's label (mIoU per segment and round).
Forgetting: the method's mIoU on held-out `target` and `source` frames after the whole sequence against
the same predictor before it (the source weights, in the method's BatchNorm mode). Methods run through
:class:`stvm_sdk.stream.OnlineAdapter` with the same settings as `stvm stream`. Each (arch, method,
seed) cell is cached under --cache as JSON and skipped on re-run. Tuning variants (`--set`,
`--method-set`, `--data-seed 20`, `--tag`) write their own files.
Writes benchmarks/results/continual{,_quick}.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import Plan as AccuracyPlan  # noqa: E402  (the source models are the accuracy benchmark's)
from accuracy import current_config, method_over, source_model  # noqa: E402

from stvm_sdk import load_model  # noqa: E402
from stvm_sdk.data.frames import FrameFolder, scan_frames  # noqa: E402
from stvm_sdk.eval.evaluate import evaluate_frames  # noqa: E402
from stvm_sdk.eval.metrics import confusion_matrix, mean_iou  # noqa: E402
from stvm_sdk.methods import resolve  # noqa: E402
from stvm_sdk.stream import OnlineAdapter, StreamConfig, online_config  # noqa: E402
from stvm_sdk.stream.run import StreamTotals  # noqa: E402
from stvm_sdk.synthetic.cache import DomainSpec, ensure_domain  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ONLINE_METHODS = ("source_only", "adabn", "tent", "mean_teacher", "stvm")  # the methods this table runs
ARCH_COST = {"lraspp_mobilenet_v3_large": 1.0, "deeplabv3_mobilenet_v3_large": 1.8}
METHOD_COST = {"source_only": 0.05, "adabn": 0.15, "tent": 0.4, "mean_teacher": 1.0, "stvm": 1.1}
SHORT = {"lraspp_mobilenet_v3_large": "lraspp", "deeplabv3_mobilenet_v3_large": "deeplabv3"}


@dataclass(frozen=True)
class Plan:
    """What the benchmark runs; every number is stated in the report."""

    archs: tuple[str, ...] = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")
    methods: tuple[str, ...] = ONLINE_METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    sequence: tuple[str, ...] = ("target", "fog", "night", "target")
    rounds: int = 10
    frames: int = 10  # per segment; every frame is new
    every: int = 2  # adapt on every 2nd frame (all are predicted)
    size: tuple[int, int] = (128, 256)
    data_seed: int = 10  # the stream's frames (the accuracy benchmark's data use seed 0)
    n_forget: int = 60  # held-out frames of `target` and `source` for forgetting
    warmup: int = 40  # STvM's metric warm-up in adaptation steps (the accuracy benchmark's)
    stream_over: tuple[tuple[str, Any], ...] = ()  # StreamConfig fields changed (tuning variants)
    # Config keys changed (tuning variants): `optim.lr`, or keys inside a method's section (`mix.tau`)
    # for every method that has that option (accuracy.method_over).
    method_over: tuple[tuple[str, Any], ...] = ()
    tag: str = ""  # results/continual{_tag}.md; tuning runs use their own
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(
            archs=("lraspp_mobilenet_v3_large",), seeds=(0,), rounds=2, frames=8, warmup=10, quick=True
        )

    def source_plan(self) -> AccuracyPlan:
        """The accuracy benchmark's plan: its source models (and cache entries) are reused. --quick
        trains a shorter source model of its own (250 iterations) so a fresh cache fits in 5 minutes."""
        return replace(AccuracyPlan.quick(), source_iters=250) if self.quick else AccuracyPlan()

    def counts(self) -> dict[str, int]:
        """Frames of each domain the stream needs."""
        out: dict[str, int] = {}
        for d in self.sequence:
            out[d] = out.get(d, 0) + self.rounds * self.frames
        return out

    def stream_cfg(self) -> StreamConfig:
        over = dict(self.stream_over)
        health = {k.split(".", 1)[1]: v for k, v in over.items() if k.startswith("health.")}
        top = {k: v for k, v in over.items() if not k.startswith("health.")}
        cfg = StreamConfig(every=self.every)
        return replace(cfg, **top, health=replace(cfg.health, **health))

    def method_cfg(self, method: str, seed: int) -> Any:
        h, _ = self.size
        own = {"mix.patch": max(8, h // 8), "metric.warmup": self.warmup}  # STvM's, where a method has them
        over = {"run.seed": seed, **method_over(method, {**own, **dict(self.method_over)})}
        return resolve(online_config(method).with_overrides(over))[0]


def stream_order(plan: Plan) -> list[tuple[int, int, str, int]]:
    """``(round, segment, domain, index in that domain's frames)`` for every frame, in stream order."""
    used: dict[str, int] = {}
    order = []
    for r in range(plan.rounds):
        for s, d in enumerate(plan.sequence):
            for _ in range(plan.frames):
                order.append((r, s, d, used.get(d, 0)))
                used[d] = used.get(d, 0) + 1
    return order


def _data(plan: Plan, cache: Path) -> dict[str, Path]:
    return {
        d: ensure_domain(DomainSpec(d, "train", n, plan.size, plan.data_seed), cache)
        for d, n in plan.counts().items()
    }


def _eval_roots(plan: Plan, cache: Path) -> dict[str, Path]:
    acc = plan.source_plan()
    return {d: ensure_domain(acc.spec(d, "test"), cache) for d in ("target", "source")}


def _settings(plan: Plan, arch: str, method: str, seed: int) -> dict[str, Any]:
    data = {k: v for k, v in asdict(plan).items() if k not in ("archs", "methods", "seeds")}
    return json.loads(
        json.dumps(
            {
                "plan": data,
                "stream": plan.stream_cfg().to_dict(),
                "method": plan.method_cfg(method, seed).to_dict(),
                "source_train": asdict(plan.source_plan().train_cfg(arch)),
            }
        )
    )


def _cell_path(cache: Path, plan: Plan, arch: str, method: str, seed: int) -> Path:
    tag = plan.tag or ("quick" if plan.quick else "full")
    return cache / "continual" / tag / arch / method / f"seed{seed}.json"


def _forget_eval(adapter: OnlineAdapter, folders: dict[str, FrameFolder], n: int) -> dict[str, float]:
    """mIoU (%) of the adapter's predictions (as on the stream: its BatchNorm mode) on held-out frames."""
    out = {}
    k = adapter.source.num_classes
    for d, folder in folders.items():
        conf = torch.zeros(k, k, dtype=torch.int64)
        for frame in folder.labelled[:n]:
            loaded = folder.load(frame, None, with_label=True)
            assert loaded is not None and loaded[1] is not None
            conf += confusion_matrix(adapter.predict(loaded[0]).cpu(), loaded[1], k)
        out[d] = round(100 * mean_iou(conf), 3)
    return out


def _exported_eval(model: Any, folders: dict[str, FrameFolder], n: int) -> dict[str, float]:
    """mIoU (%) of the deliverable as exported (eval mode: running BatchNorm statistics)."""
    out = {}
    for d, folder in folders.items():
        res = evaluate_frames(model, folder, limit=n)
        out[d] = round(res.miou, 3)
    return out


def run_cell(plan: Plan, cache: Path, arch: str, method: str, seed: int) -> dict[str, Any]:
    """One (arch, method, seed): the whole stream, scored online, plus forgetting and costs."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    path = _cell_path(cache, plan, arch, method, seed)
    settings = _settings(plan, arch, method, seed)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            recorded = cached.get("settings") or {}
            if isinstance(recorded, dict) and "method" in recorded:  # in the config layout of its day
                recorded = {**recorded, "method": current_config(recorded["method"])}
            if recorded == settings:
                return dict(cached)
        except ValueError:
            pass
    t0 = time.perf_counter()
    source = load_model(source_model(plan.source_plan(), arch, cache))
    roots = _data(plan, cache)
    eval_folders = {d: scan_frames(r, r, require_labels=True) for d, r in _eval_roots(plan, cache).items()}
    folders = {d: scan_frames(r, r, require_labels=True) for d, r in roots.items()}
    k = source.num_classes
    adapter = OnlineAdapter(
        source, method, config=plan.method_cfg(method, seed), stream=plan.stream_cfg(), seed=seed
    )
    before = _forget_eval(adapter, eval_folders, plan.n_forget)  # the same predictor before the stream
    conf = torch.zeros(plan.rounds, len(plan.sequence), k, k, dtype=torch.int64)
    totals, windows = StreamTotals(k), []
    for r, s, d, i in stream_order(plan):
        loaded = folders[d].load(folders[d].frames[i], None, with_label=True)
        assert loaded is not None and loaded[1] is not None
        img, label = loaded
        res = adapter.step(img)
        conf[r, s] += confusion_matrix(res.labels.cpu(), label, k)
        totals.add(res.predict_s, res.adapt_s if res.adapted else None)
        if res.window is not None:
            windows.append({**res.window, "round": r, "segment": s})
    stream_s = time.perf_counter() - t0
    after = _forget_eval(adapter, eval_folders, plan.n_forget)
    exported = _exported_eval(adapter.deliverable(), eval_folders, plan.n_forget)
    seg = [
        [round(100 * mean_iou(conf[r, s]), 3) for s in range(len(plan.sequence))] for r in range(plan.rounds)
    ]
    cell = {
        "arch": arch, "method": method, "seed": seed, "settings": settings,
        "segment_miou": seg,  # [round][segment]
        "sequence_mean": round(statistics.fmean(v for row in seg for v in row), 3),
        "domain_mean": {
            d: round(statistics.fmean(row[s] for row in seg for s in _segments(plan, d)), 3)
            for d in dict.fromkeys(plan.sequence)
        },
        "round_mean": [round(statistics.fmean(row), 3) for row in seg],
        "before": before, "after": after,
        "forgetting": {d: round(after[d] - before[d], 3) for d in before},
        "after_exported": exported,  # the deliverable in eval mode (running statistics), as exported
        "restores": adapter.restores,
        "unhealthy_windows": sum(not w["healthy"] for w in windows),
        "windows": windows,
        "cost": {
            "frames": totals.frames, "adapted_frames": totals.adapted, **totals.costs(),
            "threads": torch.get_num_threads(),
        },
        "memory_bytes": adapter.memory_bytes(),
        "seconds": round(time.perf_counter() - t0, 1), "stream_seconds": round(stream_s, 1),
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=1))
    tmp.replace(path)
    return cell


def _segments(plan: Plan, domain: str) -> list[int]:
    return [s for s, d in enumerate(plan.sequence) if d == domain]


def _prepare(plan: Plan, cache: Path) -> None:
    """Data and source models first, in this process (cells then only read the cache)."""
    _data(plan, cache)
    _eval_roots(plan, cache)
    for arch in plan.archs:
        source_model(plan.source_plan(), arch, cache)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(plan: Plan, cells: list[dict[str, Any]], wall_s: float, jobs: int) -> tuple[str, dict[str, Any]]:
    """The Markdown report and the JSON summary."""
    tag = f"_{plan.tag}" if plan.tag else "_quick" if plan.quick else ""
    lines = [
        f"# Continual adaptation on a stream{' (quick)' if plan.quick else ''}",
        "",
        f"Generated by `python benchmarks/continual.py{' --quick' if plan.quick else ''}` on "
        f"{platform.machine()} / {platform.processor() or 'cpu'}, CPU only, {jobs} job(s) of "
        f"{os.environ.get('OMP_NUM_THREADS', '?')} thread(s); wall {wall_s / 60:.1f} min for this invocation "
        f"(cached cells are reused), {sum(c.get('seconds', 0) for c in cells) / 60:.1f} min of cell time "
        "in all.",
        "",
        f"Stream: {' -> '.join(plan.sequence)}, {plan.rounds} rounds of {plan.frames} frames per segment "
        f"({plan.rounds * plan.frames * len(plan.sequence)} frames, each seen once), "
        f"{plan.size[0]}x{plan.size[1]}, "
        f"synthetic frames of seed {plan.data_seed}. Each frame is predicted by the current deliverable "
        f"before the method adapts on it; adaptation on 1 frame in {plan.every}, batch "
        f"{plan.stream_cfg().batch_size} from a ring buffer of {plan.stream_cfg().buffer}. Online mIoU "
        "(%) of those predictions per segment; the sequence mean averages every segment of every round. "
        f"Forgetting: the method's predictions after the sequence minus the same predictor before it "
        f"(source weights), on {plan.n_forget} held-out frames of `target` and `source`. Seeds: "
        + ", ".join(map(str, plan.seeds))
        + ".",
        "",
        f"Stream settings: {plan.stream_cfg().to_dict()}; metric warm-up {plan.warmup} steps"
        + (f"; method overrides {dict(plan.method_over)}" if plan.method_over else "")
        + ".",
        "",
    ]
    summary: dict[str, Any] = {"plan": asdict(plan), "wall_s": round(wall_s, 1), "blocks": {}}
    for arch in plan.archs:
        rows = [c for c in cells if c["arch"] == arch]
        if not rows:
            continue
        lines += [
            f"## {SHORT.get(arch, arch)}",
            "",
            "| method | sequence mean | "
            + " | ".join(dict.fromkeys(plan.sequence))
            + " | round 1 | last round | forgetting target | forgetting source | "
            "unhealthy windows / restores | "
            "predict ms p50/p99 | adapt ms p50/p99 | adapt ms/frame | frames/s (median of seeds) | seeds |",
            "|---" * (12 + len(dict.fromkeys(plan.sequence))) + "|",
        ]
        block: dict[str, Any] = {}
        for method in plan.methods:
            mc = [c for c in rows if c["method"] == method]
            if not mc:
                continue
            seq = [c["sequence_mean"] for c in mc]
            dom = {d: [c["domain_mean"][d] for c in mc] for d in dict.fromkeys(plan.sequence)}
            r1 = [c["round_mean"][0] for c in mc]
            rl = [c["round_mean"][-1] for c in mc]
            ft = [c["forgetting"]["target"] for c in mc]
            fs = [c["forgetting"]["source"] for c in mc]
            restores = sum(len(c["restores"]) for c in mc)
            unhealthy = sum(c["unhealthy_windows"] for c in mc)
            # Costs: the median over seeds (cells that shared the CPU with other work read slower).
            cost = {
                k: (statistics.median(c["cost"][k] for c in mc) if mc[0]["cost"][k] is not None else None)
                for k in mc[0]["cost"]
            }

            def ms(a: str, b: str, cost: dict[str, Any] = cost) -> str:
                return "-" if cost[a] is None else f"{cost[a]:.0f} / {cost[b]:.0f}"

            lines.append(
                f"| {method} | {_mean_std(seq)} | "
                + " | ".join(_mean_std(v) for v in dom.values())
                + f" | {_mean_std(r1)} | {_mean_std(rl)} | {_mean_std(ft)} | {_mean_std(fs)} | "
                f"{unhealthy} / {restores} | "
                f"{ms('predict_ms_p50', 'predict_ms_p99')} | {ms('adapt_ms_p50', 'adapt_ms_p99')} | "
                f"{cost['adapt_ms_per_frame']:.0f} | {cost['fps']:.1f} | {len(mc)} |"
            )
            block[method] = {
                "sequence_mean": statistics.fmean(seq), "sequence_mean_per_seed": seq,
                "domain_mean": {d: statistics.fmean(v) for d, v in dom.items()},
                "round_mean": [statistics.fmean(c["round_mean"][r] for c in mc) for r in range(plan.rounds)],
                "forgetting": {"target": statistics.fmean(ft), "source": statistics.fmean(fs)},
                "restores": restores, "unhealthy_windows": sum(c["unhealthy_windows"] for c in mc),
                "cost_median": cost, "memory_bytes": mc[0]["memory_bytes"], "seeds": [c["seed"] for c in mc],
            }  # fmt: skip
        lines += ["", f"Sequence mean per round (mean over seeds), {SHORT.get(arch, arch)}:", ""]
        lines += ["| method | " + " | ".join(f"r{r + 1}" for r in range(plan.rounds)) + " |"]
        lines += ["|---" * (plan.rounds + 1) + "|"]
        for method, b in block.items():
            lines.append(f"| {method} | " + " | ".join(f"{v:.1f}" for v in b["round_mean"]) + " |")
        lines.append("")
        summary["blocks"][arch] = block
    lines += _verdict(plan, summary)
    summary["cells"] = [{k: v for k, v in c.items() if k not in ("settings", "windows")} for c in cells]
    (RESULTS / f"continual{tag}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"continual{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return "\n".join(lines), summary


def _verdict(plan: Plan, summary: dict[str, Any]) -> list[str]:
    out = ["## Targets", ""]
    for arch, block in summary["blocks"].items():
        if "stvm" not in block:
            continue
        s = block["stvm"]["sequence_mean"]
        beats = {m: s - block[m]["sequence_mean"] for m in ("source_only", "adabn", "tent") if m in block}
        ok = all(v > 0 for v in beats.values())
        diffs = ", ".join(f"{m} {v:+.2f}" for m, v in beats.items())
        out.append(
            f"- {SHORT.get(arch, arch)}: online STvM {s:.2f} on the sequence mean, "
            f"{'above' if ok else 'NOT above'} every baseline listed ({diffs})."
        )
        collapses = {m: b["restores"] for m, b in block.items() if b["restores"]}
        out.append(
            f"- {SHORT.get(arch, arch)}: restores by the health rule over {plan.rounds} rounds: "
            + (", ".join(f"{m} {n}" for m, n in collapses.items()) if collapses else "none")
            + f"; STvM's last round {block['stvm']['round_mean'][-1]:.2f} vs first "
            f"{block['stvm']['round_mean'][0]:.2f}."
        )
    return out + [""]


def tuning_table(cache: Path) -> str:
    """continual_tuning.md: every tuning variant's cells (``--tag tune_*``, cached) side by side."""
    rows = []
    for vdir in sorted((cache / "continual").glob("tune_*")):
        for arch_dir in sorted(p for p in vdir.iterdir() if p.is_dir()):
            cells = {
                c["method"]: c for c in (json.loads(f.read_text()) for f in arch_dir.glob("*/seed*.json"))
            }
            if not cells:
                continue
            any_cell = next(iter(cells.values()))
            s = any_cell["settings"]
            default = StreamConfig().to_dict()
            changed = {k: v for k, v in s["stream"].items() if k != "every" and v != default.get(k)}
            base = online_config("stvm").to_dict()["optim"]
            optim = (current_config(s["method"]) or {}).get("optim", {})
            changed.update({f"optim.{k}": v for k, v in optim.items() if v != base.get(k)})
            plan = s["plan"]
            row = [vdir.name[len("tune_") :], SHORT.get(arch_dir.name, arch_dir.name),
                   f"{plan['rounds']} x {plan['frames']}, seed {plan['data_seed']}",
                   ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"]  # fmt: skip
            row += [f"{cells[m]['sequence_mean']:.2f}" if m in cells else "-" for m in ONLINE_METHODS]
            rows.append("| " + " | ".join(row) + " |")
    head = [
        "# Continual adaptation: tuning variants (tuning stream only)",
        "",
        "Generated by `python benchmarks/continual.py --tuning-table` from the cached cells of runs like",
        "`python benchmarks/continual.py --archs lraspp_mobilenet_v3_large --seeds 0 --rounds 5`",
        "`--data-seed 20 --tag tune_frame --set bn_predict=frame` (2 jobs of 1 thread, this 2-core CPU).",
        "The tuning stream (data seed 20) shares no frame with the table's (seed 10). Sequence mean of",
        "online mIoU (%), seed 0; settings: what differs from today's defaults (`every` = 2 throughout).",
        "",
        "| variant | arch | rounds x frames, stream | settings | " + " | ".join(ONLINE_METHODS) + " |",
        "|---" * (4 + len(ONLINE_METHODS)) + "|",
    ]
    text = "\n".join(head + rows) + "\n"
    (RESULTS / "continual_tuning.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path(".stvm_cache"))  # shared with accuracy.py
    ap.add_argument("--jobs", type=int, default=1, help="cells run in parallel (one thread each)")
    ap.add_argument("--seeds", type=str, default=None, help="comma-separated seeds (default: the plan's)")
    ap.add_argument("--archs", type=str, default=None, help="comma-separated archs (default: the plan's)")
    ap.add_argument("--methods", type=str, default=None, help="comma-separated methods (default: all five)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--data-seed", type=int, default=None, help="another stream (tuning: 20; the table: 10)")
    ap.add_argument("--set", action="append", default=[], help="StreamConfig field=value (a tuning variant)")
    ap.add_argument(
        "--method-set",
        action="append",
        default=[],
        help="config key=value (a variant): optim.lr=..., or mix.tau=... for each method that has it",
    )
    ap.add_argument("--tag", type=str, default="", help="name of this variant's cache and results files")
    ap.add_argument("--tuning-table", action="store_true", help="write continual_tuning.md from the cache")
    args = ap.parse_args(argv)
    if args.tuning_table:
        print(tuning_table(args.cache))
        return 0
    plan = Plan.quick_plan() if args.quick else Plan()
    over = []
    for item in args.set:
        key, _, value = item.partition("=")
        owner, field_name = (
            (StreamConfig().health, key[7:]) if key.startswith("health.") else (StreamConfig(), key)
        )
        over.append((key, type(getattr(owner, field_name))(value)))
    method_over = []
    for item in args.method_set:
        key, _, value = item.partition("=")
        method_over.append((key, json.loads(value)))
    plan = replace(plan, stream_over=tuple(over), method_over=tuple(method_over), tag=args.tag)
    if args.methods:
        plan = replace(plan, methods=tuple(args.methods.split(",")))
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    if args.data_seed is not None:
        plan = replace(plan, data_seed=args.data_seed)
    if args.seeds:
        plan = replace(plan, seeds=tuple(int(s) for s in args.seeds.split(",")))
    if args.archs:
        plan = replace(plan, archs=tuple(args.archs.split(",")))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)  # data and source models first, on every core
    _prepare(plan, args.cache)
    todo = [(a, m, s) for s in plan.seeds for a in plan.archs for m in plan.methods]
    todo.sort(key=lambda t: (t[2], -ARCH_COST.get(t[0], 1.0) * METHOD_COST.get(t[1], 1.0)))
    cells: list[dict[str, Any]] = []
    if args.jobs > 1:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(run_cell, plan, args.cache, *t) for t in todo]
            for f in futures:
                cells.append(f.result())
                print(_line(cells[-1]), flush=True)
    else:
        for t in todo:
            cells.append(run_cell(plan, args.cache, *t))
            print(_line(cells[-1]), flush=True)
    text, _ = report(plan, cells, time.perf_counter() - t0, args.jobs)
    print(text)
    return 0


def _line(c: dict[str, Any]) -> str:
    return (
        f"{SHORT.get(c['arch'], c['arch'])} {c['method']} seed {c['seed']}: "
        f"sequence {c['sequence_mean']:.2f}, "
        f"forgetting {c['forgetting']}, restores {len(c['restores'])}, {c['seconds']:.0f} s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
