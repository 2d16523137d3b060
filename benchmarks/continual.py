"""Continual adaptation benchmark: one stream, target -> fog -> night -> target, repeated for rounds,
replayed at a fixed frame rate.

    python benchmarks/continual.py            # 2 archs x every row, 10 rounds at 8 frames/s
    python benchmarks/continual.py --quick    # lraspp, seed 0, 2 rounds

The continual protocol of the test-time-adaptation literature (CoTTA) on the synthetic domains: every
frame is seen once, in order; each is predicted by the current deliverable *before* the method adapts
on it, and those online predictions are scored against the frame's label (mIoU per segment and round).
The stream is replayed at ``--fps`` frames per second on this CPU (constant speed,
:class:`stvm_sdk.stream.pace.Pacer`): a frame the predictor cannot serve before the next one arrives is
dropped, counted, and scored by the last prediction served (what the car still shows), so a slow method
pays for its cost in dropped frames. Rows that train adapt asynchronously by default
(:class:`stvm_sdk.stream.asynchronous.AsyncAdapter`: prediction never waits; the worker uses the time
left); ``stvm_sync`` is STvM adapting between frames, ``stvm_off`` the same predictor adapting on nothing
(the latency reference). Forgetting: the method's mIoU on held-out `target` and `source` frames after
the whole sequence against the same predictor before it. Each (arch, row, seed) cell is cached under
--cache as JSON and skipped on re-run. Tuning variants (`--set`, `--method-set`, `--data-seed 20`,
`--tag`) write their own files. Writes benchmarks/results/continual{,_quick}.{md,json}.
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
from stvm_sdk.methods import get_method, resolve  # noqa: E402
from stvm_sdk.stream import OnlineAdapter, StreamConfig, online_config  # noqa: E402
from stvm_sdk.stream.asynchronous import AsyncAdapter  # noqa: E402
from stvm_sdk.stream.pace import Pacer  # noqa: E402
from stvm_sdk.stream.run import StreamTotals, percentile_ms  # noqa: E402
from stvm_sdk.synthetic.cache import DomainSpec, ensure_domain  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Row:
    """One row of the table: a registered method with its own settings."""

    method: str
    config: tuple[tuple[str, Any], ...] = ()  # config keys (inside the method's section or absolute)
    stream: tuple[tuple[str, Any], ...] = ()  # StreamConfig fields
    asynchronous: bool | None = None  # None: the plan's mode (only rows that train differ by mode)
    what: str = ""


ROWS: dict[str, Row] = {
    "source_only": Row("source_only", what="no adaptation"),
    "adabn": Row("adabn", what="BatchNorm statistics follow the stream"),
    "bn_mix_0": Row("bn_mix", (("source_share", 0.0),), what="each frame's own BatchNorm statistics"),
    "bn_mix_0.5": Row("bn_mix", (("source_share", 0.5),), what="statistics 0.5 source + 0.5 frame"),
    "bn_mix_0.8": Row("bn_mix", (("source_share", 0.8),), what="statistics 0.8 source + 0.2 frame"),
    "tent": Row("tent"),
    "soft_teacher": Row("soft_teacher", what="soft-target mean teacher + stochastic restore (CoTTA-lite)"),
    "mean_teacher": Row("mean_teacher"),
    "stvm": Row("stvm"),
    "stvm_reset": Row(
        "stvm", stream=(("reset_every", 100),), what="STvM, reset to the source every 100 frames"
    ),
    "stvm_sync": Row("stvm", asynchronous=False, what="STvM adapting between frames (synchronous)"),
    "stvm_off": Row("stvm", stream=(("every", 10**6),), what="STvM's predictor adapting on nothing"),
}
ONLINE_METHODS = tuple(ROWS)  # the rows this table runs
# Rows whose result depends on the seed (they train): the others run the first seed only.
SEEDED = ("tent", "soft_teacher", "mean_teacher", "stvm")  # the variants of STvM: one seed (the budget)
ARCH_COST = {"lraspp_mobilenet_v3_large": 1.0, "deeplabv3_mobilenet_v3_large": 1.8}
METHOD_COST = {"source_only": 0.05, "adabn": 0.15, "bn_mix": 0.1, "tent": 0.4, "soft_teacher": 0.9,
               "mean_teacher": 1.0, "stvm": 1.1}  # fmt: skip
SHORT = {"lraspp_mobilenet_v3_large": "lraspp", "deeplabv3_mobilenet_v3_large": "deeplabv3"}
# The soft teacher's learning rate, tuned on the tuning stream (data seed 20; continual_tuning.md).
SOFT_TEACHER_LR = 2.5e-4


@dataclass(frozen=True)
class Plan:
    """What the benchmark runs; every number is stated in the report."""

    archs: tuple[str, ...] = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")
    methods: tuple[str, ...] = ONLINE_METHODS  # rows (ROWS)
    seeds: tuple[int, ...] = (0, 1, 2)
    fps: float | None = 8.0  # replay rate (None: unpaced, every frame served whatever it costs)
    asynchronous: bool = True  # rows that train adapt in a worker thread (Row.asynchronous overrides)
    threads: int = 2  # intra-op threads of a paced cell (the whole CPU; async splits them 1 + 1)
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

    def row(self, name: str) -> Row:
        return ROWS.get(name) or Row(name)

    def row_seeds(self, name: str) -> tuple[int, ...]:
        return self.seeds if name in SEEDED or name not in ROWS else self.seeds[:1]

    def row_async(self, name: str) -> bool:
        row = self.row(name)
        trains = get_method(row.method).trains()
        return trains and (self.asynchronous if row.asynchronous is None else row.asynchronous)

    def stream_cfg(self, name: str | None = None) -> StreamConfig:
        over = {**dict(self.stream_over), **dict(self.row(name).stream if name else ())}
        health = {k.split(".", 1)[1]: v for k, v in over.items() if k.startswith("health.")}
        top = {k: v for k, v in over.items() if not k.startswith("health.")}
        cfg = StreamConfig(every=self.every)
        return replace(cfg, **top, health=replace(cfg.health, **health))

    def method_cfg(self, name: str, seed: int) -> Any:
        row = self.row(name)
        method = row.method
        h, _ = self.size
        own: dict[str, Any] = {"mix.patch": max(8, h // 8), "metric.warmup": self.warmup}
        if method == "soft_teacher":
            own["optim.lr"] = SOFT_TEACHER_LR
        over = {
            "run.seed": seed,
            **method_over(method, {**own, **dict(row.config), **dict(self.method_over)}),
        }
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
                "row": asdict(plan.row(method)),
                "async": plan.row_async(method),
                "stream": plan.stream_cfg(method).to_dict(),
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
    """One (arch, row, seed): the whole stream, scored online at the plan's frame rate, plus forgetting
    and costs. ``method`` names a row of :data:`ROWS` (or a registered method with its defaults)."""
    threads = plan.threads if plan.fps else int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
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
    row = plan.row(method)
    adapter = OnlineAdapter(
        source, row.method, config=plan.method_cfg(method, seed), stream=plan.stream_cfg(method), seed=seed
    )
    before = _forget_eval(adapter, eval_folders, plan.n_forget)  # the same predictor before the stream
    stream = []  # every frame decoded before the clock starts: the camera hands frames over decoded
    for r, s, d, i in stream_order(plan):
        loaded = folders[d].load(folders[d].frames[i], None, with_label=True)
        assert loaded is not None and loaded[1] is not None
        stream.append((r, s, *loaded))
    conf = torch.zeros(plan.rounds, len(plan.sequence), k, k, dtype=torch.int64)
    dropped = [[0] * len(plan.sequence) for _ in range(plan.rounds)]
    totals, windows = StreamTotals(k), []
    runner: OnlineAdapter | AsyncAdapter = AsyncAdapter(adapter) if plan.row_async(method) else adapter
    pacer = Pacer(plan.fps) if plan.fps else None
    last: torch.Tensor | None = None
    t_stream = time.perf_counter()
    try:
        for n, (r, s, img, label) in enumerate(stream):
            if pacer is not None and not pacer.admit(n):
                dropped[r][s] += 1
                totals.dropped += 1
                if last is not None:  # scored by what the car still shows
                    conf[r, s] += confusion_matrix(last, label, k)
                continue
            res = runner.step(img)
            last = res.labels.cpu()
            conf[r, s] += confusion_matrix(last, label, k)
            busy = res.busy if isinstance(runner, AsyncAdapter) else None
            late = pacer.late_s if pacer is not None else None
            totals.add(res.predict_s, res.adapt_s if res.adapted and res.adapt_s else None, used=res.used,
                       busy=busy, late_s=late)  # fmt: skip
            if res.window is not None:
                windows.append({**res.window, "round": r, "segment": s})
        stream_s = time.perf_counter() - t_stream
    finally:
        if isinstance(runner, AsyncAdapter):
            windows += runner.close()
    after = _forget_eval(adapter, eval_folders, plan.n_forget)
    exported = _exported_eval(adapter.deliverable(), eval_folders, plan.n_forget)
    seg = [
        [round(100 * mean_iou(conf[r, s]), 3) for s in range(len(plan.sequence))] for r in range(plan.rounds)
    ]
    cost = {"frames": totals.frames, "adapted_frames": totals.adapted, **totals.costs(), "threads": threads}
    if isinstance(runner, AsyncAdapter):  # adaptation ran on the worker: its own times and counts
        cost.update(
            adapt_ms_p50=percentile_ms(runner.adapt_s, 50),
            adapt_ms_p99=percentile_ms(runner.adapt_s, 99),
            adapted_frames=adapter.used_total,
            adapt_ms_per_frame=None,
            adapt_busy_share=round(sum(runner.adapt_s) / stream_s, 3),
        )
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
        "dropped": dropped, "frames_dropped": totals.dropped, "steps": adapter.steps_run,
        "version": runner.version if isinstance(runner, AsyncAdapter) else None,
        "cost": cost,
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


def _health_restores(cell: dict[str, Any]) -> int:
    return sum(not r.get("periodic") for r in cell["restores"])


def _cost(mc: list[dict[str, Any]], key: str) -> float | None:
    """The median over seeds (cells that shared the CPU with other work read slower)."""
    values = [c["cost"].get(key) for c in mc if c["cost"].get(key) is not None]
    return statistics.median(values) if values else None


def _ms(*values: float | None) -> str:
    return " / ".join("-" if v is None else f"{v:.0f}" for v in values)


def report(plan: Plan, cells: list[dict[str, Any]], wall_s: float, jobs: int) -> tuple[str, dict[str, Any]]:
    """The Markdown report and the JSON summary."""
    tag = f"_{plan.tag}" if plan.tag else "_quick" if plan.quick else ""
    scfg = plan.stream_cfg()
    pace = (
        f"replayed at {plan.fps:g} frames/s on this CPU ({plan.threads} intra-op threads per cell; an "
        "asynchronous cell gives the worker one of them): a frame the predictor cannot serve before the "
        "next arrives is dropped and scored by the last prediction served"
        if plan.fps
        else "unpaced (every frame served, whatever adaptation costs)"
    )
    lines = [
        f"# Continual adaptation on a stream{' (quick)' if plan.quick else ''}",
        "",
        f"Generated by `python benchmarks/continual.py{' --quick' if plan.quick else ''}` on "
        f"{platform.machine()} / {platform.processor() or 'cpu'}, CPU only, {jobs} job(s); wall "
        f"{wall_s / 60:.1f} min for this invocation (cached cells are reused), "
        f"{sum(c.get('seconds', 0) for c in cells) / 60:.1f} min of cell time in all.",
        "",
        f"Stream: {' -> '.join(plan.sequence)}, {plan.rounds} rounds of {plan.frames} frames per segment "
        f"({plan.rounds * plan.frames * len(plan.sequence)} frames, each seen once), "
        f"{plan.size[0]}x{plan.size[1]}, synthetic frames of seed {plan.data_seed}, {pace}. Each frame "
        "is predicted by the current deliverable before the method adapts on it; rows that train adapt "
        + (
            "asynchronously (a worker thread; prediction uses the last published weights)"
            if plan.asynchronous
            else "between frames"
        )
        + f" on 1 frame in {plan.every}, batch {scfg.batch_size} from a ring buffer of {scfg.buffer}. "
        "Online mIoU (%) per segment; the sequence mean averages every segment of every round. "
        "Forgetting: the method's predictions after the sequence minus the same predictor before it "
        f"(source weights), on {plan.n_forget} held-out frames of `target` and `source`. Seeds "
        + ", ".join(map(str, plan.seeds))
        + " for the rows that train, the first for the others.",
        "",
        f"Stream settings: {scfg.to_dict()}; metric warm-up {plan.warmup} steps; soft_teacher lr "
        f"{SOFT_TEACHER_LR:g} (tuned on the tuning stream)"
        + (f"; method overrides {dict(plan.method_over)}" if plan.method_over else "")
        + ".",
        "",
        "Columns: `dropped` frames not served in time (mean over seeds); `steps` training steps taken; "
        "`restores` by the health rule (periodic resets not counted); `predict` the prediction's compute "
        "time p50 / p99 over all frames, and p99 of the predictions made while the worker was adapting; "
        "`latency p99` from a frame's arrival to its labels; `adapt` one adaptation (p50 / p99).",
        "",
    ]
    summary: dict[str, Any] = {"plan": asdict(plan), "wall_s": round(wall_s, 1), "blocks": {}}
    domains = list(dict.fromkeys(plan.sequence))
    for arch in plan.archs:
        rows = [c for c in cells if c["arch"] == arch]
        if not rows:
            continue
        lines += [
            f"## {SHORT.get(arch, arch)}",
            "",
            "| row | mode | sequence mean | " + " | ".join(domains) + " | round 1 | last round | "
            "forgetting target | forgetting source | dropped | steps | restores | predict ms p50 / p99 / "
            "p99 adapting | latency p99 ms | adapt ms p50 / p99 | seeds |",
            "|---" * (15 + len(domains)) + "|",
        ]
        block: dict[str, Any] = {}
        for method in plan.methods:
            mc = [c for c in rows if c["method"] == method]
            if not mc:
                continue
            seq = [c["sequence_mean"] for c in mc]
            dom = {d: [c["domain_mean"][d] for c in mc] for d in domains}
            r1 = [c["round_mean"][0] for c in mc]
            rl = [c["round_mean"][-1] for c in mc]
            ft = [c["forgetting"]["target"] for c in mc]
            fs = [c["forgetting"]["source"] for c in mc]
            restores = sum(_health_restores(c) for c in mc)
            drop = statistics.fmean(c.get("frames_dropped", 0) for c in mc)
            steps = statistics.fmean(c.get("steps", 0) for c in mc)
            mode = (
                "async"
                if _is_async(mc[0])
                else ("sync" if get_method(plan.row(method).method).trains() else "-")
            )
            predict = _ms(
                *(_cost(mc, k) for k in ("predict_ms_p50", "predict_ms_p99", "predict_ms_p99_adapting"))
            )
            lines.append(
                f"| {method} | {mode} | {_mean_std(seq)} | "
                + " | ".join(_mean_std(v) for v in dom.values())
                + f" | {_mean_std(r1)} | {_mean_std(rl)} | {_mean_std(ft)} | {_mean_std(fs)} | "
                f"{drop:.1f} | {steps:.0f} | {restores} | "
                f"{predict} | {_ms(_cost(mc, 'latency_ms_p99'))} | "
                f"{_ms(_cost(mc, 'adapt_ms_p50'), _cost(mc, 'adapt_ms_p99'))} | "
                f"{len(mc)} |"
            )
            block[method] = {
                "mode": mode, "sequence_mean": statistics.fmean(seq), "sequence_mean_per_seed": seq,
                "domain_mean": {d: statistics.fmean(v) for d, v in dom.items()},
                "round_mean": [statistics.fmean(c["round_mean"][r] for c in mc) for r in range(plan.rounds)],
                "forgetting": {"target": statistics.fmean(ft), "source": statistics.fmean(fs)},
                "restores": restores, "unhealthy_windows": sum(c["unhealthy_windows"] for c in mc),
                "frames_dropped": drop, "steps": steps,
                "cost_median": {k: _cost(mc, k) for k in mc[0]["cost"]},
                "memory_bytes": mc[0]["memory_bytes"], "seeds": [c["seed"] for c in mc],
            }  # fmt: skip
        lines += ["", f"Sequence mean per round (mean over seeds), {SHORT.get(arch, arch)}:", ""]
        lines += ["| row | " + " | ".join(f"r{r + 1}" for r in range(plan.rounds)) + " |"]
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


def _is_async(cell: dict[str, Any]) -> bool:
    return bool((cell.get("settings") or {}).get("async", cell.get("version") is not None))


def _verdict(plan: Plan, summary: dict[str, Any]) -> list[str]:
    out = ["## Targets", ""]
    for arch, block in summary["blocks"].items():
        if "stvm" not in block:
            continue
        name = SHORT.get(arch, arch)
        b = block["stvm"]
        s = b["sequence_mean"]
        others = {m: v for m, v in block.items() if plan.row(m).method != "stvm"}
        beats = {m: s - v["sequence_mean"] for m, v in others.items()}
        ok = all(v > 0 for v in beats.values())
        spread = (
            statistics.stdev(b["sequence_mean_per_seed"]) if len(b["sequence_mean_per_seed"]) > 1 else 0.0
        )
        diffs = ", ".join(f"{m} {v:+.2f}" for m, v in beats.items())
        out.append(
            f"- {name}: online STvM {s:.2f} (seed spread {spread:.2f}) on the sequence mean, "
            f"{'above' if ok else 'NOT above'} every other method ({diffs})."
        )
        if not ok:
            best = max(others, key=lambda m: others[m]["sequence_mean"])
            out.append(f"  - the best other row is {best} at {others[best]['sequence_mean']:.2f} "
                       f"({others[best]['sequence_mean'] - s:+.2f} over STvM).")  # fmt: skip
        collapses = {m: v["restores"] for m, v in block.items() if v["restores"]}
        out.append(
            f"- {name}: restores by the health rule over {plan.rounds} rounds: "
            + (", ".join(f"{m} {n}" for m, n in collapses.items()) if collapses else "none")
            + f"; STvM's last round {b['round_mean'][-1]:.2f} vs first {b['round_mean'][0]:.2f}."
        )
        off = block.get("stvm_off")
        p99 = b["cost_median"].get("predict_ms_p99")
        if off and p99 and off["cost_median"].get("predict_ms_p99"):
            p99_off = off["cost_median"]["predict_ms_p99"]
            ratio = p99 / p99_off
            out.append(
                f"- {name}: prediction p99 with asynchronous adaptation {p99:.0f} ms vs {p99_off:.0f} ms "
                f"with adaptation off: {ratio:.2f}x ({'within' if ratio <= 1.2 else 'ABOVE'} the 1.2x "
                "target); "
                f"frames dropped {b['frames_dropped']:.1f} vs {off['frames_dropped']:.1f}."
            )
        sync = block.get("stvm_sync")
        if sync:
            out.append(
                f"- {name}: synchronous STvM at the same rate: {sync['sequence_mean']:.2f} "
                f"({sync['sequence_mean'] - s:+.2f} vs asynchronous), {sync['frames_dropped']:.0f} frames "
                "dropped."
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
    ap.add_argument("--fps", type=float, default=None, help="replay rate (default: the plan's; 0: unpaced)")
    ap.add_argument("--sync", action="store_true", help="rows that train adapt between frames")
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
    if args.fps is not None:
        plan = replace(plan, fps=args.fps or None)
    if args.sync:
        plan = replace(plan, asynchronous=False)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)  # data and source models first, on every core
    _prepare(plan, args.cache)
    if plan.fps and args.jobs > 1:
        ap.error("--jobs > 1 with a paced stream: cells would share the CPU they are timed on")
    todo = [(a, m, s) for a in plan.archs for m in plan.methods for s in plan.row_seeds(m)]
    todo.sort(key=lambda t: (t[2], t[0], -METHOD_COST.get(plan.row(t[1]).method, 1.0)))
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
