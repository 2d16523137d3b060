"""Reliability-weighted cross-entropy as Triton kernels and one autograd Function.

Design (memory-bound op, so the count of logits-sized streams is the cost):

* a tiny pre-pass reduces the denominator N from labels (and weights) only, 12 B/pixel;
* one fused pass reads each logits tile once, in its native ``[B,K,H,W]`` layout (no permute), and
  writes both the loss partials and the finished gradient ``w * (softmax - onehot) / N`` into a
  logits-sized buffer: the probability tensor never exists;
* backward multiplies that buffer by ``grad_output`` in place, but each program first loads
  ``grad_output`` on the device and masks every access off when it is exactly 1 (the usual case:
  ``loss.backward()`` or a sum of losses), so no host sync and, usually, no third stream.

Total traffic: 2 logits streams (read, write) for forward+backward; the buffer is the gradient
autograd needs anyway, so peak extra memory is one logits-sized buffer. Imported only on the first
Triton dispatch (see ``dispatch.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from stvm_sdk.kernels.dispatch import TRITON_FLOAT_DTYPES, interpreter_enabled
from stvm_sdk.kernels.layout import check_sample_size, dense_like, flat_view
from stvm_sdk.kernels.weighted_ce_ref import WEIGHT_SUM_EPS, check_weighted_ce_inputs

# Read once, like @triton.jit does: the interpreter runs one numpy op per program, so it wants few,
# large programs; a GPU wants many tiles of ~8K elements.
_INTERPRET = interpreter_enabled()
# Up to this many classes a pixel's logits stay in registers between the softmax and the gradient.
MAX_SINGLE_CHUNK_K = 128


@triton.jit
def _wce_den_kernel(y_ptr, w_ptr, part_ptr, P, syb, syp, swb, swp, ignore_index,
                    NORM_WEIGHTS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    b64 = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    y = tl.load(y_ptr + b64 * syb + offs * syp, mask=offs < P, other=ignore_index)
    valid = (offs < P) & (y != ignore_index)
    if NORM_WEIGHTS:
        den = tl.load(w_ptr + b64 * swb + offs * swp, mask=valid, other=0.0).to(tl.float32)
    else:
        den = valid.to(tl.float32)
    tl.store(part_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.sum(den, axis=0))


@triton.jit
def _wce_fused_kernel(
    x_ptr, y_ptr, w_ptr, den_ptr, g_ptr, part_ptr,
    K, P, sxb, sxk, sxp, syb, syp, swb, swp, sgb, sgk, sgp,
    ignore_index,
    WRITE_GRAD: tl.constexpr, SINGLE_CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
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
    g_base = g_ptr + b64 * sgb

    if SINGLE_CHUNK:
        # K <= 128: the pixel's logits stay in registers from the softmax to the gradient store.
        offs_k = tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        x = _load_chunk(x_base, offs_k, offs_p, kmask, pmask, sxk, sxp)
        m = tl.max(x, axis=0)
        lse = m + tl.log(tl.sum(tl.exp(x - m[None, :]), axis=0))
        picked = tl.sum(tl.where(offs_k[:, None] == y[None, :], x, 0.0), axis=0)
        if WRITE_GRAD:
            coef = tl.where(valid, w / tl.load(den_ptr), 0.0)
            _store_grad(g_base, x, y, lse, coef, valid, offs_k, offs_p, kmask, pmask, sgk, sgp)
    else:
        # Online logsumexp over K chunks, then a second sweep for the gradient (re-read, mostly L2).
        m = tl.full([BLOCK_P], float("-inf"), tl.float32)
        s = tl.zeros([BLOCK_P], tl.float32)
        picked = tl.zeros([BLOCK_P], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = _load_chunk(x_base, offs_k, offs_p, offs_k < K, pmask, sxk, sxp)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[None, :]), axis=0)
            m = m_new
            picked += tl.sum(tl.where(offs_k[:, None] == y[None, :], x, 0.0), axis=0)
        lse = m + tl.log(s)
        if WRITE_GRAD:
            coef = tl.where(valid, w / tl.load(den_ptr), 0.0)
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                x = _load_chunk(x_base, offs_k, offs_p, offs_k < K, pmask, sxk, sxp)
                _store_grad(g_base, x, y, lse, coef, valid, offs_k, offs_p, offs_k < K, pmask, sgk, sgp)
    loss = tl.where(valid, w * (lse - picked), 0.0)
    tl.store(part_ptr + pid_b * tl.num_programs(1) + pid_p, tl.sum(loss, axis=0))


@triton.jit
def _load_chunk(x_base, offs_k, offs_p, kmask, pmask, sxk, sxp):
    x = tl.load(x_base + offs_k[:, None] * sxk + offs_p[None, :] * sxp,
                mask=kmask[:, None] & pmask[None, :], other=0.0).to(tl.float32)  # fmt: skip
    # Padded classes get -inf so they vanish from max and sum; padded pixels keep finite zeros.
    return tl.where(kmask[:, None], x, float("-inf"))


@triton.jit
def _store_grad(g_base, x, y, lse, coef, valid, offs_k, offs_p, kmask, pmask, sgk, sgp):
    g = coef[None, :] * (tl.exp(x - lse[None, :]) - tl.where(offs_k[:, None] == y[None, :], 1.0, 0.0))
    # Exact zeros on ignored pixels even if their logits are inf/NaN.
    g = tl.where(valid[None, :], g, 0.0)
    tl.store(g_base + offs_k[:, None] * sgk + offs_p[None, :] * sgp, g.to(g_base.dtype.element_ty),
             mask=kmask[:, None] & pmask[None, :])  # fmt: skip


@triton.jit
def _scale_unless_one_kernel(g_ptr, go_ptr, n, BLOCK: tl.constexpr):
    go = tl.load(go_ptr)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    # grad_output == 1 masks every load and store off: the pass costs a launch, not a stream.
    mask = offs < tl.where(go != 1.0, n, 0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    tl.store(g_ptr + offs, (g.to(tl.float32) * go).to(g.dtype), mask=mask)


def _launch_config(k: int, p: int) -> tuple[int, int, int]:
    """``(BLOCK_K, BLOCK_P, num_warps)``: ~8K-element tiles on a GPU (untuned: no GPU timings yet)."""
    block_k = triton.next_power_of_2(k) if k <= MAX_SINGLE_CHUNK_K else 64
    if _INTERPRET:
        return block_k, min(triton.next_power_of_2(p), max(16, 65536 // block_k)), 1
    return block_k, min(max(8192 // block_k, 32), 1024), 8


class WeightedCrossEntropyFunction(torch.autograd.Function):
    """``sum_i w_i CE_i / N``; gradient to logits only, computed in forward (see module docstring).

    Backward may run once per forward: the gradient buffer is handed to autograd (and scaled in
    place), so ``retain_graph=True`` followed by a second backward raises.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        labels: Tensor,
        weights: Tensor,
        ignore_index: int,
        normalize: str,
        need_grad: bool,
    ) -> Tensor:
        x, (sxb, sxk, sxp) = flat_view(logits)
        y, (syb, syp) = flat_view(labels)
        w, (swb, swp) = flat_view(weights)
        bsz, k, h, wd = x.shape
        p = h * wd
        block_k, block_p, warps = _launch_config(k, p)
        grid = (bsz, triton.cdiv(p, block_p))
        dev = x.device
        norm_w = normalize == "weights"
        part_den = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=dev)
        _wce_den_kernel[grid](y, w, part_den, p, syb, syp, swb, swp, ignore_index,
                              NORM_WEIGHTS=norm_w, BLOCK=block_p)  # fmt: skip
        # Per-program partials summed by torch: deterministic, unlike float atomics; stays on device.
        den = part_den.sum().clamp_min(WEIGHT_SUM_EPS if norm_w else 1.0)
        # needs_input_grad ignores no_grad/inference mode, so the caller says whether a graph is built.
        write_grad = need_grad and bool(ctx.needs_input_grad[0])
        grad = dense_like(x) if write_grad else x.new_empty((1, 1, 1, 1))
        _, (sgb, sgk, sgp) = flat_view(grad)
        part_loss = torch.empty_like(part_den)
        _wce_fused_kernel[grid](
            x, y, w, den, grad, part_loss, k, p, sxb, sxk, sxp, syb, syp, swb, swp, sgb, sgk, sgp,
            ignore_index, WRITE_GRAD=write_grad, SINGLE_CHUNK=k <= block_k,
            BLOCK_K=block_k, BLOCK_P=block_p, num_warps=warps,
        )  # fmt: skip
        ctx.grad = grad if write_grad else None
        return part_loss.sum() / den

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:  # type: ignore[override]
        grad = ctx.grad
        if grad is None:
            if ctx.needs_input_grad[0]:
                raise RuntimeError(
                    "weighted_cross_entropy (Triton) supports one backward per forward; "
                    "recompute the loss instead of retain_graph=True, or use backend='torch'"
                )
            return None, None, None, None, None, None
        ctx.grad = None  # hand the buffer to autograd; keeping it here would pin it after backward
        go = grad_out.detach().float().reshape(1)
        block = 65536 if _INTERPRET else 4096
        _scale_unless_one_kernel[(triton.cdiv(grad.numel(), block),)](grad, go, grad.numel(), BLOCK=block)
        return grad, None, None, None, None, None


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
        return logits.float().sum() * 0.0  # loss 0 with a zero-gradient path, no launch
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    out: Tensor = WeightedCrossEntropyFunction.apply(
        logits, labels, weights.detach(), ignore_index, normalize, need_grad
    )
    return out
