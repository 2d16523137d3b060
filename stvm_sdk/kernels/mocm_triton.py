"""MOCM blend as one Triton kernel: mask build and image/label/weight blend in a single pass.

Each pixel's mask bit is computed from its label, the sample's class choice and the patch grid, then
only the selected source is read (own pixels where the mask is set, the partner's elsewhere), so the
kernel reads about one image's worth of bytes instead of two. Any input strides are honoured; the
outputs are contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from stvm_sdk.kernels.dispatch import TRITON_FLOAT_DTYPES, interpreter_enabled
from stvm_sdk.kernels.layout import check_sample_size
from stvm_sdk.kernels.mocm_ref import check_mocm_inputs

_INTERPRET = interpreter_enabled()


@triton.jit
def _mocm_kernel(
    img_ptr, lab_ptr, w_ptr, partner_ptr, cls_ptr, keep_ptr,
    out_img_ptr, out_lab_ptr, out_w_ptr, out_mask_ptr,
    C, H, W, K, patch, ignore_index,
    sib, sic, sih, siw, slb, slh, slw, swb, swh, sww, scb, sck, skb, skh, skw,
    BLOCK: tl.constexpr,
):  # fmt: skip
    a = tl.program_id(0)
    pid = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    npix = H * W
    pmask = offs < npix
    i = offs // W
    j = offs % W
    a64 = a.to(tl.int64)
    b64 = tl.load(partner_ptr + a).to(tl.int64)

    ya = tl.load(lab_ptr + a64 * slb + i * slh + j * slw, mask=pmask, other=ignore_index)
    # Labels off [0,K) are never used as addresses: they are simply not pasted.
    valid = pmask & (ya != ignore_index) & (ya >= 0) & (ya < K)
    chosen = tl.load(cls_ptr + a64 * scb + ya * sck, mask=valid, other=0) != 0
    keep = tl.load(keep_ptr + a64 * skb + (i // patch) * skh + (j // patch) * skw, mask=pmask, other=0) != 0
    m = valid & chosen & keep
    own = pmask & m
    other = pmask & (m == 0)

    yb = tl.load(lab_ptr + b64 * slb + i * slh + j * slw, mask=other, other=0)
    tl.store(out_lab_ptr + a64 * npix + offs, tl.where(m, ya, yb), mask=pmask)
    wa = tl.load(w_ptr + a64 * swb + i * swh + j * sww, mask=own, other=0.0)
    wb = tl.load(w_ptr + b64 * swb + i * swh + j * sww, mask=other, other=0.0)
    tl.store(out_w_ptr + a64 * npix + offs, tl.where(m, wa, wb), mask=pmask)
    tl.store(out_mask_ptr + a64 * npix + offs, m.to(tl.uint8), mask=pmask)
    for c in range(C):
        xa = tl.load(img_ptr + a64 * sib + c * sic + i * sih + j * siw, mask=own, other=0.0)
        xb = tl.load(img_ptr + b64 * sib + c * sic + i * sih + j * siw, mask=other, other=0.0)
        tl.store(out_img_ptr + (a64 * C + c) * npix + offs, tl.where(m, xa, xb), mask=pmask)


def mocm_blend_triton(
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
    """Triton version of :func:`~stvm_sdk.kernels.mocm_ref.mocm_blend_ref`.

    Same math, shapes, dtypes and outputs (no gradient). ``partner`` values must lie in ``[0,B)``
    (not checked on device: that would need a host sync); labels off ``[0,K)`` are not pasted.

    Raises:
        ValueError: wrong shapes, dtypes, devices or a sample over 2**31 elements.
    """
    check_mocm_inputs(images, labels, weights, partner, class_mask, patch_keep, patch_size)
    if images.dtype not in TRITON_FLOAT_DTYPES or weights.dtype not in TRITON_FLOAT_DTYPES:
        raise ValueError(
            f"images/weights must be fp32/fp16/bf16 for the Triton kernel, "
            f"got {images.dtype}, {weights.dtype}"
        )
    check_sample_size(images, "images")
    bsz, c, h, w = images.shape
    out_img = torch.empty((bsz, c, h, w), dtype=images.dtype, device=images.device)
    out_lab = torch.empty((bsz, h, w), dtype=labels.dtype, device=images.device)
    out_w = torch.empty((bsz, h, w), dtype=weights.dtype, device=images.device)
    out_mask = torch.empty((bsz, h, w), dtype=torch.uint8, device=images.device)
    if out_mask.numel() == 0:
        return out_img, out_lab, out_w, out_mask.bool()
    # bool -> uint8 reinterpretation is free (same itemsize) and avoids i1 pointer quirks.
    cls = class_mask.view(torch.uint8)
    keep = patch_keep.view(torch.uint8)
    block = min(triton.next_power_of_2(h * w), 65536) if _INTERPRET else 1024
    grid = (bsz, triton.cdiv(h * w, block))
    _mocm_kernel[grid](
        images.detach(), labels, weights.detach(), partner, cls, keep, out_img, out_lab, out_w, out_mask,
        c, h, w, class_mask.shape[1], patch_size, ignore_index,
        *images.stride(), *labels.stride(), *weights.stride(), *cls.stride(), *keep.stride(),
        BLOCK=block, num_warps=1 if _INTERPRET else 4,
    )  # fmt: skip
    return out_img, out_lab, out_w, out_mask.view(torch.bool)
