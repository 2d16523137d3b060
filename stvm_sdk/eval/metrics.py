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


def mean_iou_batch(confs: Tensor) -> Tensor:
    """:func:`mean_iou` of each confusion in ``[..., K, K]``: a float64 tensor of the leading shape."""
    confs = confs.double()
    tp = confs.diagonal(dim1=-2, dim2=-1)
    denom = confs.sum(-2) + confs.sum(-1) - tp
    present = denom > 0
    iou = torch.where(present, tp / denom.clamp(min=1), torch.zeros_like(tp))
    return iou.sum(-1) / present.sum(-1).clamp(min=1)


def _resample_counts(n: int, resamples: int, seed: int) -> Tensor:
    """``[resamples, n]``: how often each frame is drawn in each resample (with replacement)."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, n, (resamples, n), generator=g)
    return torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(resamples, n, dtype=torch.float64)
    )


def paired_bootstrap_diff(
    a: Tensor, b: Tensor, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """mIoU(a) - mIoU(b) in [0,1] and its percentile-bootstrap interval at ``level``, resampling the
    same frames for both: ``a`` and ``b`` are per-frame confusions ``[N,K,K]`` on the same N frames,
    or ``[S,N,K,K]`` for S runs each (seeds): the figure is then the mean over runs of each side's
    mIoU, every run scored on the same resampled frames. Returns ``(diff, lo, hi)``."""
    if a.shape[-3:] != b.shape[-3:]:
        raise ValueError(f"paired frames differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    a4, b4 = (x.reshape(-1, *x.shape[-3:]).double() for x in (a, b))  # [S,N,K,K]
    n, k = a4.shape[1], a4.shape[-1]
    counts = _resample_counts(n, resamples, seed)  # [R,N]

    def side(x: Tensor) -> Tensor:  # [R]: the mean over runs of each resample's mIoU
        confs = torch.einsum("rn,snk->rsk", counts, x.reshape(x.shape[0], n, k * k))
        return mean_iou_batch(confs.view(resamples, -1, k, k)).mean(1)

    diffs = side(a4) - side(b4)
    full = float(mean_iou_batch(a4.sum(1)).mean() - mean_iou_batch(b4.sum(1)).mean())
    lo, hi = torch.quantile(diffs, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return full, float(lo), float(hi)


def miou_bootstrap_std(per_frame: Tensor, resamples: int = 200, seed: int = 0) -> float:
    """Std of the mIoU (in [0,1]) over ``resamples`` frame sets drawn with replacement from
    ``per_frame`` (``[N,K,K]`` confusions): the evaluation's own noise, apart from the method's."""
    n = per_frame.shape[0]
    counts = _resample_counts(n, resamples, seed)
    confs = (counts @ per_frame.reshape(n, -1).double()).view(resamples, *per_frame.shape[1:])
    mious = torch.tensor([mean_iou(c) for c in confs], dtype=torch.float64)
    return float(mious.std(unbiased=True)) if resamples > 1 else 0.0
