"""Pseudo-labels and their weights: reliability against proxies, label counts, class balance.

Pure torch, no host syncs: the pieces the self-training methods (stvm_sdk.methods) share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from stvm_sdk.kernels import proxy_reliability
from stvm_sdk.methods.parts.metric import MetricHead
from stvm_sdk.models.contract import capture_features, forward_logits

if TYPE_CHECKING:
    from stvm_sdk.methods.parts.options import ReliabilityConfig

IGNORE = 255


def detach_features(features: Any) -> Any:
    if isinstance(features, dict):
        return {k: v.detach() for k, v in features.items()}
    return features.detach()


def reliability(z: Tensor, proxies: Tensor, labels: Tensor, mode: str, scale: float, backend: str) -> Tensor:
    """Reliability ``[B,h,w]`` in [0,1] of pseudo-labels at feature resolution (decision 5), detached."""
    z, proxies = z.detach(), proxies.detach()
    if mode == "softmax":
        return proxy_reliability(z, proxies, labels, scale=scale, backend=backend)[0]
    if mode == "agreement":
        _, nearest = proxy_reliability(z, proxies, labels, scale=scale, backend=backend)
        return (nearest == labels).float()
    cos = torch.einsum(
        "bdhw,bdhw->bhw", z, proxies[labels.clamp(max=proxies.shape[0] - 1)].permute(0, 3, 1, 2)
    )
    return torch.where(labels == IGNORE, torch.zeros_like(cos), (1 + cos) / 2)


# Decision 6's class-balanced ``reliability.normalize`` modes and the power of n_k^-power they weigh by.
CLASS_POWER = {"class": 1.0, "class_sqrt": 0.5}


def label_counts(labels: Tensor) -> Tensor:
    """How many pixels carry each label value: an int64 ``[256]`` tensor (ignore index included).

    A fixed-size scatter, not ``torch.bincount``: on CUDA bincount reads the input's max back to the
    host to size its output, a sync in every training step."""
    flat = labels.flatten().long()
    zeros = torch.zeros(IGNORE + 1, dtype=torch.long, device=flat.device)
    return zeros.index_add_(0, flat, torch.ones_like(flat))


def class_balance(counts: Tensor, num_classes: int, power: float = 1.0) -> Tensor:
    """Weight factor per label value (a ``[256]`` tensor to index with labels) for decision 6's
    class-balanced losses, from :func:`label_counts`: ``f_k = N * n_k^-power / sum_j n_j^(1-power)`` for a
    class k with n_k of the N valid pixels, 0 for absent classes and the ignore index. The factors average
    to 1 over the valid pixels (``sum_k n_k f_k = N``) for every power. ``power=1`` (``normalize="class"``)
    gives ``N / (K' * n_k)`` (K' classes present): scaling each pixel's weight by it turns the mean over
    valid pixels into the mean over present classes of each class's mean weighted loss. ``power=0.5``
    (``"class_sqrt"``) goes half way; ``power=0`` is the plain mean over valid pixels."""
    counts = counts.to(torch.float32, copy=True)
    counts[num_classes:] = 0.0  # the ignore index carries no weight
    present = counts > 0
    if power == 1.0:  # the exact form (no pow): bit-identical to the recorded class-mean runs
        return torch.where(present, counts.sum() / (present.sum().clamp_min(1) * counts.clamp_min(1)), 0.0)
    scaled = torch.where(present, counts.clamp_min(1).pow(-power), 0.0)
    return scaled * counts.sum() / (scaled * counts).sum().clamp_min(1e-12)


def class_ranks(labels: Tensor, score: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Each pixel's rank by ``score`` inside its label's class (0 = highest) and its class's size.

    Vectorised and free of host syncs, like :func:`~stvm_sdk.methods.parts.metric.balanced_pixel_mask`:
    one sort by ``label + (1 - score)``. Ignored pixels form an extra class. Scores must lie in [0,1].
    """
    flat = labels.reshape(-1).long()
    lab = torch.where(flat == IGNORE, torch.full_like(flat, num_classes), flat)
    key = lab.double() + (1.0 - score.reshape(-1).double().clamp(0.0, 1.0)) * (1.0 - 1e-9)
    order = torch.argsort(key)
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=flat.device).index_add_(
        0, lab, torch.ones_like(lab)
    )
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel(), device=flat.device)
    return (rank - starts[lab]).view_as(labels), counts[lab].view_as(labels)


def confident_labels(labels: Tensor, confidence: Tensor, num_classes: int, keep: float) -> Tensor:
    """``labels`` with all but each class's ``keep`` most confident share set to the ignore index."""
    rank, size = class_ranks(labels, confidence, num_classes)
    kept = rank.double() < torch.ceil(keep * size.double())
    return torch.where(kept & (labels != IGNORE), labels, torch.full_like(labels, IGNORE))


def pixel_reliability(
    z: Tensor,
    proxies: Tensor,
    y_feat: Tensor,
    pseudo: Tensor,
    confidence: Tensor,
    cfg: ReliabilityConfig,
    num_classes: int,
    backend: str,
) -> Tensor:
    """Each pseudo-label's weight ``[B,H,W]`` in [0,1] at pixel resolution (decision 5).

    ``z`` are M's embeddings at feature resolution, ``y_feat`` the pseudo-labels there, ``pseudo`` and
    ``confidence`` the teacher's argmax and max-softmax at pixel resolution. ``cfg.mode = "combined"``
    multiplies confidence^a by the metric reliability^(1-a); ``cfg.classwise`` replaces each weight by
    its quantile inside its pseudo-class (this batch's pixels).
    """
    base = "softmax" if cfg.mode == "combined" else cfg.mode
    r = reliability(z, proxies, y_feat, base, cfg.scale, backend)
    r = nnf.interpolate(r[:, None], size=pseudo.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    r = r.clamp_(0.0, 1.0)
    if cfg.mode == "combined":
        a = cfg.confidence_power
        r = confidence.clamp(0.0, 1.0) ** a * r ** (1.0 - a)
    if cfg.classwise:
        rank, size = class_ranks(pseudo, r, num_classes)
        r = torch.where(
            pseudo == IGNORE, torch.zeros_like(r), 1.0 - rank.to(r.dtype) / size.clamp(min=1).to(r.dtype)
        )
    return r


def pseudo_label_reliability(
    teacher: nn.Module, classifier: str, metric: MetricHead, x: Tensor, cfg: ReliabilityConfig
) -> tuple[Tensor, Tensor]:
    """Teacher pseudo-labels and their reliability at pixel resolution for normalised images ``x``."""
    with capture_features(teacher, classifier) as hook:
        logits = forward_logits(teacher, x).float()
        z = metric(detach_features(hook.pop()))
    confidence, pseudo = logits.softmax(1).max(1)
    y_feat = nnf.interpolate(logits, size=z.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    num_classes = logits.shape[1]
    r = pixel_reliability(z, metric.unit_proxies(), y_feat, pseudo, confidence, cfg, num_classes, "auto")
    return pseudo, r
