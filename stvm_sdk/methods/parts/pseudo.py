"""Pseudo-labels and their weights: reliability against proxies, label counts, class balance.

Pure torch, no host syncs: the pieces the self-training methods (stvm_sdk.methods) share.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from stvm_sdk.kernels import proxy_reliability
from stvm_sdk.methods.parts.metric import MetricHead
from stvm_sdk.models.contract import capture_features, forward_logits

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


def label_counts(labels: Tensor) -> Tensor:
    """How many pixels carry each label value: an int64 ``[256]`` tensor (ignore index included).

    A fixed-size scatter, not ``torch.bincount``: on CUDA bincount reads the input's max back to the
    host to size its output, a sync in every training step."""
    flat = labels.flatten().long()
    zeros = torch.zeros(IGNORE + 1, dtype=torch.long, device=flat.device)
    return zeros.index_add_(0, flat, torch.ones_like(flat))


def class_balance(counts: Tensor, num_classes: int) -> Tensor:
    """Weight factor per label value (a ``[256]`` tensor to index with labels) for decision 6's
    ``normalize="class"``, from :func:`label_counts`: ``N / (K' * n_k)`` for a class k with n_k of the
    N valid pixels (K' classes present), 0 for absent classes and the ignore index. Scaling each pixel's
    weight by it turns the mean over valid pixels into the mean over present classes of each class's
    mean weighted loss."""
    counts = counts.to(torch.float32, copy=True)
    counts[num_classes:] = 0.0  # the ignore index carries no weight
    present = counts > 0
    return torch.where(present, counts.sum() / (present.sum().clamp_min(1) * counts.clamp_min(1)), 0.0)


def pseudo_label_reliability(
    teacher: nn.Module, classifier: str, metric: MetricHead, x: Tensor, mode: str, scale: float
) -> tuple[Tensor, Tensor]:
    """Teacher pseudo-labels and their reliability at pixel resolution for normalised images ``x``."""
    with capture_features(teacher, classifier) as hook:
        logits = forward_logits(teacher, x).float()
        z = metric(detach_features(hook.pop()))
    pseudo = logits.argmax(1)
    y_feat = nnf.interpolate(logits, size=z.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    r = reliability(z, metric.unit_proxies(), y_feat, mode, scale, "auto")
    r = nnf.interpolate(r[:, None], size=pseudo.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return pseudo, r.clamp(0.0, 1.0)
