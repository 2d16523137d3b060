"""MOCM: metric-guided online ClassMix (decision 7).

For sample a and partner b = a+1 (batch rolled by one): among the classes of the teacher's
pseudo-label map y_a, choose half, sampled with probability proportional to their mean reliability;
within those classes keep only p x p patches whose mean reliability is at least tau. The mask m
mixes image, pseudo-label and weight the same way: x~ = m*x_a + (1-m)*x_b.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor

from stvm_sdk.kernels import mocm_blend


def class_reliability(
    labels: Tensor, weights: Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Per-sample pixel counts ``[B,K]`` and mean reliability ``[B,K]`` of each pseudo-label class."""
    b = labels.shape[0]
    lab = labels.reshape(b, -1)
    valid = lab != ignore_index
    idx = torch.where(valid, lab, torch.zeros_like(lab))
    w = weights.reshape(b, -1).float() * valid
    counts = torch.zeros(b, num_classes, device=labels.device).scatter_add_(1, idx, valid.float())
    sums = torch.zeros(b, num_classes, device=labels.device).scatter_add_(1, idx, w)
    return counts, sums / counts.clamp(min=1)


def choose_classes(
    counts: Tensor,
    mean_rel: Tensor,
    fraction: float,
    generator: torch.Generator | None,
    rare_power: float = 0.0,
) -> Tensor:
    """Sample ``ceil(fraction * n_present)`` classes per row without replacement, p ∝ mean reliability.

    Gumbel-top-k with a per-row k, vectorised (no host sync): the chosen classes are those whose
    perturbed log-probability ranks below k among present classes. Returns ``[B,K]`` bool.
    """
    present = counts > 0
    n_present = present.sum(1)
    k = torch.ceil(n_present.float() * fraction).long().clamp(min=1)
    u = torch.rand(counts.shape, generator=generator, device="cpu").to(counts.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-7)))
    keys = torch.log(mean_rel.clamp(min=1e-6)) + gumbel
    if rare_power:  # p ∝ mean reliability x share^-rare_power: rare classes are pasted more often
        share = counts / counts.sum(1, keepdim=True).clamp(min=1)
        keys = keys - rare_power * torch.log(share.clamp(min=1e-6))
    keys = torch.where(present, keys, torch.full_like(keys, float("-inf")))
    rank = torch.argsort(torch.argsort(keys, dim=1, descending=True), dim=1)
    return present & (rank < k[:, None])


def patch_keep_mask(
    labels: Tensor, weights: Tensor, class_mask: Tensor, patch: int, tau: float, ignore_index: int = 255
) -> Tensor:
    """``[B,ceil(H/p),ceil(W/p)]`` bool: patches whose chosen-class pixels have mean reliability >= tau."""
    lab = torch.where(labels == ignore_index, torch.zeros_like(labels), labels)
    chosen = torch.gather(class_mask, 1, lab.flatten(1)).view_as(labels) & (labels != ignore_index)
    sel = chosen.float()[:, None]
    num = nnf.avg_pool2d(sel * weights.float()[:, None], patch, ceil_mode=True)
    den = nnf.avg_pool2d(sel, patch, ceil_mode=True)
    return ((den > 0) & (num >= tau * den))[:, 0]


def mocm(
    images: Tensor,
    labels: Tensor,
    weights: Tensor,
    num_classes: int,
    *,
    patch: int,
    tau: float,
    fraction: float,
    generator: torch.Generator | None,
    backend: str = "auto",
    rare_power: float = 0.0,
    prob: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mix a batch with its rolled partner. Returns (images, labels, weights, mask ``[B,H,W]`` bool).

    Args:
        images: ``[B,3,H,W]`` in [0,1]; labels: teacher pseudo-labels ``[B,H,W]``;
        weights: per-pixel reliability ``[B,H,W]``.
        prob: probability that a sample is mixed; the others pass unchanged.
    """
    b = images.shape[0]
    counts, mean_rel = class_reliability(labels, weights, num_classes)
    class_mask = choose_classes(counts, mean_rel, fraction, generator, rare_power)
    keep = patch_keep_mask(labels, weights, class_mask, patch, tau)
    own = torch.arange(b, device=images.device)
    partner = torch.roll(own, shifts=-1)
    if prob < 1.0:  # a sample not drawn is its own partner: m*x_a + (1-m)*x_a, its frame whole
        drawn = torch.rand(b, generator=generator, device="cpu").to(images.device) < prob
        partner = torch.where(drawn, partner, own)
        x, y, r, mask = mocm_blend(
            images, labels, weights, partner, class_mask, keep, patch_size=patch, backend=backend
        )
        return x, y, r, mask & drawn[:, None, None]  # a whole frame has nothing pasted in it
    return mocm_blend(images, labels, weights, partner, class_mask, keep, patch_size=patch, backend=backend)
