"""Proxy reliability: the pure-PyTorch reference (the spec of the Triton op).

docs/method.md decision 5: ``r_i = softmax_k(scale * cos(z_i, p_k))`` at ``k = y_i``, used detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_reliability_inputs(embeddings: Tensor, proxies: Tensor, labels: Tensor) -> None:
    """Raise ``ValueError`` with a fix-it message when the inputs break the op's contract."""
    if embeddings.dim() != 4:
        raise ValueError(f"embeddings must be [B,D,h,w], got shape {tuple(embeddings.shape)}")
    if proxies.dim() != 2 or proxies.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"proxies must be [K,D] with D={embeddings.shape[1]} (the embedding width), "
            f"got {tuple(proxies.shape)}"
        )
    if proxies.shape[0] < 1:
        raise ValueError("proxies must hold at least one class (K >= 1)")
    if not (embeddings.is_floating_point() and proxies.is_floating_point()):
        raise ValueError(f"embeddings and proxies must be floating, got {embeddings.dtype}, {proxies.dtype}")
    b, _, h, w = embeddings.shape
    if tuple(labels.shape) != (b, h, w):
        raise ValueError(f"labels must be [B,h,w]={(b, h, w)} to match embeddings, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor (int64), got {labels.dtype}")
    if not (embeddings.device == proxies.device == labels.device):
        raise ValueError(
            f"embeddings, proxies and labels must share a device, got {embeddings.device}, "
            f"{proxies.device}, {labels.device}"
        )


@torch.no_grad()
def proxy_reliability_ref(
    embeddings: Tensor,
    proxies: Tensor,
    labels: Tensor,
    *,
    scale: float = 16.0,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """Reliability of each pseudo-label in the metric space, and the nearest proxy.

    Math, with ``z = embeddings / max(||embeddings||_2, 1e-12)`` over D (``F.normalize``), and the
    same for each proxy row::

        c_ik = <z_i, p_k>                         (cosine similarity)
        r_i  = exp(scale*c_{i,y_i} - logsumexp_k(scale*c_ik))   if y_i != ignore_index else 0
        n_i  = argmax_k c_ik                      (first maximum on ties)

    Outputs carry no gradient: the method uses reliability detached (docs/method.md decision 5), so
    this reference runs under ``torch.no_grad`` and the Triton op has no backward.

    Args:
        embeddings: ``[B,D,h,w]`` float (any strides); need not be normalised.
        proxies: ``[K,D]`` float; need not be normalised.
        labels: ``[B,h,w]`` integer pseudo-labels in ``[0,K)`` or ``ignore_index``. Other values give
            reliability 0 in the Triton op; this reference raises.
        scale: softmax temperature ``gamma`` (method default 16).
        ignore_index: label value whose reliability is 0.

    Returns:
        ``(reliability [B,h,w] float32 in [0,1], nearest [B,h,w] int64)``; math in fp32 (fp64 for
        fp64 inputs), the reliability is returned as fp32.
    """
    check_reliability_inputs(embeddings, proxies, labels)
    acc = torch.promote_types(torch.promote_types(embeddings.dtype, proxies.dtype), torch.float32)
    z = F.normalize(embeddings.to(acc), dim=1)
    p = F.normalize(proxies.to(acc), dim=1)
    cos = torch.einsum("bdhw,kd->bkhw", z, p)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    logp = torch.log_softmax(cos * scale, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    rel = torch.where(valid, logp.exp(), torch.zeros((), dtype=acc, device=z.device))
    return rel.float(), cos.argmax(dim=1)
