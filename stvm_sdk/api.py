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
from stvm_sdk.boundary.args import check_device
from stvm_sdk.boundary.fingerprint import frames_sha256, module_sha256, sha256
from stvm_sdk.config import METHODS, AdaptConfig
from stvm_sdk.data.batches import BatchLoader
from stvm_sdk.data.frames import FrameFolder, image_root, scan_frames
from stvm_sdk.data.images import resize_image
from stvm_sdk.errors import (
    BackendUnavailableError,
    ConfigError,
    DataError,
    DivergedError,
    ModelLoadError,
    StvmError,
)
from stvm_sdk.eval.evaluate import EvalResult, evaluate_frames
from stvm_sdk.method.metric import MetricHead
from stvm_sdk.method.norm import reestimate_bn
from stvm_sdk.method.stvm import Adapter, pseudo_label_reliability
from stvm_sdk.models.contract import get_submodule, normalize
from stvm_sdk.models.io import (
    SegModel,
    from_module,
    load_model,
    require_finite,
    save_model,
    save_torchscript,
)
from stvm_sdk.rundir import KEEP_LAST, RunDir

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


def load_run(run_dir: str | os.PathLike[str], *, trust_pickle: bool = False) -> AdaptResult:
    """Reopen a finished run directory as an :class:`AdaptResult` (models, metrics, metric network).

    Args:
        trust_pickle: allow unpickling models saved as pickles (a user's own ``nn.Module`` class):
            loading a pickle runs code from the file, so only for run folders you made or trust.
    """
    run = RunDir(Path(run_dir))
    if not run.summary_path.is_file():
        raise DataError(f"{run.path} is not a finished run (no summary.json): finish it with --resume first")
    try:
        cfg = AdaptConfig.from_dict(json.loads(run.config_path.read_text()))
        metrics = json.loads(run.summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{run.path} is not a readable run folder: {exc}") from None
    student = load_model(run.model_path("student"), trust_pickle=trust_pickle)
    teacher_path = run.model_path("teacher")
    teacher = load_model(teacher_path, trust_pickle=trust_pickle) if teacher_path.is_file() else None
    model = teacher if (teacher is not None and metrics.get("deliverable") == "teacher") else student
    metric = None
    checkpoint = run.load_checkpoint()
    if cfg.uses_metric and teacher is not None and teacher.classifier is not None and checkpoint is not None:
        state = checkpoint["adapter"]
        head = get_submodule(teacher.module, teacher.classifier)
        metric = MetricHead(head, teacher.num_classes, cfg.metric.embed_dim)
        metric.load_state_dict({k[len("metric.") :]: v for k, v in state.items() if k.startswith("metric.")})
    return AdaptResult(model, teacher, student, run.path, metrics, metric, cfg)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU (logged); an explicit ``cuda`` that is absent is an error."""
    check_device(name)
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
    """Decision 0's batches. Frames of another size than most are resized to it: statistics per channel
    barely move, and a batch of one odd-sized small frame would leave BatchNorm one value per channel."""
    frames = folder.frames[: cfg.run.bn_init_frames]
    sizes = [f.size for f in frames if f.size is not None]
    size = cfg.data.resize or (max(set(sizes), key=sizes.count) if sizes else None)
    for i in range(0, len(frames), batch_size):
        loaded = (folder.load(f, size) for f in frames[i : i + batch_size])
        imgs = [x[0] for x in loaded if x is not None]
        if imgs:
            hw = size or (int(imgs[0].shape[-2]), int(imgs[0].shape[-1]))
            batch = torch.stack([resize_image(x, hw) for x in imgs])
            yield normalize(batch.to(device), model.mean, model.std)


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
    ignore_out_of_range: bool = False,
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
        ignore_out_of_range: score label ids outside the model's classes as ignored instead of
            refusing the labels (:mod:`stvm_sdk.boundary.labels`).

    Raises:
        StvmError: a one-line problem the caller can fix (model file, frames, labels, run folder,
            config); nothing outside the run folder is written.
    """
    cfg = config or AdaptConfig()
    t_start = time.perf_counter()
    source = as_segmodel(
        source_model, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier
    )
    require_finite(source, "adapt it")
    check_method_fits(source, cfg.method)
    folder = scan_frames(target_dir, labels_dir)
    _warn_small_frames(folder, cfg)
    source_path = None if isinstance(source_model, (nn.Module, SegModel)) else Path(source_model)
    inputs = run_inputs(source_path, source, folder)
    with distributed.join(resolve_device(cfg.run.device)) as ddp:  # a world of one without torchrun
        device = ddp.device
        run = ddp.open_run(out_dir, cfg, resume, inputs, (source_path, target_dir, labels_dir))
        before = None
        if labels_dir is not None and ddp.is_main:
            before = _evaluate(source, folder, cfg, device, ignore_out_of_range)
        adapter, start = _build(source, folder, run, cfg, ddp, resume)
        loader = BatchLoader(
            folder.frames,
            batch_size=cfg.data.batch_size,
            crop=cfg.data.crop,
            resize=cfg.data.resize,
            seed=cfg.run.seed,
            workers=cfg.data.workers,
            shard=(ddp.rank, ddp.world),
            on_reject=folder.reject,
        )
        iters = cfg.run.iters if adapter.optimizer is not None else 0
        try:
            _loop(adapter, loader, run, cfg, ddp, start, iters, progress and ddp.is_main, on_log)
        finally:
            loader.close()
        ddp.release(adapter)
    finish = _Finish(source, folder, run, cfg, device, before, iters, t_start, ignore_out_of_range)
    return _finish(adapter, finish, ddp)


# Methods that need what a TorchScript archive cannot give: a hook on the classifier's input (the metric
# network) or changing which parameters train (tent). The others only run the model and update weights.
_NEEDS_EAGER = {
    "stvm": "hooks the classifier",
    "stvm_no_mocm": "hooks the classifier",
    "tent": "re-parametrises BatchNorm",
}


def check_method_fits(model: SegModel, method: str) -> None:
    """Refuse, before any frame is read, a method that cannot run on this kind of model."""
    if isinstance(model.module, torch.jit.ScriptModule) and method in _NEEDS_EAGER:
        fits = [m for m in METHODS if m not in _NEEDS_EAGER]
        raise ConfigError(
            f"--method {method} {_NEEDS_EAGER[method]}, which a TorchScript model does not allow: pass the "
            f"model as a checkpoint dict or (with --trust-pickle) a pickled module, or use --method "
            f"{' | '.join(fits)}"
        )


def run_inputs(source_path: Path | None, source: SegModel, folder: FrameFolder) -> dict[str, Any]:
    """What the run reads, with content fingerprints (recorded in the run; a resume must match)."""
    src: dict[str, str | None]
    if source_path is not None:
        src = {"path": str(source_path), "sha256": sha256(source_path)}
    else:  # an in-memory model: fingerprint its weights
        src = {"path": None, "sha256": module_sha256(source.module)}
    paths = [f.image for f in folder.frames] + [s.path for s in folder.skipped]
    base = image_root(folder.root)
    target = {"path": str(folder.root), "frames": len(paths), "sha256": frames_sha256(sorted(paths), base)}
    return {"source": src, "target": target}


def _warn_small_frames(folder: FrameFolder, cfg: AdaptConfig) -> None:
    """Say when frames are smaller than the crop: they are padded with black borders to fit it."""
    if cfg.data.crop is None:
        return
    ch, cw = cfg.data.crop
    if cfg.data.resize is not None:
        small = folder.frames if (cfg.data.resize[0] < ch or cfg.data.resize[1] < cw) else []
    else:
        small = [f for f in folder.frames if f.size is not None and (f.size[0] < ch or f.size[1] < cw)]
    if small:
        h, w = cfg.data.resize or small[0].size or (0, 0)
        log.warning(
            "%d of %d frames (e.g. %s, %dx%d) are smaller than the crop %dx%d: they are padded with black "
            "borders to fit it; pass --crop HxW (at most the frame size) to train on image content only",
            len(small), len(folder.frames), small[0].rel, h, w, ch, cw,
        )  # fmt: skip


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
    try:
        adapter.load_state_dict(ckpt["adapter"])
        if adapter.optimizer is not None and ckpt.get("optimizer") is not None:
            adapter.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()[:160]
        raise DataError(
            f"the run's checkpoint does not fit this source model ({first}): resume with the run's "
            "--source and --method, or start a new run with another --out"
        ) from None
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
    model: SegModel, folder: FrameFolder, cfg: AdaptConfig, device: torch.device, ignore_out_of_range: bool
) -> EvalResult | None:
    if not folder.labelled:
        return None
    return evaluate_frames(
        model, folder, size=cfg.run.eval_size, device=device, ignore_out_of_range=ignore_out_of_range
    )


@dataclass
class _Finish:
    """What the end of a run needs besides the adapter (so ``_finish`` reads as one list of steps)."""

    source: SegModel
    folder: FrameFolder
    run: RunDir
    cfg: AdaptConfig
    device: torch.device
    before: EvalResult | None
    iters: int
    t_start: float
    ignore_out_of_range: bool


def _finish(adapter: Adapter, f: _Finish, ddp: distributed.DistContext) -> AdaptResult:
    cfg, run = f.cfg, f.run
    adapter.cpu()
    student = replace(f.source, module=adapter.student.eval())
    teacher = replace(f.source, module=adapter.teacher.eval()) if adapter.teacher is not None else None
    model = teacher if (teacher is not None and cfg.deliverable == "teacher") else student
    if not ddp.is_main:  # the same networks as rank 0 (checked); rank 0 writes and evaluates
        return AdaptResult(model, teacher, student, run.path, {"rank": ddp.rank}, adapter.metric, cfg)
    keep = KEEP_LAST
    paths = {
        "model_path": save_model(model, run.model_path("model"), then=keep),
        "student_path": save_model(student, run.model_path("student"), then=keep),
        "teacher_path": save_model(teacher, run.model_path("teacher"), then=keep) if teacher else None,
    }
    try:
        paths["torchscript_path"] = save_torchscript(model, run.torchscript_path, then=keep)
    except StvmError:
        raise  # a write failure (disk full, ...) is the user's to fix, not a model that cannot script
    except Exception as exc:  # not every user model scripts or traces; the checkpoint is the deliverable
        log.warning("TorchScript export skipped: %s", exc)
    _checkpoint(adapter, run, f.iters, ddp.world)
    metrics: dict[str, Any] = {
        "run_dir": str(run.path),
        **{k: str(v) if v else None for k, v in paths.items()},
        "method": cfg.method,
        "deliverable": "teacher" if model is teacher else "student",
        "steps": f.iters,
        "processes": ddp.world,
        "frames_found": f.folder.found,
        "frames_used": f.folder.usable,
        "images_skipped": f.folder.skip_report(),
        "images_seen": f.iters * cfg.data.batch_size * ddp.world,
        "seconds": round(time.perf_counter() - f.t_start, 2),
    }
    if f.before is not None:
        after = _evaluate(model, f.folder, cfg, f.device, f.ignore_out_of_range)
        assert after is not None  # labelled frames exist: `before` was scored on them
        metrics.update(
            miou_before=f.before.miou,
            miou_after=after.miou,
            per_class_iou={"before": f.before.per_class_iou, "after": after.per_class_iou},
            images_evaluated=after.n_images,
        )
    run.write_summary(metrics)
    return AdaptResult(model, teacher, student, run.path, metrics, adapter.metric, cfg)
