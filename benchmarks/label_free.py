"""Label-free validators, checked against the labels: which one ranks models like their true mIoU, what the
label-free checkpoint choice loses, and how often the deploy gate fires on healthy and on worse runs.

    python benchmarks/label_free.py             # every block of the accuracy plan (about an hour on 2 cores)
    python benchmarks/label_free.py --quick     # lraspp on `moderate` only
    python benchmarks/label_free.py --runs-only # the adaptation runs (cached), nothing scored

Per block (arch x severity level): the source model, adabn, and each method's run at the shipped defaults
(seed 0) with a snapshot of its deliverable at every step in ``STEPS``, plus runs made worse on purpose
(``@hot``: a learning rate far above the default). Every model is scored twice:

- **true mIoU** on ``--n-test`` labelled frames of the block's `test` split (never seen by a validator);
- **every validator** of :mod:`stvm_sdk.eval.label_free` on ``--n-holdout`` frames of the block's `val`
  split used *without their labels* (frames no run trained on, as the SDK holds out frames of a run).

Reported per block: Spearman's rank correlation of each validator with the true mIoU across methods x
checkpoints; per run the regret of the label-free choice among its snapshots (best true mIoU minus the
chosen one's); and the deploy gate's verdict on every run's delivered model against the source model,
beside whether the run is truly worse than the source model. Each run is cached under --cache and skipped
when its settings are unchanged; scores are cached per model file. Writes
benchmarks/results/label_free[_quick].{md,json}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accuracy import LABEL_FREE_KEYS, Plan, save_frames, source_model  # benchmarks/ is on sys.path
from curves import curve_config, curve_key

from stvm_sdk import AdaptConfig, adapt, evaluate, load_model
from stvm_sdk.data import scan_frames
from stvm_sdk.errors import DivergedError
from stvm_sdk.eval.label_free import VALIDATORS, Outputs, pool_labels, statistics
from stvm_sdk.eval.metrics import _resample_counts, mean_iou_batch, paired_bootstrap_diff
from stvm_sdk.models import SegModel
from stvm_sdk.selection import Judge
from stvm_sdk.stream.settings import HealthRule
from stvm_sdk.synthetic.cache import ensure_domain

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (15, 30, 60, 90, 120)  # snapshots of every run; the last is the run's own deliverable
# (label, method, plan keys): healthy runs at the shipped defaults, and runs made worse on purpose.
RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("adabn", "adabn", {}),  # no step: decision 0's model, where every other run starts (its step 0)
    ("tent", "tent", {}),
    ("threshold_st", "threshold_st", {}),
    ("mean_teacher", "mean_teacher", {}),
    ("stvm", "stvm", {}),
    ("tent@hot", "tent", {"lr": 1e-2}),  # 100 x tent's learning rate
    ("mean_teacher@hot", "mean_teacher", {"optim.lr": 1e-2}),  # 40 x the default
)


# The runs train on every target frame and keep every network they reach: the benchmark scores each
# candidate itself, on its own held-out split (`val`), not the run's own choice.
AS_BEFORE = {"run.holdout": 0.0, "run.deliver": "last"}
CHOICE = AdaptConfig().run.validator  # the shipped validator that chooses the candidate to deliver


def run_key(plan: Plan, arch: str, domain: str, cfg: Any) -> dict[str, Any]:
    """What a run depends on: the resolved config without the keys that only judge its candidates."""
    key = curve_key(plan, arch, domain, cfg, 0)
    for name in LABEL_FREE_KEYS:
        key["config"]["run"].pop(name, None)
    return key


def run_dir(cache: Path, arch: str, domain: str, label: str) -> Path:
    return cache / "label_free" / "runs" / arch / domain / label


def run_once(plan: Plan, cache: Path, arch: str, domain: str, label: str) -> dict[str, Any]:
    """One adaptation run with snapshots (or its cached record): ``{"label", "steps", "paths",
    "diverged"}``."""
    _, method, over = next(r for r in RUNS if r[0] == label)
    cfg = curve_config(plan, arch, method, STEPS, over={**over, **AS_BEFORE})
    key = run_key(plan, arch, domain, cfg)
    out = run_dir(cache, arch, domain, label)
    record = out.parent / f"{label}.json"
    if record.is_file():
        done = json.loads(record.read_text())
        if done.get("key") == key:
            return dict(done)
    t0 = time.perf_counter()
    source = source_model(plan, arch, cache)
    target = ensure_domain(plan.spec(domain, "train"), cache)
    shutil.rmtree(out, ignore_errors=True)
    diverged = None
    try:
        result = adapt(source, target, config=cfg, out_dir=out, progress=False)
        snaps = [(s["step"], s["path"]) for s in result.metrics.get("snapshots", [])]
        snaps.append((int(result.metrics["steps"]), str(result.metrics["model_path"])))
    except DivergedError as exc:  # a run made worse on purpose may stop: its snapshots so far stay
        diverged = str(exc)[:200]
        snaps = [(int(p.stem.split("_")[1]), str(p)) for p in sorted((out / "snapshots").glob("step_*"))]
    done = {"key": key, "label": label, "steps": [s for s, _ in snaps], "paths": [p for _, p in snaps],
            "diverged": diverged, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    record.write_text(json.dumps(done))  # last: the run is finished when its record is there
    return done


def _run_task(args: tuple[Plan, Path, str, str, str]) -> dict[str, Any]:
    plan, cache, arch, domain, label = args
    rec = run_once(plan, cache, arch, domain, label)
    print(f"  {arch} / {domain} / {label}: {rec['seconds']} s", flush=True)
    return rec


def run_all(plan: Plan, cache: Path, jobs: int) -> None:
    """Every block's runs, the slowest first, over ``jobs`` one-thread processes."""
    for _, domain in plan.blocks():
        for split in ("train", "test", "val"):
            ensure_domain(plan.spec(domain, split), cache)
    for arch in plan.archs:
        source_model(plan, arch, cache)
    cost = {"stvm": 3, "mean_teacher": 2, "threshold_st": 2}
    tasks = [(plan, cache, a, d, label) for a, d in plan.blocks() for label, _, _ in RUNS]
    tasks.sort(key=lambda t: -cost.get(t[4].split("@")[0], 1) * (2 if "deeplab" in t[2] else 1))
    if jobs == 1:
        for t in tasks:
            _run_task(t)
        return
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        list(pool.map(_run_task, tasks))


# --- scoring ----------------------------------------------------------------------------------------


def _held_out(plan: Plan, domain: str, cache: Path, n: int) -> torch.Tensor:
    """``[n,3,H,W]`` frames of the block's `val` split, their labels never read."""
    folder = scan_frames(ensure_domain(plan.spec(domain, "val"), cache))
    return torch.stack([x[0] for f in folder.frames[:n] if (x := folder.load(f, None)) is not None])


def score_block(
    plan: Plan, cache: Path, arch: str, domain: str, n_test: int, n_holdout: int
) -> dict[str, Any]:
    """Every model of one block: true mIoU on `test`, every validator on held-out `val` frames, each
    run's label-free choice and the gate's verdict (cached per block, keyed by the runs)."""
    records = [run_once(plan, cache, arch, domain, label) for label, _, _ in RUNS]
    key = {"runs": [r["key"] for r in records], "n_test": n_test, "n_holdout": n_holdout,
           "validators": sorted(VALIDATORS), "version": 2}  # fmt: skip
    out_path = cache / "label_free" / "blocks" / f"{arch}_{domain}.json"
    if out_path.is_file():
        done = json.loads(out_path.read_text())
        if done.get("key") == json.loads(json.dumps(key)):
            return dict(done)
    t0 = time.perf_counter()
    test = ensure_domain(plan.spec(domain, "test"), cache)
    source = load_model(source_model(plan, arch, cache))
    images = _held_out(plan, domain, cache, n_holdout)
    judge = Judge(images, "ensemble", HealthRule(), torch.device("cpu"))
    judge.start(source)
    source_out = judge.source_out
    assert source_out is not None
    models: list[dict[str, Any]] = []
    outputs: list[Outputs] = []
    frames: list[torch.Tensor] = []

    def add(run: str, step: int, model: SegModel) -> None:
        res = evaluate(model, test, test, keep_frames=True, limit=n_test)
        assert res.per_frame is not None
        models.append({"run": run, "step": step, "miou": res.miou})
        frames.append(res.per_frame)
        outputs.append(source_out if run == "source" else judge.outputs_of(model))

    add("source", 0, source)
    for rec in records:
        for step, path in zip(rec["steps"], rec["paths"], strict=True):
            add(rec["label"], step, load_model(path))
    # Spearman across every model of the block: each validator, the ensemble over the block's models
    block_pool = pool_labels(outputs)
    per_validator = {
        v: [statistics(v, o, source_out, pool=block_pool).score() for o in outputs] for v in VALIDATORS
    }
    # Each run's choice among its candidates (its start = adabn, its snapshots, its end), as a run makes
    # it: the ensemble over the run's candidates and the source model; and the gate on what it delivers.
    runs: dict[str, Any] = {}
    start = next(i for i, m in enumerate(models) if m["run"] == "adabn")
    for rec in records[1:]:
        idx = [start] + [i for i, m in enumerate(models) if m["run"] == rec["label"]]
        steps = [0] + [models[i]["step"] for i in idx[1:]]
        choice: dict[str, Any] = {}
        for v in VALIDATORS:
            j = Judge(images, v, HealthRule(), torch.device("cpu"))
            j.source_out, j.outputs = source_out, {s: outputs[i] for s, i in zip(steps, idx, strict=True)}
            best, _ = j.choose("best")
            gates = {str(s): _brief(j.gate(s, 0.0)) for s in steps}  # every candidate, as the gate sees it
            choice[v] = {"chosen": best, "gates": gates}
        truth = {}
        for s, i in zip(steps, idx, strict=True):
            diff, lo, hi = paired_bootstrap_diff(frames[i], frames[0], resamples=500)
            truth[str(s)] = {"miou": models[i]["miou"], "vs_source": [100 * diff, 100 * lo, 100 * hi]}
        runs[rec["label"]] = {"steps": steps, "truth": truth, "choice": choice, "diverged": rec["diverged"]}
    done = {"key": key, "arch": arch, "domain": domain, "models": models, "validators": per_validator,
            "runs": runs, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_frames(torch.stack(frames), out_path.with_suffix(".npz"))  # every model's per-frame confusions
    out_path.write_text(json.dumps(done))
    return done


def _brief(verdict: dict[str, Any]) -> dict[str, Any]:
    return {"gate": verdict["gate"], "difference": verdict["difference"], "interval": verdict["interval"]}


def _score_task(args: tuple[Plan, Path, str, str, int, int]) -> dict[str, Any]:
    res = score_block(*args)
    print(f"  scored {args[2]} / {args[3]}: {res['seconds']} s", flush=True)
    return res


def score_all(plan: Plan, cache: Path, jobs: int, n_test: int, n_holdout: int) -> list[dict[str, Any]]:
    tasks = [(plan, cache, a, d, n_test, n_holdout) for a, d in plan.blocks()]
    if jobs == 1:
        return [_score_task(t) for t in tasks]
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return list(pool.map(_score_task, tasks))


# --- report -----------------------------------------------------------------------------------------


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties share their mean rank)."""

    def ranks(x: list[float]) -> torch.Tensor:
        t = torch.tensor(x, dtype=torch.float64)
        r = torch.empty_like(t)
        r[t.argsort()] = torch.arange(len(x), dtype=torch.float64)
        for v in t.unique():
            tied = t == v
            r[tied] = r[tied].mean()
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def test_noise(
    block: dict[str, Any], path: Path, validator: str, resamples: int = 200
) -> dict[str, Any] | None:
    """How much of a block's Spearman is the `test` frames' noise: the 95 % interval of ``validator``'s
    Spearman over resampled test frames, and the true ranking's own split-half agreement (the models'
    mIoU on the even frames against the odd ones)."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        per_frame = torch.from_numpy(data["per_frame"].astype(np.int64)).double()  # [M,N,K,K]
    m, n, k = per_frame.shape[0], per_frame.shape[1], per_frame.shape[-1]
    counts = _resample_counts(n, resamples, 0)
    confs = torch.einsum("rn,mnk->rmk", counts, per_frame.reshape(m, n, k * k)).view(resamples, m, k, k)
    mious = mean_iou_batch(confs)  # [R,M]
    scores = block["validators"][validator]
    rhos = torch.tensor([spearman(scores, mious[r].tolist()) for r in range(resamples)], dtype=torch.float64)
    lo, hi = torch.quantile(rhos, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    even, odd = mean_iou_batch(per_frame[:, 0::2].sum(1)), mean_iou_batch(per_frame[:, 1::2].sum(1))
    return {"interval": [lo, hi], "split_half": spearman(even.tolist(), odd.tolist())}


def _truly_worse(truth: dict[str, Any]) -> bool:
    """The model's mIoU on `test` is below the source model's, its paired 95 % interval below 0."""
    return bool(truth["vs_source"][2] < 0)


def summarise(blocks: list[dict[str, Any]], cache: Path | None = None) -> dict[str, Any]:
    """Per block and validator: Spearman, mean regret of the choice; the gate's hits and false alarms on
    what the shipped choice delivers and on the last network; with ``cache``, the test frames' noise in
    the shipped validator's Spearman (:func:`test_noise`)."""
    out: dict[str, Any] = {"blocks": {}, "gate": {}}
    # per gate validator and delivered model: [hits, truly worse, false alarms, not worse]
    gate_counts = {v: {k: [0, 0, 0, 0] for k in ("chosen", "last")} for v in VALIDATORS}
    for b in blocks:
        name = f"{b['arch'].split('_')[0]} / {b['domain']}"
        true = [m["miou"] for m in b["models"]]
        row: dict[str, Any] = {"models": len(true), "miou_range": [min(true), max(true)], "spearman": {},
                               "regret": {}, "regret_last": None}  # fmt: skip
        for v in VALIDATORS:
            row["spearman"][v] = spearman(b["validators"][v], true)
        regrets: dict[str, list[float]] = {v: [] for v in VALIDATORS}
        last_regrets = []
        for run in b["runs"].values():
            truth, last = run["truth"], str(max(run["steps"]))
            best = max(t["miou"] for t in truth.values())
            last_regrets.append(best - truth[last]["miou"])
            chosen = str(run["choice"][CHOICE]["chosen"])
            for v in VALIDATORS:
                c = run["choice"][v]
                regrets[v].append(best - truth[str(c["chosen"])]["miou"])
                for kind, step in (("chosen", chosen), ("last", last)):
                    fired = c["gates"][step]["gate"] != "pass"
                    worse = _truly_worse(truth[step])
                    counts = gate_counts[v][kind]
                    counts[0 if worse else 2] += int(fired)
                    counts[1 if worse else 3] += 1
        row["regret"] = {v: sum(r) / len(r) for v, r in regrets.items()}
        row["regret_max"] = {v: max(r) for v, r in regrets.items()}
        row["regret_last"] = sum(last_regrets) / len(last_regrets)
        if cache is not None:
            npz = cache / "label_free" / "blocks" / f"{b['arch']}_{b['domain']}.npz"
            row["noise"] = test_noise(b, npz, CHOICE)
        out["blocks"][name] = row
    out["gate"] = gate_counts
    return out


def _run_minutes(blocks: list[dict[str, Any]], cache: Path) -> float:
    """The adaptation runs' own time, from their cached records."""
    total = 0.0
    for b in blocks:
        for label, _, _ in RUNS:
            record = run_dir(cache, b["arch"], b["domain"], label).parent / f"{label}.json"
            if record.is_file():
                total += float(json.loads(record.read_text()).get("seconds", 0.0))
    return total / 60


def _table_head(title: str, names: list[str], last: str, note: str = "") -> list[str]:
    """A section title, an optional line under it, and the header of a validator x block table."""
    header = "| validator | " + " | ".join(names) + f" | {last} |"
    return [f"## {title}", "", *([note, ""] if note else []), header, "|---|" + "---|" * (len(names) + 1)]


def write_report(blocks: list[dict[str, Any]], plan: Plan, args: argparse.Namespace, seconds: float) -> None:
    summary = summarise(blocks, args.cache)
    names = list(summary["blocks"])
    tag = "_quick" if args.quick else ""
    lines = [
        "# Label-free validators against the labels",
        "",
        f"Machine: {platform.machine()}, {args.jobs} process(es) of 1 thread "
        f"each; torch {torch.__version__}. Compute: {_run_minutes(blocks, args.cache):.0f} min of runs, "
        f"{sum(b['seconds'] for b in blocks) / 60:.0f} min of scoring (per process, as cached); this "
        f"invocation {seconds / 60:.1f} min.",
        f"Command: `python benchmarks/label_free.py{' --quick' if args.quick else ''}`",
        "",
        f"Per block: the source model, adabn and runs of {', '.join(r[0] for r in RUNS[1:])} at the shipped "
        f"defaults (seed 0, {STEPS[-1]} steps, batch 4, 128x256 crops of the block's 200 target frames), "
        f"each run's deliverable kept at steps {', '.join(map(str, STEPS))} and its start (adabn). "
        f"`@hot`: a learning rate far above the default (tent 1e-2, mean teacher optim.lr 1e-2). True mIoU "
        f"on {args.n_test} labelled `test` frames; validators on {args.n_holdout} frames of `val` read "
        "without labels (no run trained on them).",
        "",
        *_table_head(
            "Spearman rank correlation with the true mIoU, across every model of the block", names, "min"
        ),
    ]
    for v in VALIDATORS:
        vals = [summary["blocks"][n]["spearman"][v] for n in names]
        lines.append(f"| {v} | " + " | ".join(f"{x:+.2f}" for x in vals) + f" | {min(vals):+.2f} |")
    lines.append("| models (mIoU range) | " + " | ".join(
        f"{summary['blocks'][n]['models']} ({summary['blocks'][n]['miou_range'][0]:.1f}-"
        f"{summary['blocks'][n]['miou_range'][1]:.1f})" for n in names) + " | |")  # fmt: skip
    noise = [summary["blocks"][n].get("noise") for n in names]
    if any(noise):
        lines.append(
            f"| {CHOICE}: 95 % interval over the test frames | "
            + " | ".join(f"[{x['interval'][0]:+.2f}, {x['interval'][1]:+.2f}]" if x else "-" for x in noise)
            + " | |"
        )
        lines.append("| the true ranking's split-half agreement | " + " | ".join(
            f"{x['split_half']:+.2f}" if x else "-" for x in noise) + " | |")  # fmt: skip
    lines += [
        "",
        *_table_head(
            "Regret of the label-free choice: the run's best candidate minus the chosen one (mIoU points)",
            names,
            "mean",
            "Mean over the block's runs (worst run in brackets); `last` delivers the run's last network.",
        ),
    ]
    for v in VALIDATORS:
        vals = [summary["blocks"][n]["regret"][v] for n in names]
        worst = [summary["blocks"][n]["regret_max"][v] for n in names]
        cells = " | ".join(f"{x:.2f} ({w:.1f})" for x, w in zip(vals, worst, strict=True))
        lines.append(f"| {v} | {cells} | {sum(vals) / len(vals):.2f} |")
    last = [summary["blocks"][n]["regret_last"] for n in names]
    lines.append("| last | " + " | ".join(f"{x:.2f}" for x in last) + f" | {sum(last) / len(last):.2f} |")
    lines += [
        "",
        "## The deploy gate against the source model (fires: `worse_than_source` or `collapsed`)",
        "",
        "Truly worse: the model's mIoU on `test` below the source model's, the paired-bootstrap 95 % "
        "interval over the test frames below 0. Hits: fired on a truly worse model; false alarms: fired "
        "on one that is not. Each row is a gate validator, on the model each run delivers with "
        f"`run.deliver = best` (chosen by `{CHOICE}`, the shipped choice) and with `last`.",
        "",
        "| gate validator | chosen: hits | chosen: false alarms | last: hits | last: false alarms |",
        "|---|---|---|---|---|",
    ]
    for v in VALIDATORS:
        g = summary["gate"][v]
        gate_cells: list[str] = []
        for kind in ("chosen", "last"):
            hit, worse, fa, ok = g[kind]
            gate_cells += [f"{hit}/{worse}", f"{fa}/{ok} ({100 * fa / max(ok, 1):.0f} %)"]
        lines.append(f"| {v} | " + " | ".join(gate_cells) + " |")
    diverged = [f"{b['arch'].split('_')[0]} / {b['domain']} / {k}" for b in blocks
                for k, r in b["runs"].items() if r["diverged"]]  # fmt: skip
    if diverged:
        lines += [
            "",
            f"Runs stopped by the SDK's divergence check (no model delivered): {', '.join(diverged)}.",
        ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"label_free{tag}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"label_free{tag}.json").write_text(
        json.dumps({"summary": summary, "blocks": blocks}, separators=(",", ":"))
    )
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="lraspp on `moderate` only")
    ap.add_argument("--cache", type=Path, default=Path(".stvm_cache"))
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    ap.add_argument("--runs-only", action="store_true", help="the adaptation runs only")
    ap.add_argument("--n-test", type=int, default=300, help="labelled `test` frames per block (true mIoU)")
    ap.add_argument("--n-holdout", type=int, default=32, help="unlabelled `val` frames the validators read")
    args = ap.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    t0 = time.perf_counter()
    run_all(plan, args.cache, args.jobs)
    print(f"runs: {time.perf_counter() - t0:.0f} s on {platform.machine()}", flush=True)
    if args.runs_only:
        return 0
    t1 = time.perf_counter()
    blocks = score_all(plan, args.cache, args.jobs, args.n_test, args.n_holdout)
    print(f"scoring: {time.perf_counter() - t1:.0f} s", flush=True)
    write_report(blocks, plan, args, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
