"""Is the synthetic shift large, and more than BatchNorm statistics? (the generator's requirement)

For every architecture and target domain of the accuracy benchmark: the source model, the source model
after AdaBN (BN statistics re-estimated on the domain's unlabelled training frames) and the oracle
trained on that domain's labels, all scored on the held-out `test` frames. The generator is required
to give oracle - source >= 20 mIoU on `target`, with AdaBN closing less than half of that gap.

Plan, data, models and scores are the accuracy benchmark's (`benchmarks/accuracy.py`: same sizes,
same cache, same cells), so the two reports cannot disagree. On a cache the full accuracy run filled
this reads its cells in seconds; otherwise it trains what is missing (hours on a small CPU: README.md,
Benchmarks, gives the accuracy run's wall times).

    python benchmarks/domain_gap.py --cache .stvm_cache/fresh
    python benchmarks/domain_gap.py --cache .stvm_cache/fresh --domains target fog night
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accuracy import RESULTS, Plan, cell  # type: ignore[import-not-found]

ROWS = {
    "source_only": "trained on source labels",
    "adabn": "source model, BN statistics re-estimated on the domain's unlabelled training frames",
    "oracle": "trained on the domain's labels",
}
SHIFT = (
    "What differs (see `stvm_sdk/data/synth/styles.py`): per-class materials and palettes (flat, "
    "saturated game colours vs. asphalt, paving, bricks, glass, foliage in a realistic palette where "
    "classes overlap differently), silhouettes and sizes (boxy vs. tapered cars, blocky vs. slim people, "
    "round vs. clumped trees), layout priors (higher camera over wide streets vs. a lower one over "
    "narrow, denser streets with parked cars, clutter and the ego bonnet), sun and cast shadows, and "
    "the camera (blur, noise, vignetting, JPEG, colour response). `fog` and `night` add the weather or "
    "the light on top of `target`."
)


def measure(plan: Plan, cache: Path, domains: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{arch: {domain: {model: {"miou", "per_class_iou"}}}}; seed 0 (all three are deterministic)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for arch in plan.archs:
        for domain in domains:
            row = {m: cell(cache, plan, arch, domain, m, plan.seeds[0], "test") for m in ROWS}
            out.setdefault(arch, {})[domain] = {
                m: {"miou": c["miou"], "per_class_iou": c["per_class_iou"]} for m, c in row.items()
            }
            print(arch, domain, {m: round(c["miou"], 2) for m, c in row.items()}, flush=True)
    return out


def verdict(scores: dict[str, dict[str, Any]]) -> tuple[float, float, bool]:
    """(gap, share of it AdaBN closes, whether the generator's requirement holds)."""
    src, bn, orc = (scores[m]["miou"] for m in ROWS)
    gap = orc - src
    closed = (bn - src) / gap if gap > 0 else float("nan")
    return gap, closed, gap >= 20 and closed < 0.5


def report(plan: Plan, res: dict[str, dict[str, dict[str, Any]]], command: str, wall: float) -> str:
    h, w = plan.size
    lines = [
        "# Synthetic domain gap: how far is each target domain, and how much of it is BN statistics?",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"wall time {wall:.0f} s (cells already in the cache are read, not re-run)  ",
        f"Plan (the accuracy benchmark's): {h}x{w}; models trained {plan.source_iters} iters at batch 8 on "
        f"{plan.n_source} source / {plan.n_target} domain frames; AdaBN on those {plan.n_target} "
        f"unlabelled frames; scored on {plan.n_test} held-out `test` frames per domain.",
        "",
        SHIFT,
        "",
        "Requirement on `target`: oracle - source_only >= 20 mIoU, and AdaBN closing < 50% of that gap.",
        "",
        "| arch | domain | source_only | adabn | oracle | gap | AdaBN closes | requirement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch, by_domain in res.items():
        for domain, scores in by_domain.items():
            gap, closed, ok = verdict(scores)
            met = ("met" if ok else "**not met**") if domain == "target" else "-"
            lines.append(
                f"| {arch} | {domain} | "
                + " | ".join(f"{scores[m]['miou']:.2f}" for m in ROWS)
                + f" | {gap:.2f} | {100 * closed:.0f}% | {met} |"
            )
    for arch, by_domain in res.items():
        if "target" not in by_domain:
            continue
        scores = by_domain["target"]
        lines += ["", f"Per-class IoU, {arch} on `target` (`-` = class absent from the ground truth):", ""]
        lines += ["| class | " + " | ".join(ROWS) + " |", "|---|" + "---|" * len(ROWS)]
        for c in scores["oracle"]["per_class_iou"]:
            vals = [scores[m]["per_class_iou"][c] for m in ROWS]
            lines.append(f"| {c} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path(".stvm_cache"), help="the accuracy benchmark's cache")
    ap.add_argument("--quick", action="store_true", help="the accuracy benchmark's --quick plan")
    ap.add_argument(
        "--domains", nargs="+", default=None, help="default: the plan's ladder (mild, moderate, target, fog)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "domain_gap.md")
    args = ap.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    t0 = time.perf_counter()
    res = measure(plan, args.cache, args.domains or list(plan.domains))
    command = " ".join(["python benchmarks/domain_gap.py", *(sys.argv[1:] if argv is None else argv)])
    text = report(plan, res, command, time.perf_counter() - t0)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
