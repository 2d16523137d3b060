"""Where the severity ladder's levels sit: the source model on frames blended from `source` to `target`.

    python benchmarks/severity.py --quick                  # the quick plan's source model, 7 levels
    python benchmarks/severity.py --arch A --t 0.3 0.55    # the full plan's model, chosen levels

For each severity t (0 = `source`, 1 = `target`; :func:`stvm_sdk.synthetic.render.styles.blend_styles`)
it renders ``--n`` frames of the ``val`` split in memory and measures, forward passes only:

- ``source_only``: mIoU and pixel accuracy of the plan's source model as it is;
- ``adabn``: the same after BatchNorm re-estimation on those frames, where every self-training method
  starts (decision 0); its pixel accuracy is the pseudo-labels' accuracy at step 0.

An oracle per level would take a training run each; the ladder's named levels (``mild``, ``moderate``)
get theirs in the accuracy table, which reports the measured source/oracle ratio of every block
(``accuracy_meta.json``). This script is what chose their t. Writes
benchmarks/results/severity_<arch>[_quick].{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accuracy import Plan, source_model  # benchmarks/ is on sys.path when this runs as a script

from stvm_sdk import load_model
from stvm_sdk.eval.evaluate import predict
from stvm_sdk.eval.metrics import confusion_matrix, mean_iou
from stvm_sdk.methods.parts.norm import reestimate_bn
from stvm_sdk.models import normalize
from stvm_sdk.synthetic.dataset import frame_rng, render_scene
from stvm_sdk.synthetic.render.styles import SEVERITY, SOURCE, TARGET, blend_styles

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (0.0, 0.15, 0.3, 0.45, 0.55, 0.7, 1.0)


def frames(t: float, n: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` frames of severity ``t`` (the `val` split's seeds): images ``[N,3,H,W]`` and trainIds."""
    style = blend_styles(SOURCE, TARGET, t, f"severity{t:g}", "synthseverity")
    images, labels = [], []
    for i in range(n):
        image, label = render_scene(style, frame_rng(0, "ladder", "val", i), size)  # same seeds per level
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
        labels.append(torch.from_numpy(label).long())
    return torch.stack(images), torch.stack(labels)


@torch.no_grad()
def scores(model: Any, images: torch.Tensor, labels: torch.Tensor, k: int) -> dict[str, float]:
    """mIoU and pixel accuracy (in %) of ``model`` on the frames."""
    conf = torch.zeros(k, k, dtype=torch.long)
    for i in range(0, len(images), 16):
        conf += confusion_matrix(predict(model, images[i : i + 16]), labels[i : i + 16], k)
    return {"miou": 100 * mean_iou(conf), "pixel_accuracy": 100 * float(conf.diag().sum() / conf.sum())}


def level(source_path: Path, t: float, n: int, size: tuple[int, int]) -> dict[str, Any]:
    images, labels = frames(t, n, size)
    model = load_model(source_path)
    model.module.eval()
    k = model.num_classes
    row: dict[str, Any] = {"t": t, "source_only": scores(model, images, labels, k)}
    batches = (normalize(images[i : i + 8], model.mean, model.std) for i in range(0, len(images), 8))
    reestimate_bn(model.module, batches)
    model.module.eval()
    row["adabn"] = scores(model, images, labels, k)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick plan's (smaller) source model")
    ap.add_argument("--arch", default="lraspp_mobilenet_v3_large")
    ap.add_argument("--t", type=float, nargs="+", default=list(LEVELS), help="severities in [0, 1]")
    ap.add_argument("--n", type=int, default=60, help="frames per level")
    ap.add_argument("--cache", type=Path, default=Path(".stvm_cache"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    plan = Plan.quick() if args.quick else Plan()
    path = source_model(plan, args.arch, args.cache)
    rows = [level(path, t, args.n, plan.size) for t in args.t]
    seconds = time.perf_counter() - t0
    named = {v: k for k, v in SEVERITY.items()}
    lines = [
        f"# Severity ladder: {args.arch} source model on frames from `source` (t=0) to `target` (t=1)",
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}; {seconds:.0f} s. {args.n} `val` frames "
        f"per level at {plan.size[0]}x{plan.size[1]}. Named levels: "
        + ", ".join(f"`{k}` t={v}" for k, v in SEVERITY.items())
        + f". Command: `python benchmarks/severity.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        "",
        "| t | level | source-only mIoU | source-only pixel acc. | AdaBN mIoU "
        "| AdaBN pixel acc. (pseudo-labels) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, a = r["source_only"], r["adabn"]
        name = named.get(r["t"], {0.0: "source", 1.0: "target"}.get(r["t"], ""))
        lines.append(
            f"| {r['t']:g} | {name} | {s['miou']:.2f} | {s['pixel_accuracy']:.1f} | {a['miou']:.2f} | "
            f"{a['pixel_accuracy']:.1f} |"
        )
    name = f"severity_{args.arch}{'_quick' if args.quick else ''}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"rows": rows, "seconds": round(seconds, 1)}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
