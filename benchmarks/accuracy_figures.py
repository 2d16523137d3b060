"""Figures for the accuracy benchmark: threshold sweep, reliability vs correctness, qualitative frames.

People look at these before they read the table. Uses matplotlib (dev extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stvm_sdk.data import scan_frames
from stvm_sdk.data.batches import load_frame
from stvm_sdk.eval import predict
from stvm_sdk.eval.error_detection import error_detection
from stvm_sdk.export.palette import colorize, palette_for
from stvm_sdk.models import load_model, normalize
from stvm_sdk.result import AdaptResult, load_run, reliability_map
from stvm_sdk.synthetic.cache import ensure_domain


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sweep_plot(sweep: dict[str, float], reference: dict[str, float], path: Path) -> None:
    """mIoU of threshold_st vs the share of confident pixels kept, with STvM as a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    keep = [float(k) * 100 for k in sweep]
    ax.plot(keep, list(sweep.values()), "o-", label="threshold_st (top-p% confident, weight 1)")
    for k, (name, value) in enumerate(reference.items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{k + 1}", label=name)
    ax.set_xlabel("pseudo-labels kept (%)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Self-training on the top-p% confident pseudo-labels", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def pseudo_labels(run: AdaptResult, eval_root: Path, n: int | None = None) -> dict[str, torch.Tensor]:
    """The teacher's pseudo-labels on up to ``n`` labelled frames, flattened over the valid pixels:
    ``reliability`` (STvM's pixel weight), ``confidence`` (max-softmax) and ``correct`` (bool)."""
    teacher = run.teacher
    assert teacher is not None
    folder = scan_frames(eval_root, eval_root)
    rels, confs, oks = [], [], []
    for frame in folder.labelled[:n]:
        img, label = load_frame(frame, None, with_label=True)
        assert label is not None
        pseudo, rel = reliability_map(run, img[None])
        logits = teacher.module.eval()(normalize(img[None], teacher.mean, teacher.std))
        logits = logits["out"] if isinstance(logits, dict) else logits
        conf = logits.softmax(1).max(1).values
        valid = label != 255
        rels.append(rel[0][valid])
        confs.append(conf[0][valid])
        oks.append(pseudo[0][valid] == label[valid])
    return {"reliability": torch.cat(rels), "confidence": torch.cat(confs), "correct": torch.cat(oks)}


def risk_coverage(score: torch.Tensor, correct: torch.Tensor, points: int = 50) -> list[float]:
    """The risk (share wrong) of the top-scored ``c`` share of pixels at ``points`` even coverages."""
    order = torch.argsort(score.double(), descending=True, stable=True)
    wrong = (~correct[order]).double().cumsum(0)
    idx = (torch.linspace(1 / points, 1, points) * len(order)).long().clamp(1, len(order)) - 1
    return (wrong[idx] / (idx + 1)).tolist()


def pseudo_label_scores(run: AdaptResult, eval_root: Path, n: int | None = None) -> dict[str, Any]:
    """How well reliability and confidence find the wrong pseudo-labels (stvm_sdk.eval.error_detection)."""
    pl = pseudo_labels(run, eval_root, n)
    out: dict[str, Any] = {"pseudo_label_accuracy": float(pl["correct"].double().mean())}
    for name in ("reliability", "confidence"):
        out[name] = error_detection(pl[name], pl["correct"]).to_dict()
        out[name]["risk_coverage"] = risk_coverage(pl[name], pl["correct"])
    return out


def reliability_vs_correctness(run_dir: Path, eval_root: Path, path: Path, bins: int = 10) -> dict[str, Any]:
    """Bin the teacher's pseudo-labels by metric reliability and, for comparison, by the teacher's own
    max-softmax confidence; plot the share that is correct per bin and report each score's AUROC."""
    pl = pseudo_labels(load_run(run_dir), eval_root, 40)
    ok = pl["correct"].numpy()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    centers = (np.arange(bins) + 0.5) / bins
    out: dict[str, Any] = {"pseudo_label_accuracy": float(ok.mean())}
    for k, name in enumerate(("reliability", "confidence")):
        score = pl[name].numpy()
        idx = np.minimum((score * bins).astype(int), bins - 1)
        total = np.bincount(idx, minlength=bins).astype(float)
        correct = np.bincount(idx, weights=ok.astype(float), minlength=bins)
        acc = np.where(total > 0, correct / np.maximum(total, 1), np.nan)
        figures = error_detection(pl[name], pl["correct"])
        ax.bar(
            centers + (k - 0.5) * 0.4 / bins, total / total.sum(), width=0.4 / bins, alpha=0.3, color=f"C{k}"
        )
        label = {"reliability": "metric reliability", "confidence": "teacher confidence"}[name]
        ax.plot(centers, acc, "o-", color=f"C{k}", label=f"{label} (AUROC {figures.auroc:.2f})")
        out[name] = {
            "auroc": figures.auroc, "bin_accuracy": acc.tolist(), "bin_share": (total / total.sum()).tolist()
        }  # fmt: skip
    ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
    ax.set_xlabel("score bin (bars: share of pixels)")
    ax.set_ylabel("pseudo-label accuracy")
    ax.legend(fontsize=7)
    ax.set_title(f"Which pseudo-labels are right? (pixel acc. {100 * ok.mean():.0f}%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return out


def reliability_blocks_plot(reliability: dict[str, Any], path: Path) -> None:
    """One panel per block (arch x domain): risk-coverage of STvM's reliability and of the teacher's
    confidence (lower is better), with each score's AUROC and AUPR of the errors in the legend."""
    blocks = [(a, d, f) for a, by_domain in reliability.items() for d, f in by_domain.items()]
    plt = _plt()
    fig, axes = plt.subplots(1, len(blocks), figsize=(3.6 * len(blocks), 3.2), squeeze=False)
    for ax, (arch, domain, f) in zip(axes[0], blocks, strict=True):
        for k, score in enumerate(("reliability", "confidence")):
            curve = f[f"risk_coverage_{score}"]
            cov = [(i + 1) / len(curve) for i in range(len(curve))]
            label = f"{score} (AUROC {f[f'auroc_{score}']:.3f}, AUPR err {f[f'aupr_errors_{score}']:.2f})"
            ax.plot(cov, curve, color=f"C{k}", label=label)
        ax.set_title(f"{arch.split('_')[0]} / {domain}", fontsize=9)
        ax.set_xlabel("coverage (top-scored share kept)")
        ax.set_ylabel("risk (share of kept pixels wrong)")
        ax.legend(fontsize=6)
    fig.suptitle("Which pseudo-labels are wrong? STvM's reliability vs the teacher's confidence", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def qualitative(run_dir: Path, source_path: Path, eval_root: Path, path: Path, n: int = 3) -> None:
    """image | ground truth | source-only | adapted | reliability (STvM) or teacher confidence."""
    result = load_run(run_dir)
    source = load_model(source_path)
    palette = palette_for(source.num_classes)
    frames = scan_frames(eval_root, eval_root).labelled[:n]
    plt = _plt()
    fig, axes = plt.subplots(n, 5, figsize=(15, 2.1 * n))
    titles = ["image", "ground truth", "source-only", f"adapted ({result.config.method})", ""]
    for row, frame in enumerate(frames):
        img, label = load_frame(frame, None, with_label=True)
        assert label is not None
        x = img[None]
        src = predict(source, x)[0].numpy()
        ada = predict(result.model, x)[0].numpy()
        if result.extras.get("metric") is not None:
            _, rel = reliability_map(result, x)
            extra, titles[4] = rel[0].numpy(), "reliability r"
        else:
            teacher = result.teacher or result.student
            logits = teacher.module.eval()(normalize(x, teacher.mean, teacher.std))
            logits = logits["out"] if isinstance(logits, dict) else logits
            extra, titles[4] = logits.softmax(1).max(1).values[0].numpy(), "confidence (max softmax)"
        gt = colorize(np.where(label.numpy() == 255, 0, label.numpy()), palette)
        gt[label.numpy() == 255] = 0
        panels = [
            (img.permute(1, 2, 0).numpy(), None),
            (gt, None),
            (colorize(src, palette), None),
            (colorize(ada, palette), None),
            (extra, "viridis"),
        ]
        for col, (panel, cmap) in enumerate(panels):
            ax = axes[row, col] if n > 1 else axes[col]
            ax.imshow(panel, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(titles[col], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    from PIL import Image  # a 256-colour palette keeps the committed figures small

    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=256).save(path, optimize=True)


def write_figures(
    plan: Any,
    cache: Path,
    source_path: Path,
    sweep: dict[str, float],
    table: dict[str, Any],
    out: Path,
    suffix: str,
) -> dict[str, Any]:
    """Every figure of the benchmark; returns the reliability-calibration numbers."""
    arch, domain = plan.sweep_arch, plan.domains[0]
    block = table[arch][domain]
    # the sweep is seed 0 only: compare with the same seed of the reference methods
    ref = {
        f"{m}, seed 0 ({block[m]['miou_per_seed'][0]:.1f})": block[m]["miou_per_seed"][0]
        for m in ("stvm", "adabn")
        if m in block
    }
    if sweep:
        sweep_plot(sweep, ref, out / f"threshold_sweep{suffix}.png")
    eval_root = ensure_domain(plan.spec(domain, "test"), cache)
    runs = cache / "runs" / arch / domain / "test"
    calib: dict[str, Any] = {}
    if (runs / "stvm" / "seed0" / "summary.json").is_file():
        calib = reliability_vs_correctness(
            runs / "stvm" / "seed0", eval_root, out / f"reliability{suffix}.png"
        )
    figs = out / f"figures{suffix}"
    figs.mkdir(exist_ok=True)
    for method_dir in sorted(p for p in runs.iterdir() if "@" not in p.name):
        if (method_dir / "seed0" / "summary.json").is_file():
            qualitative(method_dir / "seed0", source_path, eval_root, figs / f"{method_dir.name}.png")
    return calib
