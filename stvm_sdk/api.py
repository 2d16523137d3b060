"""``adapt(source_model, target_dir)``: the SDK's main job, top to bottom.

1. load and check the source model (the caller's model is never mutated: we work on a deep copy);
2. scan the target frames (and labels, when given, to evaluate before and after);
3. re-estimate BatchNorm statistics on the target (decision 0) unless resuming;
4. run the adaptation loop, logging every N steps and checkpointing atomically every M steps;
5. save teacher, student and the deliverable; evaluate; return an :class:`AdaptResult`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stvm_sdk.config import AdaptConfig
from stvm_sdk.data.batches import BatchLoader, load_frame, step_generator
from stvm_sdk.data.frames import FrameFolder, scan_frames
from stvm_sdk.errors import BackendUnavailableError, ModelLoadError
from stvm_sdk.eval.evaluate import EvalResult, evaluate_frames
from stvm_sdk.method.metric import MetricHead
from stvm_sdk.method.norm import reestimate_bn
from stvm_sdk.method.stvm import Adapter, pseudo_label_reliability
from stvm_sdk.models.contract import normalize
from stvm_sdk.models.io import SegModel, from_module, load_model, save_model, save_torchscript
from stvm_sdk.rundir import RunDir

log = logging.getLogger("stvm_sdk")


@dataclass
class AdaptResult:
    """What an adaptation run produced."""

    model: SegModel  # the deliverable (decision 10)
    teacher: SegModel | None
    student: SegModel
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    metric: MetricHead | None = None  # STvM's metric network + proxies (for reliability maps)
    config: AdaptConfig = field(default_factory=AdaptConfig)

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.pt"


@torch.no_grad()
def reliability_map(result: AdaptResult, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher pseudo-labels ``[B,H,W]`` and their reliability ``[B,H,W]`` in [0,1] for images in [0,1].

    Only STvM runs have a metric network; for other methods this raises ``ValueError``.
    """
    if result.metric is None or result.teacher is None or result.teacher.classifier is None:
        raise ValueError("reliability maps need an STvM run (method stvm or stvm_no_mocm)")
    teacher = result.teacher
    cfg = result.config.reliability
    x = normalize(images, teacher.mean, teacher.std)
    return pseudo_label_reliability(
        teacher.module.eval(), teacher.classifier, result.metric.eval(), x, cfg.mode, cfg.scale
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU (logged); an explicit ``cuda`` that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("no CUDA device: running on CPU with the pure-PyTorch kernels")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"
        )
    return torch.device(name)


def as_segmodel(
    source: nn.Module | SegModel | str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    classifier: str | None = None,
) -> SegModel:
    """Accept a path, an ``nn.Module`` or a :class:`SegModel`; always return an independent copy."""
    if isinstance(source, SegModel):
        if num_classes is not None and num_classes != source.num_classes:
            raise ModelLoadError(
                f"the model has {source.num_classes} classes but num_classes is {num_classes}"
            )
        return source.clone()
    if isinstance(source, nn.Module):
        import copy

        return from_module(copy.deepcopy(source), num_classes=num_classes, classifier=classifier)
    return load_model(source, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier)


def _bn_batches(
    folder: FrameFolder, cfg: AdaptConfig, model: SegModel, device: torch.device
) -> Iterator[torch.Tensor]:
    size = cfg.data.resize
    frames = folder.frames[: cfg.run.bn_init_frames]
    for i in range(0, len(frames), cfg.data.batch_size):
        imgs = [load_frame(f, size)[0] for f in frames[i : i + cfg.data.batch_size]]
        groups: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for img in imgs:  # frames of different sizes go in separate batches
            groups.setdefault(tuple(img.shape), []).append(img)
        for group in groups.values():
            yield normalize(torch.stack(group).to(device), model.mean, model.std)


def adapt(
    source_model: nn.Module | SegModel | str | os.PathLike[str],
    target_dir: str | os.PathLike[str],
    *,
    config: AdaptConfig | None = None,
    labels_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    classifier: str | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> AdaptResult:
    """Adapt a source segmentation model to the unlabeled frames in ``target_dir`` (STvM by default).

    Args:
        source_model: an ``nn.Module`` (never mutated), a :class:`SegModel`, or a model file path.
        target_dir: folder of target frames (any image tree, or a Cityscapes root).
        config: every method decision; defaults to :class:`AdaptConfig()`.
        labels_dir: trainId/Cityscapes labels mirroring ``target_dir``: enables before/after mIoU.
        out_dir: run directory (default ``runs/<method>-<time>``).
        resume: continue the run in ``out_dir`` from its last checkpoint.
        progress: show a progress bar on stderr.
        on_log: called with each metrics record (every ``run.log_every`` steps).
    """
    cfg = config or AdaptConfig()
    t_start = time.perf_counter()
    source = as_segmodel(
        source_model, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier
    )
    folder = scan_frames(target_dir, labels_dir)
    device = resolve_device(cfg.run.device)
    run = RunDir.open(out_dir, cfg, resume)
    before = _evaluate(source, folder, cfg, device) if labels_dir is not None else None

    work = source.clone()
    work.module.to(device)
    checkpoint = run.load_checkpoint() if resume else None
    if checkpoint is None and cfg.bn_init == "target" and cfg.method != "source_only":
        reestimate_bn(work.module, _bn_batches(folder, cfg, work, device))
    adapter = Adapter(
        work.module,
        work.classifier,
        work.num_classes,
        cfg,
        work.mean,
        work.std,
        torch.Generator().manual_seed(cfg.run.seed),
    ).to(device)
    start = 0
    if checkpoint is not None:
        start = _restore(adapter, checkpoint)
        run.truncate_log(start)
    loader = BatchLoader(
        folder.frames,
        batch_size=cfg.data.batch_size,
        crop=cfg.data.crop,
        resize=cfg.data.resize,
        seed=cfg.run.seed,
        workers=cfg.data.workers,
    )
    iters = cfg.run.iters if adapter.optimizer is not None else 0
    try:
        _loop(adapter, loader, run, cfg, device, start, iters, progress, on_log)
    finally:
        loader.close()
    return _finish(adapter, source, folder, run, cfg, device, before, iters, len(loader.failed), t_start)


def _restore(adapter: Adapter, ckpt: dict[str, Any]) -> int:
    adapter.load_state_dict(ckpt["adapter"])
    if adapter.optimizer is not None and ckpt.get("optimizer") is not None:
        adapter.optimizer.load_state_dict(ckpt["optimizer"])
    log.info("resumed from step %d", ckpt["step"])
    return int(ckpt["step"])


def _checkpoint(adapter: Adapter, run: RunDir, step: int) -> None:
    state = {
        "step": step,
        "adapter": adapter.state_dict(),
        "optimizer": adapter.optimizer.state_dict() if adapter.optimizer is not None else None,
    }
    run.save_checkpoint(state)


class _Meter:
    """Accumulates step logs as tensors and syncs with the host only when a record is written."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # per key: some logs exist only after the warm-up
        self.images = 0
        self.t0 = time.perf_counter()

    def add(self, logs: dict[str, torch.Tensor], images: int) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1
        self.images += images

    def record(self, step: int) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": step}
        for k, v in self.sums.items():
            v = v.detach().float().cpu()
            rec[k] = v.tolist() if v.numel() > 1 else float(v) / self.counts[k]
        rec["images_per_s"] = round(self.images / max(time.perf_counter() - self.t0, 1e-9), 3)
        self.__init__()  # type: ignore[misc]
        return rec


def _loop(
    adapter: Adapter,
    loader: BatchLoader,
    run: RunDir,
    cfg: AdaptConfig,
    device: torch.device,
    start: int,
    iters: int,
    progress: bool,
    on_log: Callable[[dict[str, Any]], None] | None,
) -> None:
    from stvm_sdk.progress import progress_bar

    meter = _Meter()
    with progress_bar(total=iters, start=start, enabled=progress, description=cfg.method) as bar:
        for step in range(start, iters):
            images = loader.batch(step).to(device, non_blocking=True)
            logs = adapter.step(images, step, step_generator(cfg.run.seed, step, stream=3))
            meter.add(logs, images.shape[0])
            done = step + 1
            if done % cfg.run.log_every == 0 or done == iters:
                record = meter.record(done)
                run.log(record)
                bar.update(done, record)
                if on_log is not None:
                    on_log(record)
            else:
                bar.update(done, None)
            if done % cfg.run.checkpoint_every == 0 and done < iters:
                _checkpoint(adapter, run, done)


def _evaluate(
    model: SegModel, folder: FrameFolder, cfg: AdaptConfig, device: torch.device
) -> EvalResult | None:
    if not folder.labelled:
        return None
    return evaluate_frames(model, folder, size=cfg.run.eval_size, device=device)


def _finish(
    adapter: Adapter,
    source: SegModel,
    folder: FrameFolder,
    run: RunDir,
    cfg: AdaptConfig,
    device: torch.device,
    before: EvalResult | None,
    iters: int,
    failed: int,
    t_start: float,
) -> AdaptResult:
    adapter.cpu()
    student = replace(source, module=adapter.student.eval())
    teacher = replace(source, module=adapter.teacher.eval()) if adapter.teacher is not None else None
    model = teacher if (teacher is not None and cfg.deliverable == "teacher") else student
    paths = {
        "model_path": save_model(model, run.path / "model.pt"),
        "student_path": save_model(student, run.path / "student.pt"),
        "teacher_path": save_model(teacher, run.path / "teacher.pt") if teacher is not None else None,
    }
    try:
        paths["torchscript_path"] = save_torchscript(model, run.path / "model.ts")
    except Exception as exc:  # not every user model scripts or traces; the checkpoint is the deliverable
        log.warning("TorchScript export skipped: %s", exc)
    _checkpoint(adapter, run, iters)
    metrics: dict[str, Any] = {
        "run_dir": str(run.path),
        **{k: str(v) if v else None for k, v in paths.items()},
        "method": cfg.method,
        "deliverable": "teacher" if model is teacher else "student",
        "steps": iters,
        "images_used": len(folder) - failed,
        "images_skipped": len(folder.skipped) + failed,
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    if before is not None:
        after = evaluate_frames(model, folder, size=cfg.run.eval_size, device=device)
        metrics.update(
            miou_before=before.miou,
            miou_after=after.miou,
            per_class_iou={"before": before.per_class_iou, "after": after.per_class_iou},
            images_evaluated=after.n_images,
        )
    (run.path / "summary.json").write_text(json.dumps(metrics, indent=2))
    return AdaptResult(model, teacher, student, run.path, metrics, adapter.metric, cfg)
