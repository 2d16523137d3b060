"""Evaluate a segmentation model on a labelled folder (mIoU and per-class IoU)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor

from stvm_sdk.boundary.args import check_int
from stvm_sdk.boundary.labels import check_label_ids
from stvm_sdk.data.frames import Frame, FrameFolder, scan_frames
from stvm_sdk.data.images import resize_image
from stvm_sdk.errors import ConfigError, DataError, ModelLoadError
from stvm_sdk.eval.metrics import confusion_matrix, iou_per_class, mean_iou, miou_bootstrap_std
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.models.io import SegModel
from stvm_sdk.runners.base import Runner
from stvm_sdk.runners.contract import sidecar_path


@dataclass
class EvalResult:
    """mIoU (in %) and per-class IoU (in %, None where a class has no IoU) on ``n_images`` frames
    (the labelled frames that decoded; ``frames_labelled`` of the ``frames_found`` image files had a
    label)."""

    miou: float
    per_class_iou: dict[str, float | None]
    n_images: int
    confusion: Tensor = field(repr=False)
    per_frame: Tensor | None = field(default=None, repr=False)  # [N,K,K], with keep_frames=True
    frames_found: int | None = None
    frames_labelled: int | None = None

    def bootstrap_std(self, resamples: int = 200, seed: int = 0) -> float:
        """Standard deviation of the mIoU (in %) over frame sets resampled with replacement: how much
        the figure owes to which frames were drawn (needs ``keep_frames=True``)."""
        if self.per_frame is None:
            raise ValueError("bootstrap_std needs the per-frame confusions: evaluate with keep_frames=True")
        return 100.0 * miou_bootstrap_std(self.per_frame, resamples, seed)

    def to_dict(self) -> dict:
        return {
            "miou": self.miou, "per_class_iou": self.per_class_iou, "n_images": self.n_images,
            "frames_found": self.frames_found, "frames_labelled": self.frames_labelled,
        }  # fmt: skip


def result_from_confusion(conf: Tensor, class_names: list[str], n_images: int) -> EvalResult:
    """Package a confusion matrix as an :class:`EvalResult` (percentages)."""
    iou = iou_per_class(conf)
    per_class = {
        name: (None if torch.isnan(v) else 100.0 * float(v)) for name, v in zip(class_names, iou, strict=True)
    }
    return EvalResult(100.0 * mean_iou(conf), per_class, n_images, conf)


@torch.no_grad()
def predict(model: SegModel, images: Tensor, out_size: tuple[int, int] | None = None) -> Tensor:
    """Class map ``[B,h,w]`` for images ``[B,3,H,W]`` in [0,1]; logits upsampled to ``out_size``."""
    logits = forward_logits(model.module, normalize(images, model.mean, model.std))
    if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
        logits = nnf.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return logits.argmax(1)


def predict_runner(runner: Runner, images: Tensor, out_size: tuple[int, int]) -> Tensor:
    """Class map ``[B,h,w]`` from an exported artifact, scored like :func:`predict`: logits upsampled
    bilinearly to ``out_size`` then argmax; a baked-argmax graph's class ids resized nearest."""
    out = torch.from_numpy(np.asarray(runner(images.numpy())))
    if out.dim() == 3:
        return nnf.interpolate(out[:, None].float(), size=out_size, mode="nearest")[:, 0].long()
    logits = out.float()
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = nnf.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return logits.argmax(1)


def model_classes(model: SegModel | Runner) -> tuple[int, list[str]]:
    """Class count and names of a model, or of an artifact from its sidecar (required for ONNX)."""
    if isinstance(model, SegModel):
        return model.num_classes, model.class_names
    if not model.num_classes:
        raise ModelLoadError(
            f"{model.path.name} states no classes (neither its sidecar {sidecar_path(model.path).name} nor "
            "the graph): keep the .json that stvm export wrote next to it"
        )
    return model.num_classes, model.class_names or [str(k) for k in range(model.num_classes)]


def evaluate_frames(
    model: SegModel | Runner,
    folder: FrameFolder,
    *,
    size: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    ignore_out_of_range: bool = False,
    keep_frames: bool = False,
) -> EvalResult:
    """Confusion over the labelled frames of ``folder`` (inference at ``size``, scored at label size).
    ``keep_frames`` keeps each frame's confusion too (``EvalResult.per_frame``, for bootstrap noise).

    ``model`` is a PyTorch model (run on ``device``) or a runner of an exported artifact (``.onnx``:
    fp32, fp16, INT8, logits or baked argmax); both are scored the same way. A frame that fails to
    decode is skipped (and recorded in ``folder.skipped``); label ids outside the model's classes are an
    error unless ``ignore_out_of_range`` (:mod:`stvm_sdk.boundary.labels`).
    """
    check_int(limit, "limit", 1)
    frames = folder.labelled[:limit] if limit else folder.labelled
    if not frames:
        raise DataError(f"no labelled frames in {folder.root}: pass a labels folder that mirrors the images")
    if not isinstance(model, SegModel):
        run = functools.partial(predict_runner, model)
        size = _artifact_size(model, size)
        return _score(run, model_classes(model), folder, frames, size, ignore_out_of_range, keep_frames)
    module = model.module
    was_training = module.training
    module.eval().to(device)
    try:
        run = functools.partial(_predict_on, model, device)
        return _score(run, model_classes(model), folder, frames, size, ignore_out_of_range, keep_frames)
    finally:
        module.train(was_training)


def _artifact_size(runner: Runner, size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The inference size for an artifact: a graph exported ``--static`` only runs at its own size."""
    fixed = runner.fixed_size
    if fixed is None or size in (None, fixed):
        return fixed
    raise ConfigError(
        f"{runner.path.name} was exported with a static {fixed[0]}x{fixed[1]} input: pass --size "
        f"{fixed[0]}x{fixed[1]} (or leave it out), or export with --dynamic"
    )


def _predict_on(
    model: SegModel, device: str | torch.device, img: Tensor, out_size: tuple[int, int]
) -> Tensor:
    return predict(model, img.to(device), out_size=out_size).cpu()


def _score(
    run: Callable[[Tensor, tuple[int, int]], Tensor],
    classes: tuple[int, list[str]],
    folder: FrameFolder,
    frames: list[Frame],
    size: tuple[int, int] | None,
    ignore_out_of_range: bool,
    keep_frames: bool,
) -> EvalResult:
    """The evaluation loop: ``run(image [1,3,H,W], label size) -> [1,h,w]`` on every labelled frame."""
    num_classes, class_names = classes
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    kept: list[Tensor] = []
    scored = 0
    for frame in frames:
        native = folder.load(frame, None, with_label=True)
        if native is None:
            continue
        image, label = native
        assert label is not None
        label = check_label_ids(label, num_classes, frame.label, ignore_out_of_range=ignore_out_of_range)
        pred = run(resize_image(image, size)[None], (label.shape[-2], label.shape[-1]))[0]
        frame_conf = confusion_matrix(pred, label, num_classes)
        conf += frame_conf
        if keep_frames:
            kept.append(frame_conf)
        scored += 1
    if scored == 0:
        raise DataError(f"none of the {len(frames)} labelled frames in {folder.root} could be decoded")
    result = result_from_confusion(conf, class_names, scored)
    result.per_frame = torch.stack(kept) if keep_frames else None
    result.frames_found, result.frames_labelled = folder.found, len(folder.labelled)
    return result


def open_model(
    path: str | Path, *, trust_pickle: bool = False, device: str | torch.device = "cpu"
) -> SegModel | Runner:
    """A model file as evaluation reads it: a ``.pt`` checkpoint, TorchScript or (with ``trust_pickle``)
    pickle as a PyTorch model; an exported ``.onnx`` (or ``.engine``) through its runner and sidecar."""
    from stvm_sdk.models.io import load_model
    from stvm_sdk.runners.dispatch import backend_of, open_runner

    p = Path(path)
    if backend_of(p) == "torch":
        return load_model(p, trust_pickle=trust_pickle)
    return open_runner(p, device=torch.device(device).type)


def evaluate(
    model: SegModel | Runner,
    images_dir: str | Path,
    labels_dir: str | Path,
    **kwargs: Any,
) -> EvalResult:
    """Scan ``images_dir``/``labels_dir`` and evaluate ``model`` on every labelled frame."""
    folder = scan_frames(images_dir, labels_dir, require_labels=True)
    return evaluate_frames(model, folder, **kwargs)
