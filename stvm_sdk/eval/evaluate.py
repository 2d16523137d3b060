"""Evaluate a segmentation model on a labelled folder (mIoU and per-class IoU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor

from stvm_sdk.boundary.labels import check_label_ids
from stvm_sdk.data.frames import FrameFolder, scan_frames
from stvm_sdk.data.images import resize_image
from stvm_sdk.errors import DataError
from stvm_sdk.eval.metrics import confusion_matrix, iou_per_class, mean_iou, miou_bootstrap_std
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.models.io import SegModel


@dataclass
class EvalResult:
    """mIoU (in %) and per-class IoU (in %, None where a class has no IoU) on ``n_images`` frames."""

    miou: float
    per_class_iou: dict[str, float | None]
    n_images: int
    confusion: Tensor = field(repr=False)
    per_frame: Tensor | None = field(default=None, repr=False)  # [N,K,K], with keep_frames=True

    def bootstrap_std(self, resamples: int = 200, seed: int = 0) -> float:
        """Standard deviation of the mIoU (in %) over frame sets resampled with replacement: how much
        the figure owes to which frames were drawn (needs ``keep_frames=True``)."""
        if self.per_frame is None:
            raise ValueError("bootstrap_std needs the per-frame confusions: evaluate with keep_frames=True")
        return 100.0 * miou_bootstrap_std(self.per_frame, resamples, seed)

    def to_dict(self) -> dict:
        return {"miou": self.miou, "per_class_iou": self.per_class_iou, "n_images": self.n_images}


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


def evaluate_frames(
    model: SegModel,
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

    A frame that fails to decode is skipped (and recorded in ``folder.skipped``); label ids outside the
    model's classes are an error unless ``ignore_out_of_range`` (:mod:`stvm_sdk.boundary.labels`).
    """
    frames = folder.labelled[:limit] if limit else folder.labelled
    if not frames:
        raise DataError(f"no labelled frames in {folder.root}: pass a labels folder that mirrors the images")
    module = model.module
    was_training = module.training
    module.eval().to(device)
    conf = torch.zeros(model.num_classes, model.num_classes, dtype=torch.int64)
    kept: list[Tensor] = []
    scored = 0
    try:
        for frame in frames:
            native = folder.load(frame, None, with_label=True)
            if native is None:
                continue
            image, label = native
            assert label is not None
            label = check_label_ids(
                label, model.num_classes, frame.label, ignore_out_of_range=ignore_out_of_range
            )
            img = resize_image(image, size)
            pred = predict(model, img[None].to(device), out_size=(label.shape[-2], label.shape[-1]))[0].cpu()
            frame_conf = confusion_matrix(pred, label, model.num_classes)
            conf += frame_conf
            if keep_frames:
                kept.append(frame_conf)
            scored += 1
    finally:
        module.train(was_training)
    if scored == 0:
        raise DataError(f"none of the {len(frames)} labelled frames in {folder.root} could be decoded")
    result = result_from_confusion(conf, model.class_names, scored)
    result.per_frame = torch.stack(kept) if keep_frames else None
    return result


def evaluate(
    model: SegModel,
    images_dir: str | Path,
    labels_dir: str | Path,
    **kwargs: Any,
) -> EvalResult:
    """Scan ``images_dir``/``labels_dir`` and evaluate ``model`` on every labelled frame."""
    folder = scan_frames(images_dir, labels_dir, require_labels=True)
    return evaluate_frames(model, folder, **kwargs)
