"""Proxy reliability as one Triton kernel (forward only: the method uses it detached).

Each program loads a ``[D, BLOCK_P]`` tile of embeddings once (channel-first, no permute), normalises
it in registers, then walks the K proxies with an online softmax: per pixel only the running max,
sum, label logit and best cosine are kept, so no ``[B,K,h,w]`` similarity tensor is ever written.
The dot products run on CUDA cores in fp32 rather than ``tl.dot``: with K=19 the op is bound by
reading the embeddings, and fp32 FMAs keep the argmax identical to the reference (TF32 ``tl.dot``
would flip near-ties, and bf16 ``tl.dot`` is wrong in the interpreter: docs/environment.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from stvm_sdk.kernels.dispatch import TRITON_FLOAT_DTYPES, interpreter_enabled
from stvm_sdk.kernels.layout import check_sample_size, flat_view
from stvm_sdk.kernels.reliability_ref import check_reliability_inputs

_INTERPRET = interpreter_enabled()
# The whole embedding vector of a pixel stays in registers; wider embeddings should use the reference.
MAX_EMBED_DIM = 1024


@triton.jit
def _reliability_kernel(
    z_ptr, p_ptr, y_ptr, rel_ptr, near_ptr,
    K, D, P, szb, szd, szp, syb, syp,
    scale, ignore_index,
    BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    pid_p = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    pmask = offs_p < P
    dmask = offs_d < D
    b64 = pid_b.to(tl.int64)
    z = tl.load(
        z_ptr + b64 * szb + offs_d[:, None] * szd + offs_p[None, :] * szp,
        mask=dmask[:, None] & pmask[None, :],
        other=0.0,
    ).to(tl.float32)
    # F.normalize semantics: divide by max(||z||, 1e-12), so a zero embedding gives cos 0, not NaN.
    inv_norm = 1.0 / tl.maximum(tl.sqrt(tl.sum(z * z, axis=0)), 1e-12)
    y = tl.load(y_ptr + b64 * syb + offs_p * syp, mask=pmask, other=ignore_index).to(tl.int32)

    m = tl.full([BLOCK_P], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_P], tl.float32)
    picked = tl.full([BLOCK_P], float("-inf"), tl.float32)  # stays -inf (reliability 0) off [0,K)
    best = tl.full([BLOCK_P], float("-inf"), tl.float32)
    best_k = tl.zeros([BLOCK_P], tl.int32)
    for k in range(K):
        pk = tl.load(p_ptr + k * D + offs_d, mask=dmask, other=0.0)
        cos = tl.sum(pk[:, None] * z, axis=0) * inv_norm
        logit = cos * scale
        m_new = tl.maximum(m, logit)
        s = s * tl.exp(m - m_new) + tl.exp(logit - m_new)
        m = m_new
        picked = tl.where(y == k, logit, picked)
        # Strict '>' keeps the first maximum, as torch.argmax does.
        better = cos > best
        best = tl.where(better, cos, best)
        best_k = tl.where(better, k, best_k)
    rel = tl.exp(picked - m - tl.log(s))
    rel = tl.where(y != ignore_index, rel, 0.0)
    tl.store(rel_ptr + b64 * P + offs_p, rel, mask=pmask)
    tl.store(near_ptr + b64 * P + offs_p, best_k.to(tl.int64), mask=pmask)


def _launch_config(d: int, p: int) -> tuple[int, int, int]:
    """``(BLOCK_D, BLOCK_P, num_warps)``: the full D in one tile of ~8K elements (untuned, no GPU)."""
    block_d = triton.next_power_of_2(d)
    if _INTERPRET:
        return block_d, min(triton.next_power_of_2(p), max(1, 65536 // block_d)), 1
    return block_d, max(8192 // block_d, 8), 4


def proxy_reliability_triton(
    embeddings: Tensor,
    proxies: Tensor,
    labels: Tensor,
    *,
    scale: float = 16.0,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """Triton version of :func:`~stvm_sdk.kernels.reliability_ref.proxy_reliability_ref`.

    Same math, shapes and outputs (no gradient). Embeddings fp32/fp16/bf16 with fp32 math.

    Raises:
        ValueError: wrong shapes, dtypes, devices, ``D > 1024`` or a sample over 2**31 elements.
    """
    check_reliability_inputs(embeddings, proxies, labels)
    if embeddings.dtype not in TRITON_FLOAT_DTYPES or proxies.dtype not in TRITON_FLOAT_DTYPES:
        raise ValueError(
            f"embeddings/proxies must be fp32/fp16/bf16 for the Triton kernel, got {embeddings.dtype}, "
            f"{proxies.dtype}"
        )
    bsz, d, h, w = embeddings.shape
    if d > MAX_EMBED_DIM:
        raise ValueError(f"embedding width D={d} exceeds the kernel's {MAX_EMBED_DIM}; use backend='torch'")
    check_sample_size(embeddings, "embeddings")
    rel = torch.zeros((bsz, h, w), dtype=torch.float32, device=embeddings.device)
    near = torch.zeros((bsz, h, w), dtype=torch.int64, device=embeddings.device)
    if rel.numel() == 0:
        return rel, near
    with torch.no_grad():
        # K x D is tiny: normalising the proxies in torch costs nothing and keeps the kernel simple.
        p_unit = F.normalize(proxies.detach().float(), dim=1).contiguous()
        z, (szb, szd, szp) = flat_view(embeddings.detach())
        y, (syb, syp) = flat_view(labels)
        npix = h * w
        block_d, block_p, warps = _launch_config(d, npix)
        grid = (bsz, triton.cdiv(npix, block_p))
        _reliability_kernel[grid](
            z, p_unit, y, rel, near, proxies.shape[0], d, npix, szb, szd, szp, syb, syp,
            float(scale), ignore_index, BLOCK_D=block_d, BLOCK_P=block_p, num_warps=warps,
        )  # fmt: skip
    return rel, near
