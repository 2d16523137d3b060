"""Reliability-weighted cross-entropy as two Triton kernels and one autograd Function.

Forward reads the logits once (online logsumexp over K chunks) and keeps only the per-pixel
logsumexp (``1/K`` of the logits). Backward reads the logits once more and writes
``g * w * (softmax - onehot) / N`` straight into the gradient buffer: no probability tensor, no
permute of the channel-first layout, no host sync (``g/N`` is a device scalar the kernel loads).
Versus computing the gradient in forward (Liger-Kernel style) this moves 3 logits-sized streams
instead of 4, because multiplying a precomputed gradient by ``grad_output`` costs another pass unless
one syncs to check it is 1. Imported only on the first Triton dispatch (see ``dispatch.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from stvm_sdk.kernels.dispatch import TRITON_FLOAT_DTYPES, interpreter_enabled
from stvm_sdk.kernels.layout import check_sample_size, flat_view, grad_like
from stvm_sdk.kernels.weighted_ce_ref import WEIGHT_SUM_EPS, check_weighted_ce_inputs

# Read once, like @triton.jit does: the interpreter runs one numpy op per program, so it wants few,
# large programs; a GPU wants many tiles of ~8K elements.
_INTERPRET = interpreter_enabled()


@triton.jit
def _wce_fwd_kernel(
    x_ptr, y_ptr, w_ptr, lse_ptr, part_loss_ptr, part_den_ptr,
    K, P, sxb, sxk, sxp, syb, syp, swb, swp,
    ignore_index,
    NORM_WEIGHTS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    pid_p = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < P
    b64 = pid_b.to(tl.int64)
    y = tl.load(y_ptr + b64 * syb + offs_p * syp, mask=pmask, other=ignore_index).to(tl.int32)
    valid = pmask & (y != ignore_index)
    w = tl.load(w_ptr + b64 * swb + offs_p * swp, mask=valid, other=0.0).to(tl.float32)

    x_base = x_ptr + b64 * sxb
    m = tl.full([BLOCK_P], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_P], tl.float32)
    picked = tl.zeros([BLOCK_P], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        x = tl.load(
            x_base + offs_k[:, None] * sxk + offs_p[None, :] * sxp,
            mask=kmask[:, None] & pmask[None, :],
            other=0.0,
        ).to(tl.float32)
        # Padded classes get -inf so they vanish from max and sum; padded pixels keep finite zeros.
        x = tl.where(kmask[:, None], x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[None, :]), axis=0)
        m = m_new
        picked += tl.sum(tl.where(offs_k[:, None] == y[None, :], x, 0.0), axis=0)
    lse = m + tl.log(s)
    tl.store(lse_ptr + b64 * P + offs_p, lse, mask=valid)

    loss = tl.where(valid, w * (lse - picked), 0.0)
    if NORM_WEIGHTS:  # noqa: SIM108 (a constexpr branch, resolved at compile time)
        den = w  # already 0 on ignored pixels
    else:
        den = valid.to(tl.float32)
    part = pid_b * tl.num_programs(1) + pid_p
    tl.store(part_loss_ptr + part, tl.sum(loss, axis=0))
    tl.store(part_den_ptr + part, tl.sum(den, axis=0))


@triton.jit
def _wce_bwd_kernel(
    x_ptr, y_ptr, w_ptr, lse_ptr, coef_ptr, g_ptr,
    K, P, sxb, sxk, sxp, syb, syp, swb, swp, sgb, sgk, sgp,
    ignore_index,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    pid_p = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < P
    b64 = pid_b.to(tl.int64)
    y = tl.load(y_ptr + b64 * syb + offs_p * syp, mask=pmask, other=ignore_index).to(tl.int32)
    valid = pmask & (y != ignore_index)
    w = tl.load(w_ptr + b64 * swb + offs_p * swp, mask=valid, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + b64 * P + offs_p, mask=valid, other=0.0)
    # coef = grad_output / N, one device scalar: the whole chain rule costs no extra pass or sync.
    scale = w * tl.load(coef_ptr)

    x_base = x_ptr + b64 * sxb
    g_base = g_ptr + b64 * sgb
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_k < K)[:, None] & pmask[None, :]
        x = tl.load(x_base + offs_k[:, None] * sxk + offs_p[None, :] * sxp, mask=mask, other=0.0)
        p = tl.exp(x.to(tl.float32) - lse[None, :])
        g = scale[None, :] * (p - tl.where(offs_k[:, None] == y[None, :], 1.0, 0.0))
        # Ignored pixels get exact zeros even if their logits are inf/NaN.
        g = tl.where(valid[None, :], g, 0.0)
        tl.store(
            g_base + offs_k[:, None] * sgk + offs_p[None, :] * sgp, g.to(g_ptr.dtype.element_ty), mask=mask
        )


def _launch_config(k: int, p: int) -> tuple[int, int, int]:
    """``(BLOCK_K, BLOCK_P, num_warps)``: one K chunk for K <= 64, tiles of ~8K elements on a GPU.

    Not autotuned: no GPU was available to tune on (see benchmarks/results/kernels.md).
    """
    block_k = min(triton.next_power_of_2(k), 64)
    if _INTERPRET:
        return block_k, min(triton.next_power_of_2(p), max(16, 65536 // block_k)), 1
    return block_k, min(max(8192 // block_k, 64), 1024), 8


class WeightedCrossEntropyFunction(torch.autograd.Function):
    """``sum_i w_i CE_i / N`` with the fused backward; gradient to logits only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, labels: Tensor, weights: Tensor, ignore_index: int, normalize: str
    ) -> Tensor:
        x, (sxb, sxk, sxp) = flat_view(logits)
        y, (syb, syp) = flat_view(labels)
        w, (swb, swp) = flat_view(weights)
        bsz, k = x.shape[0], x.shape[1]
        p = x.shape[2] * x.shape[3]
        block_k, block_p, warps = _launch_config(k, p)
        grid = (bsz, triton.cdiv(p, block_p))
        lse = torch.empty((bsz, p), dtype=torch.float32, device=x.device)
        part_loss = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=x.device)
        part_den = torch.empty_like(part_loss)
        _wce_fwd_kernel[grid](
            x, y, w, lse, part_loss, part_den, k, p, sxb, sxk, sxp, syb, syp, swb, swp, ignore_index,
            NORM_WEIGHTS=normalize == "weights", BLOCK_K=block_k, BLOCK_P=block_p, num_warps=warps,
        )  # fmt: skip
        # Per-program partials summed by torch: deterministic, unlike float atomics.
        floor = WEIGHT_SUM_EPS if normalize == "weights" else 1.0
        den = part_den.sum().clamp_min(floor)
        ctx.save_for_backward(x, y, w, lse, den)
        ctx.meta = (ignore_index, block_k, block_p, warps)
        return part_loss.sum() / den

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        x, y, w, lse, den = ctx.saved_tensors
        ignore_index, block_k, block_p, warps = ctx.meta
        _, (sxb, sxk, sxp) = flat_view(x)
        _, (syb, syp) = flat_view(y)
        _, (swb, swp) = flat_view(w)
        grad = grad_like(x)
        _, (sgb, sgk, sgp) = flat_view(grad)
        coef = (grad_out.float() / den).reshape(1)
        bsz, k = x.shape[0], x.shape[1]
        p = x.shape[2] * x.shape[3]
        grid = (bsz, triton.cdiv(p, block_p))
        _wce_bwd_kernel[grid](
            x, y, w, lse, coef, grad, k, p, sxb, sxk, sxp, syb, syp, swb, swp, sgb, sgk, sgp, ignore_index,
            BLOCK_K=block_k, BLOCK_P=block_p, num_warps=warps,
        )  # fmt: skip
        return grad, None, None, None, None


def weighted_cross_entropy_triton(
    logits: Tensor,
    labels: Tensor,
    weights: Tensor,
    *,
    ignore_index: int = 255,
    normalize: str = "valid",
) -> Tensor:
    """Triton version of :func:`~stvm_sdk.kernels.weighted_ce_ref.weighted_cross_entropy_ref`.

    Same math, shapes and ignore behaviour; logits fp32/fp16/bf16 (accumulated in fp32), the loss is
    fp32, the gradient has the logits' dtype. Labels outside ``[0,K)`` other than ``ignore_index``
    are never used as addresses (they contribute ``logsumexp`` only).

    Raises:
        ValueError: wrong shapes, dtypes, devices or a sample over 2**31 elements.
    """
    check_weighted_ce_inputs(logits, labels, weights, normalize)
    if logits.dtype not in TRITON_FLOAT_DTYPES:
        raise ValueError(f"logits must be fp32/fp16/bf16 for the Triton kernel, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError("logits must have at least one class (K >= 1)")
    check_sample_size(logits, "logits")
    if logits.numel() == 0:
        return _empty_loss(logits)
    out: Tensor = WeightedCrossEntropyFunction.apply(
        logits, labels, weights.detach(), ignore_index, normalize
    )
    return out


def _empty_loss(logits: Tensor) -> Tensor:
    """Loss 0 (with a zero gradient path) for an empty batch or image, without launching a kernel."""
    return logits.float().sum() * 0.0
