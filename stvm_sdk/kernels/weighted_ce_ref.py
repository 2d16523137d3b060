"""Reliability-weighted cross-entropy: the pure-PyTorch reference (the spec of the Triton op).

docs/method.md decision 6: ``L = (1/N) * sum_i w_i * CE(logits_i, y_i)`` over valid pixels, where the
weights scale each pixel's gradient and are never themselves trained (the class-mean default rescales
``w`` before this op).
"""

from __future__ import annotations

import torch
from torch import Tensor

NORMALIZE_MODES = ("valid", "weights")
# Floor for the "weights" denominator: an all-ignored (or all-zero-weight) batch gives loss 0 and zero
# gradients instead of 0/0 = NaN.
WEIGHT_SUM_EPS = 1e-12


def check_weighted_ce_inputs(logits: Tensor, labels: Tensor, weights: Tensor, normalize: str) -> None:
    """Raise ``ValueError`` with a fix-it message when the inputs break the op's contract."""
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B,K,H,W], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating tensor, got {logits.dtype}")
    b, _, h, w = logits.shape
    if tuple(labels.shape) != (b, h, w):
        raise ValueError(f"labels must be [B,H,W]={(b, h, w)} to match logits, got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise ValueError(f"labels must be an integer tensor (int64), got {labels.dtype}")
    if tuple(weights.shape) != (b, h, w):
        raise ValueError(f"weights must be [B,H,W]={(b, h, w)} to match logits, got {tuple(weights.shape)}")
    if not weights.is_floating_point():
        raise ValueError(f"weights must be a floating tensor, got {weights.dtype}")
    if not (logits.device == labels.device == weights.device):
        raise ValueError(
            f"logits, labels and weights must share a device, got {logits.device}, {labels.device}, "
            f"{weights.device}"
        )


def weighted_cross_entropy_ref(
    logits: Tensor,
    labels: Tensor,
    weights: Tensor,
    *,
    ignore_index: int = 255,
    normalize: str = "valid",
) -> Tensor:
    """Per-pixel weighted cross-entropy, reduced to a scalar.

    Math, with valid pixels ``V = {i : y_i != ignore_index}``::

        CE_i = logsumexp_k(x_ik) - x_{i, y_i}
        loss = sum_{i in V} w_i * CE_i / N
        N    = max(|V|, 1)                      if normalize == "valid"
        N    = max(sum_{i in V} w_i, 1e-12)     if normalize == "weights"
        d loss / d x_ik = w_i * (softmax_k(x_i) - [k == y_i]) / N   (0 on ignored pixels)

    Weights are constants (``weights.detach()``): no gradient flows to them, so a reliability
    computed from the model cannot be gamed by the loss. All pixels ignored gives 0 and zero grads.

    Args:
        logits: ``[B,K,H,W]`` fp32/fp16/bf16 (fp64 for gradcheck), channel-first; any strides.
        labels: ``[B,H,W]`` integer class ids in ``[0,K)`` or ``ignore_index``. Other values are an
            error (this reference raises; the Triton op treats them as contributing only the
            logsumexp term and never reads out of bounds).
        weights: ``[B,H,W]`` float per-pixel weights (reliabilities, normally in ``[0,1]``).
        ignore_index: label value that contributes nothing (Cityscapes convention 255).
        normalize: ``"valid"`` (mean over valid pixels) or ``"weights"`` (divide by the weight sum).

    Returns:
        0-dim loss, fp32 (fp64 when ``logits`` are fp64); math is done in that dtype.
    """
    check_weighted_ce_inputs(logits, labels, weights, normalize)
    acc = torch.promote_types(logits.dtype, torch.float32)
    x = logits.to(acc)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    ce = torch.logsumexp(x, dim=1) - x.gather(1, safe.unsqueeze(1)).squeeze(1)
    w = torch.where(valid, weights.detach().to(acc), torch.zeros((), dtype=acc, device=x.device))
    # where() rather than w*ce: a non-finite logit on an ignored pixel must not leak NaN into the sum.
    total = torch.where(valid, w * ce, torch.zeros((), dtype=acc, device=x.device)).sum()
    denom = valid.sum().clamp_min(1).to(acc) if normalize == "valid" else w.sum().clamp_min(WEIGHT_SUM_EPS)
    return total / denom
