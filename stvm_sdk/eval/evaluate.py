"""Evaluate a segmentation model on a labelled folder (mIoU and per-class IoU)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as nnf
from torch import Tensor

from stvm_sdk.data.batches import load_frame
from stvm_sdk.data.frames import FrameFolder, scan_frames
from stvm_sdk.errors import DataError
from stvm_sdk.eval.metrics import confusion_matrix, iou_per_class, mean_iou
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.models.io import SegModel


@dataclass
class EvalResult:
    """mIoU (in %) and per-class IoU (in %, None where a class has no IoU) on ``n_images`` frames."""

    miou: float
    per_class_iou: dict[str, float | None]
    n_images: int
    confusion: Tensor = field(repr=False)

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
) -> EvalResult:
    """Confusion over the labelled frames of ``folder`` (inference at ``size``, scored at label size)."""
    frames = folder.labelled[:limit] if limit else folder.labelled
    if not frames:
        raise DataError(f"no labelled frames in {folder.root}: pass a labels folder that mirrors the images")
    module = model.module
    was_training = module.training
    module.eval().to(device)
    conf = torch.zeros(model.num_classes, model.num_classes, dtype=torch.int64)
    try:
        for frame in frames:
            img, _ = load_frame(frame, size)
            _, label = load_frame(frame, None, with_label=True)
            assert label is not None
            pred = predict(model, img[None].to(device), out_size=(label.shape[-2], label.shape[-1]))[0].cpu()
            conf += confusion_matrix(pred, label, model.num_classes)
    finally:
        module.train(was_training)
    return result_from_confusion(conf, model.class_names, len(frames))


def evaluate(model: SegModel, images_dir: str | Path, labels_dir: str | Path, **kwargs: object) -> EvalResult:
    """Scan ``images_dir``/``labels_dir`` and evaluate ``model`` on every labelled frame."""
    folder = scan_frames(images_dir, labels_dir, require_labels=True)
    return evaluate_frames(model, folder, **kwargs)  # type: ignore[arg-type]
