"""MOCM blend (metric-guided online ClassMix): the pure-PyTorch reference (the spec of the Triton op).

docs/method.md decision 7. The random choices (which classes, which patches, which partner) are made by the
method with its ``torch.Generator``; this op only applies them, so it is deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_mocm_inputs(
    images: Tensor,
    labels: Tensor,
    weights: Tensor,
    partner: Tensor,
    class_mask: Tensor,
    patch_keep: Tensor,
    patch_size: int,
) -> None:
    """Raise ``ValueError`` with a fix-it message when the inputs break the op's contract."""
    if images.dim() != 4:
        raise ValueError(f"images must be [B,C,H,W], got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    if tuple(labels.shape) != (b, h, w) or tuple(weights.shape) != (b, h, w):
        raise ValueError(
            f"labels and weights must be [B,H,W]={(b, h, w)}, got {tuple(labels.shape)} and "
            f"{tuple(weights.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor (int64), got {labels.dtype}")
    if partner.shape != (b,) or partner.is_floating_point() or partner.dtype == torch.bool:
        raise ValueError(
            f"partner must be an integer [B]=[{b}] tensor, got {partner.dtype} {tuple(partner.shape)}"
        )
    if class_mask.dim() != 2 or class_mask.shape[0] != b or class_mask.dtype != torch.bool:
        raise ValueError(
            f"class_mask must be bool [B,K] with B={b}, got {class_mask.dtype} {tuple(class_mask.shape)}"
        )
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    grid = (b, -(-h // patch_size), -(-w // patch_size))
    if tuple(patch_keep.shape) != grid or patch_keep.dtype != torch.bool:
        raise ValueError(
            f"patch_keep must be bool [B,ceil(H/p),ceil(W/p)]={grid} for p={patch_size}, "
            f"got {patch_keep.dtype} {tuple(patch_keep.shape)}"
        )
    devices = {t.device for t in (images, labels, weights, partner, class_mask, patch_keep)}
    if len(devices) != 1:
        raise ValueError(f"all MOCM inputs must share a device, got {sorted(map(str, devices))}")


@torch.no_grad()
def mocm_blend_ref(
    images: Tensor,
    labels: Tensor,
    weights: Tensor,
    partner: Tensor,
    class_mask: Tensor,
    patch_keep: Tensor,
    *,
    patch_size: int,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Paste the chosen, reliable class regions of each sample onto its partner.

    Math, for sample ``a``, pixel ``(i, j)``, ``y = labels[a,i,j]``, ``b = partner[a]``::

        m[a,i,j] = (y != ignore_index) and class_mask[a, y] and patch_keep[a, i // p, j // p]
        x~[a]    = m * images[a]  + (1 - m) * images[b]
        y~[a]    = m * labels[a]  + (1 - m) * labels[b]
        r~[a]    = m * weights[a] + (1 - m) * weights[b]

    Weights travel with their pixels (decision 7). No gradients: inputs are data and detached
    reliabilities.

    Args:
        images: ``[B,C,H,W]`` float.
        labels: ``[B,H,W]`` integer teacher pseudo-labels (``ignore_index`` allowed; other values
            must lie in ``[0,K)``).
        weights: ``[B,H,W]`` float reliabilities.
        partner: ``[B]`` integer, ``partner[a]`` is the sample pasted under ``a`` (values in ``[0,B)``).
        class_mask: ``[B,K]`` bool, the classes chosen for each sample.
        patch_keep: ``[B,ceil(H/p),ceil(W/p)]`` bool, the reliable patches of each sample.
        patch_size: patch side ``p`` in pixels.
        ignore_index: label value never pasted.

    Returns:
        ``(mixed_images [B,C,H,W] images.dtype, mixed_labels [B,H,W] labels.dtype,
        mixed_weights [B,H,W] weights.dtype, mask [B,H,W] bool)``, all contiguous.
    """
    check_mocm_inputs(images, labels, weights, partner, class_mask, patch_keep, patch_size)
    _, _, h, w = images.shape
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    chosen = class_mask.gather(1, safe.flatten(1)).view_as(labels)
    patches = patch_keep.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)[:, :h, :w]
    mask = valid & chosen & patches
    idx = partner.long()
    mixed_images = torch.where(mask.unsqueeze(1), images, images[idx]).contiguous()
    mixed_labels = torch.where(mask, labels, labels[idx]).contiguous()
    mixed_weights = torch.where(mask, weights, weights[idx]).contiguous()
    return mixed_images, mixed_labels, mixed_weights, mask.contiguous()
