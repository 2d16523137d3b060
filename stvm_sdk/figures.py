"""Pictures of a run a person looks at: per-frame panels (image | ground truth | before | after |
reliability) and the run's curves (losses, mean reliability, mixed share) from ``metrics.jsonl``.

Written with matplotlib's Agg backend (no display needed) into ``<run>/figures/``. Matplotlib's own
messages never reach the user's terminal (:func:`quiet_matplotlib`): the CLI logs at INFO, and
matplotlib logs its font-cache rebuild there ("generated new fontManager").
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from stvm_sdk.boundary.names import output_stems
from stvm_sdk.boundary.outputs import write_bytes_atomic
from stvm_sdk.data.frames import FrameFolder
from stvm_sdk.data.images import resize_image
from stvm_sdk.eval.evaluate import predict
from stvm_sdk.export.palette import colorize, palette_for
from stvm_sdk.models.io import SegModel

LOSSES = ("loss", "loss_st", "loss_metric", "loss_entropy")
RATES = {"mean_weight": "mean reliability weight", "mix_fraction": "share of pixels mixed (MOCM)"}


def quiet_matplotlib() -> None:
    """Keep matplotlib's own log lines off the user's terminal, and give it a cache it can keep.

    Its ``matplotlib.*`` loggers only pass errors: at the CLI's INFO level, the font-cache rebuild
    ("Matplotlib is building the font cache", "generated new fontManager") and the notices about its
    cache folder would print among our lines. Where its default config/cache folder (under HOME) cannot
    be written, ``MPLCONFIGDIR`` points at a per-user folder under the temporary directory, so the
    font cache is built once, not on every run (a user's own ``MPLCONFIGDIR`` is kept).
    """
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    if os.environ.get("MPLCONFIGDIR"):
        return
    try:
        home = Path.home()
        defaults = [
            Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib",
            Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib",
        ]
    except RuntimeError:  # no home directory
        defaults = []
    if defaults and all(_writable_dir(d) for d in defaults):
        return
    own = Path(tempfile.gettempdir()) / f"stvm-matplotlib-{os.getuid() if hasattr(os, 'getuid') else 0}"
    if _writable_dir(own, mode=0o700):
        os.environ["MPLCONFIGDIR"] = str(own)


def _writable_dir(path: Path, mode: int = 0o777) -> bool:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _pyplot() -> Any:
    quiet_matplotlib()
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():  # drawing warns about fonts (missing glyphs): not the user's concern
        warnings.simplefilter("ignore")
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return write_bytes_atomic(buf.getvalue(), path)


def _classes(model: SegModel, image: torch.Tensor, size: tuple[int, int] | None) -> np.ndarray:
    module = model.module
    was_training, device = module.training, next(iter(module.parameters()), torch.zeros(())).device
    module.eval()
    try:
        out = predict(
            model,
            resize_image(image, size)[None].to(device),
            out_size=(int(image.shape[-2]), int(image.shape[-1])),
        )
    finally:
        module.train(was_training)
    return out[0].cpu().numpy().astype(np.uint8)


def _confidence(model: SegModel, image: torch.Tensor) -> np.ndarray:
    """The model's max softmax probability per pixel of one image ``[3,H,W]`` in [0,1]."""
    from stvm_sdk.models.contract import forward_logits, normalize

    module = model.module
    was_training, device = module.training, next(iter(module.parameters()), torch.zeros(())).device
    module.eval()
    try:
        with torch.no_grad():
            logits = forward_logits(module, normalize(image[None].to(device), model.mean, model.std))
    finally:
        module.train(was_training)
    return logits.softmax(1).amax(1)[0].float().cpu().numpy()


def frame_panels(
    folder: FrameFolder,
    before: SegModel,
    after: SegModel,
    out_dir: Path,
    *,
    reliability: Any = None,
    n: int = 4,
    size: tuple[int, int] | None = None,
    after_name: str = "after",
) -> list[Path]:
    """One PNG per frame for ``n`` frames spread over ``folder`` (labelled ones first).

    ``reliability(images [1,3,H,W] in [0,1]) -> [1,H,W]`` in [0,1] draws the last panel (STvM's
    metric reliability); without it the panel shows the adapted model's max softmax probability.
    """
    plt = _pyplot()
    pool = folder.labelled or folder.frames
    picks = [pool[i] for i in np.linspace(0, len(pool) - 1, num=min(n, len(pool))).round().astype(int)]
    palette = palette_for(after.num_classes)
    # One panel name per frame of the folder (a.png and a.jpg: panel_a_png, panel_a_jpg), never shared.
    flat = output_stems([PurePosixPath("_".join(f.rel.parts)) for f in folder.frames])
    names = {f.rel: name for f, name in zip(folder.frames, flat, strict=True)}
    written = []
    for frame in dict.fromkeys(picks):
        loaded = folder.load(frame, None, with_label=True)
        if loaded is None:
            continue
        image, label = loaded
        panels: list[tuple[str, np.ndarray, str | None]] = [
            ("image", (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), None)
        ]
        if label is not None:
            panels.append(("ground truth", colorize(label.numpy().astype(np.uint8), palette), None))
        panels.append(("before (source model)", colorize(_classes(before, image, size), palette), None))
        panels.append((after_name, colorize(_classes(after, image, size), palette), None))
        if reliability is not None:
            rel = reliability(image[None])[0].cpu().numpy()
            panels.append(("reliability (teacher's pseudo-labels)", rel, "viridis"))
        else:
            panels.append(("confidence (max softmax)", _confidence(after, image), "viridis"))
        fig, axes = plt.subplots(
            1, len(panels), figsize=(3.2 * len(panels), 3.2 * image.shape[1] / image.shape[2] + 0.6)
        )
        for ax, (title, arr, cmap) in zip(axes, panels, strict=True):
            ax.imshow(
                arr, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None, interpolation="nearest"
            )
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle(frame.rel.as_posix(), fontsize=9)
        written.append(_save(fig, out_dir / f"panel_{names[frame.rel]}.png"))
    return written


def curves(metrics_jsonl: Path, out: Path, label_free: dict[str, Any] | None = None) -> Path | None:
    """Losses and rates against the step, from a run's ``metrics.jsonl`` (None if it has no record);
    with ``miou`` records (``run.eval_every``) or the summary's ``label_free`` section, a third panel:
    the mIoU on the labelled frames and the validator's score of each candidate."""
    if not metrics_jsonl.is_file():
        return None
    records = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    if not records:
        return None
    plt = _pyplot()
    miou = [(r["step"], r["miou"]) for r in records if isinstance(r.get("miou"), (int, float))]
    scores = [(c["step"], c["score"]) for c in (label_free or {}).get("snapshots", [])]
    panels = 3 if miou or scores else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    ax_loss, ax_rate = axes[0], axes[1]
    for key in LOSSES:
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if pts:
            ax_loss.plot(*zip(*pts, strict=True), marker="." if len(pts) < 30 else None, label=key)
    ax_loss.set_xlabel("step")
    ax_loss.set_title("losses", fontsize=10)
    ax_loss.legend(fontsize=8)
    for key, name in RATES.items():
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if pts:
            ax_rate.plot(*zip(*pts, strict=True), marker="." if len(pts) < 30 else None, label=name)
    ax_rate.set_xlabel("step")
    ax_rate.set_ylim(0, 1)
    ax_rate.set_title("reliability and mixing", fontsize=10)
    if ax_rate.lines:
        ax_rate.legend(fontsize=8)
    if panels == 3:
        _quality_panel(axes[2], miou, scores, label_free or {})
    return _save(fig, out)


def _quality_panel(
    ax: Any, miou: list[tuple[int, float]], scores: list[tuple[int, float]], label_free: dict[str, Any]
) -> None:
    """mIoU on the labelled frames (left axis) and the label-free score of each candidate (right)."""
    ax.set_xlabel("step")
    ax.set_title("mIoU and label-free score", fontsize=10)
    if miou:
        ax.plot(*zip(*miou, strict=True), marker="o", color="tab:blue", label="mIoU (labelled frames)")
        ax.set_ylabel("mIoU", color="tab:blue")
    if scores:
        right = ax.twinx()
        right.plot(*zip(*scores, strict=True), marker="s", color="tab:orange",
                   label=f"{label_free.get('validator')} (held-out, no labels)")  # fmt: skip
        delivered = label_free.get("delivered_step")
        if delivered is not None:
            right.axvline(delivered, color="tab:green", linestyle="--", label=f"delivered: step {delivered}")
        right.set_ylabel("label-free score", color="tab:orange")
        right.legend(fontsize=8, loc="lower right")
    if miou:
        ax.legend(fontsize=8, loc="upper left")


def run_figures(result: Any, before: SegModel, folder: FrameFolder, n: int = 4) -> Path:
    """Panels of ``n`` frames and the curves of an adaptation run, in ``<run>/figures/``."""
    from stvm_sdk.rundir import RunDir

    out = Path(result.run_dir) / "figures"
    device = next(iter(result.model.module.parameters()), torch.zeros(())).device
    has_weights = result.has_pixel_weights  # the method's own (STvM: its reliability), else max-softmax
    frame_panels(
        folder, before, result.model, out, n=n, size=result.config.run.eval_size,
        reliability=(lambda images: result.pixel_weights(images.to(device))[1]) if has_weights else None,
        after_name=f"after ({result.config.method})",
    )  # fmt: skip
    curves(RunDir(result.run_dir).metrics_path, out / "curves.png", result.metrics.get("label_free"))
    return out
