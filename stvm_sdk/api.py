"""``adapt(source_model, target_dir)``: the SDK's main job, top to bottom.

1. load and check the source model (the caller's model is never mutated: we work on a deep copy);
2. scan the target frames (and labels, when given, to evaluate before and after);
3. open the run directory (new, or the same run with the same inputs to resume);
4. :mod:`stvm_sdk.loop`: start the method (decision 0's statistics, or the last checkpoint), train
   it, save teacher, student and the deliverable, evaluate; return an :class:`AdaptResult`.

Under ``torchrun`` (or ``stvm adapt --nproc-per-node N``) the same function runs in every process,
data-parallel: see :mod:`stvm_sdk.distributed` for what is shared and how. Only rank 0 writes.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stvm_sdk import distributed, loop
from stvm_sdk.boundary.args import check_device
from stvm_sdk.boundary.fingerprint import frames_sha256, module_sha256, sha256
from stvm_sdk.config import AdaptConfig
from stvm_sdk.data.frames import FrameFolder, image_root, scan_frames
from stvm_sdk.errors import BackendUnavailableError, ConfigError, DataError, ModelLoadError
from stvm_sdk.loop import AdaptResult, Job
from stvm_sdk.methods import get_method, ladder
from stvm_sdk.methods.base import Method
from stvm_sdk.methods.parts.metric import MetricHead
from stvm_sdk.methods.parts.pseudo import pseudo_label_reliability
from stvm_sdk.models.contract import get_submodule, normalize
from stvm_sdk.models.io import SegModel, load_model, require_finite, wrap_module
from stvm_sdk.rundir import RunDir

__all__ = ["AdaptResult", "adapt", "as_segmodel", "load_run", "reliability_map", "resolve_device"]

log = logging.getLogger("stvm_sdk")


@torch.no_grad()
def reliability_map(result: AdaptResult, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher pseudo-labels ``[B,H,W]`` and their reliability ``[B,H,W]`` in [0,1] for images in [0,1].

    Only STvM runs have a metric network; for other methods this raises ``ValueError``.
    """
    teacher = result.teacher
    if not isinstance(result.metric, MetricHead) or teacher is None or teacher.classifier is None:
        raise ValueError("reliability maps need an STvM run (method stvm or stvm_no_mocm)")
    x = normalize(images, teacher.mean, teacher.std)
    return pseudo_label_reliability(
        teacher.module.eval(), teacher.classifier, result.metric.eval(), x, result.config.reliability
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
    state = {
        k[len("metric.") :]: v
        for k, v in (checkpoint or {}).get("adapter", {}).items()
        if k.startswith("metric.")
    }
    if state and teacher is not None and teacher.classifier is not None:  # a run whose method has one
        head = get_submodule(teacher.module, teacher.classifier)
        metric = MetricHead(head, teacher.num_classes, cfg.metric.embed_dim)
        metric.load_state_dict(state)
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
        return wrap_module(copy.deepcopy(source), num_classes=num_classes, classifier=classifier)
    return load_model(source, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier)


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
    method = get_method(cfg.method)
    source = as_segmodel(
        source_model, trust_pickle=trust_pickle, num_classes=num_classes, classifier=classifier
    )
    require_finite(source, "adapt it")
    check_method_fits(source, method)
    folder = scan_frames(target_dir, labels_dir)
    _warn_small_frames(folder, cfg)
    if labels_dir is not None:
        log.info(
            "labels: %d of %d frames have a label in %s (mIoU before/after is scored on those)",
            len(folder.labelled), len(folder.frames), labels_dir,
        )  # fmt: skip
    source_path = None if isinstance(source_model, (nn.Module, SegModel)) else Path(source_model)
    inputs = run_inputs(source_path, source, folder)
    with distributed.join(resolve_device(cfg.run.device)) as ddp:  # a world of one without torchrun
        run = ddp.open_run(out_dir, cfg, resume, inputs, (source_path, target_dir, labels_dir))
        job = Job(cfg, method, source, folder, run, ddp, ignore_out_of_range, t_start)
        before = job.evaluate(source) if labels_dir is not None and ddp.is_main else None
        adapter, step = loop.start(job, resume)
        steps = loop.train(adapter, job, step, progress=progress, on_log=on_log)
        return loop.finish(adapter, job, steps, before)


def check_method_fits(model: SegModel, method: type[Method]) -> None:
    """Refuse, before any frame is read, a method that cannot run on this model or would change nothing
    in it (:meth:`Method.reach`); warn when it touches little of it (e.g. adabn on a LayerNorm model)."""
    if isinstance(model.module, torch.jit.ScriptModule) and method.eager_only:
        fits = [m.name for m in ladder() if not m.eager_only]
        raise ConfigError(
            f"--method {method.name} {method.eager_only}, which a TorchScript model does not allow: pass "
            f"the model as a checkpoint dict or (with --trust-pickle) a pickled module, or use --method "
            f"{' | '.join(fits)}"
        )
    reach = method.reach(model)
    if not reach.fits:  # it would report success and change nothing (or fail mid-run)
        raise ConfigError(f"--method {method.name} cannot adapt this model: it {reach.updates}")
    if reach.weak:
        log.warning("--method %s %s: it touches little of this model", method.name, reach.updates)


def run_inputs(source_path: Path | None, source: SegModel, folder: FrameFolder) -> dict[str, Any]:
    """What the run reads, with content fingerprints (recorded in the run; a resume must match)."""
    return {"source": source_fingerprint(source_path, source), "target": folder_fingerprint(folder)}


def source_fingerprint(source_path: Path | None, source: SegModel) -> dict[str, Any]:
    """The source model's file and SHA-256, or for an in-memory model the SHA-256 of its weights."""
    if source_path is not None:
        return {"path": str(source_path), "sha256": sha256(source_path)}
    return {"path": None, "sha256": module_sha256(source.module)}


def folder_fingerprint(folder: FrameFolder) -> dict[str, Any]:
    """A frames folder: its root, file count and a SHA-256 over every file found (usable or not)."""
    paths = [f.image for f in folder.frames] + [s.path for s in folder.skipped]
    base = image_root(folder.root)
    return {"path": str(folder.root), "frames": len(paths), "sha256": frames_sha256(sorted(paths), base)}


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
