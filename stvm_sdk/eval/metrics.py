"""Confusion matrices and IoU, Cityscapes convention.

IoU_k = TP / (TP + FP + FN) over all evaluated pixels; a class with no ground truth and no
prediction has no IoU (NaN) and is left out of the mean, as in cityscapesscripts.
"""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """``[K,K]`` int64 counts, rows = ground truth, columns = prediction; ignored pixels skipped."""
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long().clamp_(0, num_classes - 1)
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def iou_per_class(conf: Tensor) -> Tensor:
    """Per-class IoU in [0,1] (float64), NaN for classes absent from both GT and predictions."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(conf: Tensor) -> float:
    """Mean IoU over classes that have one (in [0,1])."""
    iou = iou_per_class(conf)
    present = ~torch.isnan(iou)
    return float(iou[present].mean()) if bool(present.any()) else float("nan")


def miou_bootstrap_std(per_frame: Tensor, resamples: int = 200, seed: int = 0) -> float:
    """Std of the mIoU (in [0,1]) over ``resamples`` frame sets drawn with replacement from
    ``per_frame`` (``[N,K,K]`` confusions): the evaluation's own noise, apart from the method's."""
    n = per_frame.shape[0]
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (resamples, n), generator=g)
    counts = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(resamples, n, dtype=torch.float64)
    )
    confs = (counts @ per_frame.reshape(n, -1).double()).view(resamples, *per_frame.shape[1:])
    mious = torch.tensor([mean_iou(c) for c in confs], dtype=torch.float64)
    return float(mious.std(unbiased=True)) if resamples > 1 else 0.0
