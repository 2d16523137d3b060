"""``adapt(source_model, target_dir)``: the SDK's main job, top to bottom.

1. load and check the source model (the caller's model is never mutated: we work on a deep copy);
2. scan the target frames (and labels, when given, to evaluate before and after);
3. re-estimate BatchNorm statistics on the target (decision 0) unless resuming;
4. run the adaptation loop, logging every N steps and checkpointing atomically every M steps;
5. save teacher, student and the deliverable; evaluate; return an :class:`AdaptResult`.

Under ``torchrun`` (or ``stvm adapt --nproc-per-node N``) the same function runs in every process,
data-parallel: see :mod:`stvm_sdk.distributed` for what is shared and how. Only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stvm_sdk import distributed
from stvm_sdk.config import AdaptConfig
from stvm_sdk.data.batches import BatchLoader, load_frame
from stvm_sdk.data.frames import FrameFolder, scan_frames
from stvm_sdk.errors import BackendUnavailableError, DataError, DivergedError, ModelLoadError
from stvm_sdk.eval.evaluate import EvalResult, evaluate_frames
from stvm_sdk.method.metric import MetricHead
from stvm_sdk.method.norm import reestimate_bn
from stvm_sdk.method.stvm import Adapter, pseudo_label_reliability
from stvm_sdk.models.contract import get_submodule, normalize
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
    teacher = result.teacher
    if result.metric is None or teacher is None or teacher.classifier is None:
        raise ValueError("reliability maps need an STvM run (method stvm or stvm_no_mocm)")
    cfg = result.config.reliability
    x = normalize(images, teacher.mean, teacher.std)
    return pseudo_label_reliability(
        teacher.module.eval(), teacher.classifier, result.metric.eval(), x, cfg.mode, cfg.scale
    )


def load_run(run_dir: str | os.PathLike[str]) -> AdaptResult:
    """Reopen a finished run directory as an :class:`AdaptResult` (models, metrics, metric network)."""
    run = Path(run_dir)
    if not (run / "summary.json").is_file():
        raise DataError(f"{run} is not a finished run (no summary.json): finish it with --resume first")
    cfg = AdaptConfig.from_dict(json.loads((run / "config.json").read_text()))
    metrics = json.loads((run / "summary.json").read_text())
    student = load_model(run / "student.pt", trust_pickle=True)
    teacher = load_model(run / "teacher.pt", trust_pickle=True) if (run / "teacher.pt").is_file() else None
    model = teacher if (teacher is not None and metrics.get("deliverable") == "teacher") else student
    metric = None
    if cfg.uses_metric and teacher is not None and teacher.classifier is not None:
        state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["adapter"]
        head = get_submodule(teacher.module, teacher.classifier)
        metric = MetricHead(head, teacher.num_classes, cfg.metric.embed_dim)
        metric.load_state_dict({k[len("metric.") :]: v for k, v in state.items() if k.startswith("metric.")})
    return AdaptResult(model, teacher, student, run, metrics, metric, cfg)


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
    folder: FrameFolder, cfg: AdaptConfig, model: SegModel, device: torch.device, batch_size: int
) -> Iterator[torch.Tensor]:
    size = cfg.data.resize
    frames = folder.frames[: cfg.run.bn_init_frames]
    for i in range(0, len(frames), batch_size):
        imgs = [load_frame(f, size)[0] for f in frames[i : i + batch_size]]
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
        on_log: called with each metrics record (every ``run.log_every`` steps; rank 0 only).
    """
    cfg = config or AdaptConfig()
    t_start = time.perf_counter()
    source = as_segmodel(
        source_model, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier
    )
    folder = scan_frames(target_dir, labels_dir)
    with distributed.join(resolve_device(cfg.run.device)) as ddp:  # a world of one without torchrun
        device = ddp.device
        run = ddp.open_run(out_dir, cfg, resume)
        before = _evaluate(source, folder, cfg, device) if labels_dir is not None and ddp.is_main else None
        adapter, start = _build(source, folder, run, cfg, ddp, resume)
        loader = BatchLoader(
            folder.frames,
            batch_size=cfg.data.batch_size,
            crop=cfg.data.crop,
            resize=cfg.data.resize,
            seed=cfg.run.seed,
            workers=cfg.data.workers,
            shard=(ddp.rank, ddp.world),
        )
        iters = cfg.run.iters if adapter.optimizer is not None else 0
        try:
            _loop(adapter, loader, run, cfg, ddp, start, iters, progress and ddp.is_main, on_log)
        finally:
            loader.close()
        ddp.release(adapter)
    return _finish(adapter, source, folder, run, cfg, device, before, iters, len(loader.failed), t_start, ddp)


def _build(
    source: SegModel,
    folder: FrameFolder,
    run: RunDir,
    cfg: AdaptConfig,
    ddp: distributed.DistContext,
    resume: bool,
) -> tuple[Adapter, int]:
    """Teacher, student and metric network from the source model, or from the run's checkpoint."""
    device = ddp.device
    work = source.clone()
    work.module.to(device)
    checkpoint = ddp.on_main(run.load_checkpoint) if resume else None  # rank 0 reads, all receive
    if checkpoint is None and cfg.bn_init == "target" and cfg.method != "source_only":
        # With the global batch (B x world) on every process: the statistics of a one-process run
        # with that batch, identical everywhere. It is one pass without gradients.
        reestimate_bn(work.module, _bn_batches(folder, cfg, work, device, cfg.data.batch_size * ddp.world))
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
        start = _restore(adapter, checkpoint, ddp.world)
        if ddp.is_main:
            run.truncate_log(start)
    ddp.prepare(adapter, cfg)
    return adapter, start


def _restore(adapter: Adapter, ckpt: dict[str, Any], world: int) -> int:
    adapter.load_state_dict(ckpt["adapter"])
    if adapter.optimizer is not None and ckpt.get("optimizer") is not None:
        adapter.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("world", 1) != world:  # allowed (e.g. a GPU was lost), but the global batch changes
        log.warning("resuming a %d-process run with %d processes", ckpt.get("world", 1), world)
    log.info("resumed from step %d", ckpt["step"])
    return int(ckpt["step"])


def _checkpoint(adapter: Adapter, run: RunDir, step: int, world: int) -> None:
    state = {
        "step": step,
        "world": world,  # processes: resuming with another count changes the global batch
        "adapter": adapter.state_dict(),
        "optimizer": adapter.optimizer.state_dict() if adapter.optimizer is not None else None,
    }
    run.save_checkpoint(state)


_Sums = dict[str, torch.Tensor]


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

    def record(self, step: int, reduce: Callable[[_Sums], _Sums]) -> dict[str, Any]:
        """The record for ``step``; ``reduce`` combines the sums over processes first."""
        rec: dict[str, Any] = {"step": step}
        for k, v in reduce(self.sums).items():
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
    ddp: distributed.DistContext,
    start: int,
    iters: int,
    progress: bool,
    on_log: Callable[[dict[str, Any]], None] | None,
) -> None:
    from stvm_sdk.progress import progress_bar

    meter = _Meter()
    with progress_bar(total=iters, start=start, enabled=progress, description=cfg.method) as bar:
        for step in range(start, iters):
            images = loader.batch(step).to(ddp.device, non_blocking=True)
            logs = adapter.step(images, step, *ddp.step_generators(cfg.run.seed, step))
            meter.add(logs, images.shape[0] * ddp.world)
            done = step + 1
            if done % cfg.run.log_every == 0 or done == iters:
                record = meter.record(done, ddp.average_logs)  # every process takes part
                _check_finite(record.get("loss"), done, run)
                if ddp.is_main:
                    run.log(record)
                    if on_log is not None:
                        on_log(record)
                bar.update(done, record)
            else:
                bar.update(done, None)
            if done % cfg.run.checkpoint_every == 0 and done < iters:
                if "loss" in logs:  # never save a diverged state; averaged so every process agrees
                    _check_finite(float(ddp.average_logs({"loss": logs["loss"]})["loss"]), done, run)
                ddp.check_replicas(adapter)  # never save a state the other processes do not hold
                if ddp.is_main:
                    _checkpoint(adapter, run, done, ddp.world)


def _check_finite(loss: float | None, step: int, run: RunDir) -> None:
    """Stop with one actionable line when the loss is NaN/inf (every process sees the same value)."""
    if loss is not None and not math.isfinite(loss):
        raise DivergedError(
            f"adaptation diverged at step {step} (loss {loss}); nothing after the last checkpoint in "
            f'{run.path} was saved. Lower optim.lr, or set student_bn = "train" if the source model\'s '
            "BatchNorm statistics do not suit these frames, and start a new run"
        )


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
    ddp: distributed.DistContext,
) -> AdaptResult:
    adapter.cpu()
    student = replace(source, module=adapter.student.eval())
    teacher = replace(source, module=adapter.teacher.eval()) if adapter.teacher is not None else None
    model = teacher if (teacher is not None and cfg.deliverable == "teacher") else student
    if not ddp.is_main:  # the same networks as rank 0 (checked); rank 0 writes and evaluates
        return AdaptResult(model, teacher, student, run.path, {"rank": ddp.rank}, adapter.metric, cfg)
    paths = {
        "model_path": save_model(model, run.path / "model.pt"),
        "student_path": save_model(student, run.path / "student.pt"),
        "teacher_path": save_model(teacher, run.path / "teacher.pt") if teacher is not None else None,
    }
    try:
        paths["torchscript_path"] = save_torchscript(model, run.path / "model.ts")
    except Exception as exc:  # not every user model scripts or traces; the checkpoint is the deliverable
        log.warning("TorchScript export skipped: %s", exc)
    _checkpoint(adapter, run, iters, ddp.world)
    metrics: dict[str, Any] = {
        "run_dir": str(run.path),
        **{k: str(v) if v else None for k, v in paths.items()},
        "method": cfg.method,
        "deliverable": "teacher" if model is teacher else "student",
        "steps": iters,
        "processes": ddp.world,
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
