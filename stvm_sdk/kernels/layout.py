"""Memory-layout helpers shared by the Triton launchers (pure torch; no Triton import).

The kernels address ``[B, C, H, W]`` tensors as ``[B, C, P]`` with ``P = H*W`` and one stride per
axis. That view exists without a copy for contiguous and channels-last tensors and for batch or
channel slices of them; only a layout where ``(h, w)`` cannot be flattened pays one ``.contiguous()``
copy: contiguity is handled once, here, not in each launcher.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Kernels index one sample's elements with 32-bit arithmetic; the batch offset is 64-bit.
MAX_SAMPLE_ELEMENTS = 2**31 - 1


def pixel_stride(t: Tensor) -> int | None:
    """Stride that walks the flattened trailing ``(H, W)`` axes of ``t``, or None if there is none."""
    h, w = t.shape[-2], t.shape[-1]
    sh, sw = t.stride(-2), t.stride(-1)
    if w == 1:
        return sh
    if h == 1 or sh == sw * w:
        return sw
    return None


def flat_view(t: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``t`` (copied once only if needed) and its strides over ``(*leading, P)``.

    Args:
        t: ``[B, H, W]`` or ``[B, C, H, W]``.

    Returns:
        The tensor to pass to the kernel and its strides ``(sB, sP)`` or ``(sB, sC, sP)``.
    """
    sp = pixel_stride(t)
    if sp is None:
        t = t.contiguous()
        sp = 1
    return t, (*t.stride()[:-2], sp)


def check_sample_size(t: Tensor, name: str) -> None:
    """Raise ``ValueError`` when one sample of ``t`` is too large for 32-bit in-kernel indexing."""
    per_sample = t[0].numel() if t.dim() > 0 and t.shape[0] > 0 else 0
    span = max((s * (n - 1) for s, n in zip(t.stride()[1:], t.shape[1:], strict=True)), default=0)
    if max(per_sample, span) > MAX_SAMPLE_ELEMENTS:
        raise ValueError(
            f"{name}: one sample spans {max(per_sample, span)} elements, over the kernels' 2**31 limit; "
            f"split the batch spatially or use backend='torch'"
        )


def dense_like(t: Tensor) -> Tensor:
    """Uninitialised buffer like ``[B,C,H,W]`` ``t``, channels-last if ``t`` is, else contiguous.

    Either way its storage is one dense block of ``numel`` elements (an elementwise kernel may walk
    it flat) and its ``(H, W)`` axes flatten.
    """
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.empty_like(t, memory_format=torch.channels_last)
    return torch.empty_like(t, memory_format=torch.contiguous_format)
