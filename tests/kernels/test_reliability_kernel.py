"""Proxy reliability: reference vs naive float64, Triton vs reference, awkward shapes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from stvm_sdk.kernels import proxy_reliability
from stvm_sdk.kernels.reliability_ref import proxy_reliability_ref

# (B, D, h, w, K): 1x1, primes, D not a power of two, both benchmark class counts, a single class.
SHAPES = [(1, 128, 1, 1, 19), (2, 128, 7, 13, 19), (3, 24, 5, 11, 16), (1, 37, 17, 3, 2), (2, 8, 4, 4, 1)]
TOL = {torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6}


def _inputs(b: int, d: int, h: int, w: int, k: int, device: torch.device, dtype: torch.dtype = torch.float32):
    embeddings = torch.randn(b, d, h, w, device=device).to(dtype)
    proxies = torch.randn(k, d, device=device)
    labels = torch.randint(0, k, (b, h, w), device=device)
    labels[torch.rand(b, h, w, device=device) < 0.2] = 255
    return embeddings, proxies, labels


def _naive(emb: Tensor, proxies: Tensor, labels: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Per-pixel float64 loop with math.exp: the formula in docs/method.md, nothing shared."""
    b, _, h, w = emb.shape
    rel = torch.zeros(b, h, w, dtype=torch.float64)
    near = torch.zeros(b, h, w, dtype=torch.int64)
    p = proxies.double() / proxies.double().norm(dim=1, keepdim=True)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                z = emb[bi, :, i, j].double()
                cos = [float(z @ pk) / float(z.norm()) for pk in p]
                near[bi, i, j] = max(range(len(cos)), key=lambda k: cos[k])
                y = int(labels[bi, i, j])
                if y != 255:
                    rel[bi, i, j] = math.exp(scale * cos[y]) / sum(math.exp(scale * c) for c in cos)
    return rel, near


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_reference_matches_naive_float64_loop(shape):
    emb, proxies, labels = _inputs(*shape, torch.device("cpu"), torch.float64)
    rel, near = proxy_reliability_ref(emb, proxies.double(), labels, scale=16.0)
    want_rel, want_near = _naive(emb, proxies, labels, 16.0)
    assert rel.dtype == torch.float32 and near.dtype == torch.int64
    torch.testing.assert_close(rel.double(), want_rel, rtol=1e-6, atol=1e-7)
    assert torch.equal(near, want_near)


def test_reliability_lies_in_unit_interval_and_is_zero_on_ignored_pixels():
    emb, proxies, labels = _inputs(2, 16, 6, 7, 19, torch.device("cpu"))
    rel, _ = proxy_reliability_ref(emb, proxies, labels)
    assert rel.min() >= 0 and rel.max() <= 1
    assert torch.all(rel[labels == 255] == 0)


def test_outputs_carry_no_gradient_even_from_trainable_inputs():
    emb, proxies, labels = _inputs(1, 8, 3, 3, 4, torch.device("cpu"))
    rel, near = proxy_reliability(emb.requires_grad_(True), proxies.requires_grad_(True), labels)
    assert not rel.requires_grad and not near.requires_grad


def test_reference_rejects_mismatched_embedding_width():
    emb, proxies, labels = _inputs(1, 8, 3, 3, 4, torch.device("cpu"))
    with pytest.raises(ValueError, match="proxies must be"):
        proxy_reliability_ref(emb, proxies[:, :5], labels)


def _compare(emb: Tensor, proxies: Tensor, labels: Tensor, scale: float = 16.0) -> None:
    ref_rel, ref_near = proxy_reliability(emb, proxies, labels, scale=scale, backend="torch")
    rel, near = proxy_reliability(emb, proxies, labels, scale=scale, backend="triton")
    assert rel.dtype == torch.float32 and near.dtype == torch.int64
    torch.testing.assert_close(rel, ref_rel, rtol=1e-4, atol=TOL[emb.dtype])
    # The argmax may only differ where the top two cosines tie to rounding.
    cos = torch.einsum(
        "bdhw,kd->bkhw",
        torch.nn.functional.normalize(emb.float(), dim=1),
        torch.nn.functional.normalize(proxies.float(), dim=1),
    )
    top2 = cos.topk(min(2, cos.shape[1]), dim=1).values
    clear = (top2[:, 0] - top2[:, -1] > 1e-5) | (cos.shape[1] == 1)
    assert torch.equal(near[clear], ref_near[clear])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference(shape, dtype, device, triton_ok):
    _compare(*_inputs(*shape, device, dtype))


def test_triton_handles_non_contiguous_embeddings_and_zero_vectors(device, triton_ok):
    emb, proxies, labels = _inputs(2, 40, 9, 7, 19, device)
    emb[0, :, 0, 0] = 0  # zero embedding: cos 0 to every proxy, no NaN (F.normalize semantics)
    _compare(emb[:, 3:35], proxies[:, 3:35], labels)
    _compare(emb.contiguous(memory_format=torch.channels_last), proxies, labels, scale=4.0)
    _compare(emb.transpose(2, 3).contiguous().transpose(2, 3), proxies, labels)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(8, 128, 64, 128, 19), (2, 128, 128, 256, 19), (8, 128, 65, 129, 16)])
def test_triton_matches_reference_at_full_shape_on_gpu(shape, dtype, cuda):
    _compare(*_inputs(*shape, cuda, dtype))
