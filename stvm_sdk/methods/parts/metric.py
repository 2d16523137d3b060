"""Metric network M, class proxies and the proxy losses (decisions 2-4).

M is a copy of the classifier C whose final K-channel convolution(s) become D-channel ones (D=128),
initialised from C except those layers. It reads the teacher's classifier input ``sg(F_T(x))`` and
emits L2-normalised embeddings at feature resolution. Proxies are one learnable unit vector per class.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn


def _metric_conv(conv: nn.Conv2d, dim: int) -> nn.Conv2d:
    """A fresh conv shaped like ``conv`` but with ``dim`` outputs."""
    return nn.Conv2d(
        conv.in_channels,
        dim,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        bias=conv.bias is not None,
    )


def _replace_logit_convs(head: nn.Module, num_classes: int, dim: int) -> int:
    """Swap every conv with ``num_classes`` outputs for a fresh ``dim``-output conv; return how many."""
    swapped = 0
    for name, child in list(head.named_children()):
        if isinstance(child, nn.Conv2d) and child.out_channels == num_classes:
            setattr(head, name, _metric_conv(child, dim))
            swapped += 1
        else:
            swapped += _replace_logit_convs(child, num_classes, dim)
    return swapped


class MetricHead(nn.Module):
    """M with its proxies: ``forward(features) -> z [B,D,h,w]`` (unit vectors along D).

    With ``centroid=True`` the proxies are EMA class centroids of the embeddings (buffers, updated by
    :meth:`update_centroids`), not learned parameters."""

    centroids: Tensor
    seen: Tensor

    def __init__(
        self,
        classifier: nn.Module,
        num_classes: int,
        dim: int = 128,
        generator: torch.Generator | None = None,
        centroid: bool = False,
    ) -> None:
        super().__init__()
        self.body = copy.deepcopy(classifier)
        for p in self.body.parameters():
            p.requires_grad_(True)
        if isinstance(self.body, nn.Conv2d) and self.body.out_channels == num_classes:
            # The classifier IS the logit conv (SegFormer's, UperNet's decode_head.classifier).
            self.body = _metric_conv(self.body, dim)
        elif _replace_logit_convs(self.body, num_classes, dim) == 0:
            raise ValueError(
                f"the classifier has no conv with {num_classes} outputs to turn into the metric layer"
            )
        # Re-draw the new layers and the proxies from an explicit generator (reproducible runs).
        for m in self.body.modules():
            if isinstance(m, nn.Conv2d) and m.out_channels == dim:
                std = (2.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])) ** 0.5
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                    if m.bias is not None:
                        m.bias.zero_()
        self.proxies = nn.Parameter(torch.randn(num_classes, dim, generator=generator))
        self.centroid = centroid
        if centroid:  # start from the random proxies; a class's first sighting replaces its start
            self.proxies.requires_grad_(False)
            self.register_buffer("centroids", nnf.normalize(self.proxies.detach().clone(), dim=1))
            self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, features: Any) -> Tensor:
        out = self.body(features)
        if isinstance(out, dict):
            out = out["out"]
        return nnf.normalize(out, dim=1)

    def unit_proxies(self) -> Tensor:
        """Proxies ``[K,D]`` projected to the unit sphere (the centroids, with ``centroid=True``)."""
        if self.centroid:
            return self.centroids
        return nnf.normalize(self.proxies, dim=1)

    @torch.no_grad()
    def update_centroids(
        self, z: Tensor, labels: Tensor, weight: Tensor, momentum: float, ignore_index: int = 255
    ) -> None:
        """One EMA step of the centroid proxies from embeddings ``z [B,D,h,w]``, labels ``[B,h,w]``
        and per-pixel weights ``[B,h,w]``: ``c_k <- normalise(m c_k + (1 - m) mean_k)`` for each class
        present, where ``mean_k`` is the weighted unit mean of its pixels' embeddings; a class seen for
        the first time takes its mean. No host syncs."""
        k, d = self.centroids.shape
        valid = labels != ignore_index
        idx = torch.where(valid, labels, torch.zeros_like(labels)).reshape(-1).long()
        w = (weight.float() * valid).reshape(-1)
        zf = z.detach().float().permute(0, 2, 3, 1).reshape(-1, d)
        sums = torch.zeros(k, d, device=z.device).index_add_(0, idx, zf * w[:, None])
        mass = torch.zeros(k, device=z.device).index_add_(0, idx, w)
        present = mass > 0
        m = torch.where(self.seen, torch.full_like(mass, momentum), torch.zeros_like(mass))[:, None]
        new = nnf.normalize(m * self.centroids + (1 - m) * nnf.normalize(sums, dim=1), dim=1)
        self.centroids.copy_(torch.where(present[:, None], new, self.centroids))
        self.seen.logical_or_(present)


def balanced_pixel_mask(
    labels: Tensor, num_classes: int, cap: int, generator: torch.Generator | None, ignore_index: int = 255
) -> Tensor:
    """Pick at most ``cap`` random pixels per class: a float mask shaped like ``labels``.

    Vectorised and free of host syncs: each pixel gets key ``label + u`` (u ~ U[0,1)); after sorting,
    a pixel's rank inside its class is its sorted position minus the class's first position.
    """
    flat = labels.reshape(-1)
    valid = flat != ignore_index
    lab = torch.where(valid, flat, torch.full_like(flat, num_classes))  # ignored -> extra class K
    u = torch.rand(flat.shape, generator=generator, device="cpu").to(flat.device)
    order = torch.argsort(lab.to(u.dtype) + u)
    counts = torch.bincount(lab, minlength=num_classes + 1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel(), device=flat.device)
    rank = rank - starts[lab]
    return ((rank < cap) & valid).to(torch.float32).view_as(labels)


def proxy_anchor_loss(
    z: Tensor,
    labels: Tensor,
    proxies: Tensor,
    mask: Tensor,
    alpha: float,
    delta: float,
    ignore_index: int = 255,
) -> Tensor:
    """Proxy-Anchor loss (Kim et al., 2020) over masked pixels.

    Args:
        z: embeddings ``[B,D,h,w]`` (unit vectors).
        labels: pseudo-labels ``[B,h,w]`` at feature resolution.
        proxies: unit proxies ``[K,D]``.
        mask: ``[B,h,w]`` 1 for sampled pixels, 0 otherwise.
    """
    k = proxies.shape[0]
    sim = torch.einsum("bdhw,kd->bhwk", z, proxies).reshape(-1, k)  # cos(z_i, p_k)
    lab = labels.reshape(-1)
    m = mask.reshape(-1, 1).bool() & (lab != ignore_index).view(-1, 1)
    pos = nnf.one_hot(lab.clamp(max=k - 1), k).bool() & m
    neg = ~nnf.one_hot(lab.clamp(max=k - 1), k).bool() & m
    neg_inf = torch.finfo(sim.dtype).min
    zero = torch.zeros(1, k, dtype=sim.dtype, device=sim.device)
    # log(1 + sum exp(.)) as a logsumexp with a zero column, masked entries at -inf.
    pos_lse = torch.logsumexp(torch.cat([zero, torch.where(pos, -alpha * (sim - delta), neg_inf)]), dim=0)
    neg_lse = torch.logsumexp(torch.cat([zero, torch.where(neg, alpha * (sim + delta), neg_inf)]), dim=0)
    has_pos = pos.any(0).to(sim.dtype)
    return (pos_lse * has_pos).sum() / has_pos.sum().clamp(min=1) + neg_lse.mean()


def proxy_nca_loss(
    z: Tensor, labels: Tensor, proxies: Tensor, mask: Tensor, scale: float, ignore_index: int = 255
) -> Tensor:
    """Proxy-NCA (softmax over scaled cosine similarities to the proxies) over masked pixels."""
    k = proxies.shape[0]
    sim = torch.einsum("bdhw,kd->bhwk", z, proxies).reshape(-1, k)
    lab = labels.reshape(-1)
    w = mask.reshape(-1) * (lab != ignore_index).to(sim.dtype)
    ce = nnf.cross_entropy(scale * sim, lab.clamp(max=k - 1), reduction="none")
    return (ce * w).sum() / w.sum().clamp(min=1)
