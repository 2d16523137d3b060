"""The public hot ops: each picks its backend (``dispatch.py``) and calls the reference or the kernel.

The method code calls only these three functions. Their math is documented on the references in
``*_ref.py``, which are the specification; the Triton versions have the same signature minus
``backend``.
"""

from __future__ import annotations

from torch import Tensor

from stvm_sdk.kernels.dispatch import load_triton_module, resolve_backend
from stvm_sdk.kernels.mocm_ref import mocm_blend_ref
from stvm_sdk.kernels.reliability_ref import proxy_reliability_ref
from stvm_sdk.kernels.weighted_ce_ref import weighted_cross_entropy_ref


def weighted_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    weights: Tensor,
    *,
    ignore_index: int = 255,
    normalize: str = "valid",
    backend: str = "auto",
) -> Tensor:
    """Reliability-weighted cross-entropy ``sum_i w_i CE_i / N`` (docs/method.md decision 6).

    Args:
        logits: ``[B,K,H,W]`` fp32/fp16/bf16, channel-first, any strides.
        labels: ``[B,H,W]`` int64 in ``[0,K)`` or ``ignore_index``.
        weights: ``[B,H,W]`` float; constants (no gradient flows to them).
        ignore_index: label value that contributes nothing.
        normalize: ``"valid"`` (N = valid pixel count) or ``"weights"`` (N = sum of valid weights).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see ``stvm_sdk.kernels.dispatch``).

    Returns:
        0-dim fp32 loss; gradient to ``logits`` only, ``w * (softmax - onehot) / N``. All pixels
        ignored gives 0 and zero gradients. The Triton backend computes the gradient during the
        forward (one read of the logits) and allows one backward per forward (no ``retain_graph``
        reuse).

    See ``weighted_cross_entropy_ref`` for the exact math.
    """
    if resolve_backend(backend, (logits, labels, weights), (logits, weights)) == "triton":
        fn = load_triton_module("weighted_ce").weighted_cross_entropy_triton
    else:
        fn = weighted_cross_entropy_ref
    return fn(logits, labels, weights, ignore_index=ignore_index, normalize=normalize)


def proxy_reliability(
    embeddings: Tensor,
    proxies: Tensor,
    labels: Tensor,
    *,
    scale: float = 16.0,
    ignore_index: int = 255,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Reliability ``softmax_k(scale * cos(z_i, p_k))[y_i]`` and nearest proxy (decision 5).

    Args:
        embeddings: ``[B,D,h,w]`` float (L2-normalised inside the op).
        proxies: ``[K,D]`` float (L2-normalised inside the op).
        labels: ``[B,h,w]`` int64 pseudo-labels in ``[0,K)`` or ``ignore_index``.
        scale: softmax scale gamma.
        ignore_index: label value whose reliability is 0.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``(reliability [B,h,w] float32 in [0,1], nearest [B,h,w] int64)``. Neither carries a
        gradient: the method uses reliability detached.
    """
    if resolve_backend(backend, (embeddings, proxies, labels), (embeddings, proxies)) == "triton":
        fn = load_triton_module("reliability").proxy_reliability_triton
    else:
        fn = proxy_reliability_ref
    return fn(embeddings, proxies, labels, scale=scale, ignore_index=ignore_index)


def mocm_blend(
    images: Tensor,
    labels: Tensor,
    weights: Tensor,
    partner: Tensor,
    class_mask: Tensor,
    patch_keep: Tensor,
    *,
    patch_size: int,
    ignore_index: int = 255,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MOCM ClassMix blend of each sample onto its partner in one pass (decision 7).

    Args:
        images: ``[B,C,H,W]`` float.
        labels: ``[B,H,W]`` int64 teacher pseudo-labels.
        weights: ``[B,H,W]`` float reliabilities.
        partner: ``[B]`` int64, the sample pasted under each sample.
        class_mask: ``[B,K]`` bool, chosen classes per sample.
        patch_keep: ``[B,ceil(H/p),ceil(W/p)]`` bool, reliable patches per sample.
        patch_size: patch side ``p``.
        ignore_index: label value never pasted.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``(mixed_images, mixed_labels, mixed_weights, mask [B,H,W] bool)``; no gradients.
    """
    tensors = (images, labels, weights, partner, class_mask, patch_keep)
    if resolve_backend(backend, tensors, (images, weights)) == "triton":
        fn = load_triton_module("mocm").mocm_blend_triton
    else:
        fn = mocm_blend_ref
    return fn(
        images,
        labels,
        weights,
        partner,
        class_mask,
        patch_keep,
        patch_size=patch_size,
        ignore_index=ignore_index,
    )
