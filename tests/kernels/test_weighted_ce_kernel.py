"""Reliability-weighted cross-entropy: reference vs naive float64, gradcheck, Triton vs reference."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from stvm_sdk.kernels import weighted_cross_entropy
from stvm_sdk.kernels.weighted_ce_ref import weighted_cross_entropy_ref

# Awkward shapes (B, K, H, W): 1x1, primes, both benchmark class counts, H*W off the block size.
# K=97 is one register chunk; K=150 (ADE20K) takes the chunked two-sweep path.
SHAPES = [
    (1, 19, 1, 1),
    (2, 19, 7, 13),
    (3, 16, 5, 11),
    (1, 2, 31, 37),
    (2, 1, 3, 3),
    (1, 97, 4, 5),
    (2, 150, 3, 7),
]
# Compared on loss and on grad*N (O(1) values). fp16/bf16 grads are rounded to the logits dtype.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _inputs(
    shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device, ignore_frac: float = 0.2
):
    b, k, h, w = shape
    logits = (3 * torch.randn(b, k, h, w, device=device)).to(dtype)
    labels = torch.randint(0, k, (b, h, w), device=device)
    labels[torch.rand(b, h, w, device=device) < ignore_frac] = 255
    return logits, labels, torch.rand(b, h, w, device=device)


def _naive(logits: Tensor, labels: Tensor, weights: Tensor, ignore_index: int, normalize: str) -> Tensor:
    """Pixel-by-pixel float64 loop: the textbook formula, nothing shared with the reference."""
    x, total, n_valid, w_sum = logits.double(), 0.0, 0, 0.0
    b, k, h, w = x.shape
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                y = int(labels[bi, i, j])
                if y == ignore_index:
                    continue
                col = x[bi, :, i, j]
                ce = torch.log(torch.exp(col - col.max()).sum()) + col.max() - col[y]
                total += float(weights[bi, i, j]) * float(ce)
                n_valid += 1
                w_sum += float(weights[bi, i, j])
    den = max(n_valid, 1) if normalize == "valid" else max(w_sum, 1e-12)
    return torch.tensor(total / den, dtype=torch.float64)


@pytest.mark.parametrize("normalize", ["valid", "weights"])
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_reference_matches_naive_float64_loop(shape, normalize):
    logits, labels, weights = _inputs(shape, torch.float64, torch.device("cpu"))
    got = weighted_cross_entropy_ref(logits, labels, weights, normalize=normalize)
    torch.testing.assert_close(got, _naive(logits, labels, weights, 255, normalize), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("normalize", ["valid", "weights"])
def test_reference_passes_gradcheck_in_float64(normalize):
    logits, labels, weights = _inputs((2, 5, 3, 4), torch.float64, torch.device("cpu"))
    logits.requires_grad_(True)
    fn = lambda x: weighted_cross_entropy_ref(x, labels, weights, normalize=normalize)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (logits,))
    small = lambda x: weighted_cross_entropy_ref(x, labels[:1, :2, :2], weights[:1, :2, :2])  # noqa: E731
    assert torch.autograd.gradgradcheck(small, (logits[:1, :, :2, :2].detach().requires_grad_(True),))


def test_reference_gradient_is_weight_times_softmax_minus_onehot_over_n():
    logits, labels, weights = _inputs((2, 4, 3, 5), torch.float64, torch.device("cpu"))
    logits.requires_grad_(True)
    weighted_cross_entropy_ref(logits, labels, weights).backward()
    valid = labels != 255
    onehot = torch.nn.functional.one_hot(labels.clamp_max(3), 4).permute(0, 3, 1, 2)
    expected = weights[:, None] * (logits.detach().softmax(1) - onehot) * valid[:, None] / valid.sum()
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("normalize", ["valid", "weights"])
def test_all_pixels_ignored_gives_zero_loss_and_zero_grads(backend, normalize, device, triton_ok):
    logits, labels, weights = _inputs((2, 19, 5, 6), torch.float32, device)
    labels.fill_(255)
    logits.requires_grad_(True)
    loss = weighted_cross_entropy(logits, labels, weights, normalize=normalize, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_weights_receive_no_gradient(backend, device, triton_ok):
    logits, labels, weights = _inputs((1, 4, 3, 3), torch.float32, device)
    logits.requires_grad_(True)
    weights.requires_grad_(True)
    weighted_cross_entropy(logits, labels, weights, backend=backend).backward()
    assert weights.grad is None and logits.grad is not None


def test_reference_rejects_mismatched_shapes_and_modes():
    logits, labels, weights = _inputs((1, 4, 3, 3), torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="labels must be"):
        weighted_cross_entropy_ref(logits, labels[:, :2], weights)
    with pytest.raises(ValueError, match="weights must be"):
        weighted_cross_entropy_ref(logits, labels, weights[0])
    with pytest.raises(ValueError, match="normalize"):
        weighted_cross_entropy_ref(logits, labels, weights, normalize="mean")


def _compare(
    logits: Tensor, labels: Tensor, weights: Tensor, normalize: str, grad_scale: float = 1.0
) -> None:
    """Triton vs reference: loss, then the logits gradient, each with the dtype's tolerance."""
    results = []
    for backend in ("torch", "triton"):
        x = logits.detach().clone().requires_grad_(True)
        loss = weighted_cross_entropy(x, labels, weights, normalize=normalize, backend=backend)
        (loss * grad_scale).backward()
        results.append((loss.detach(), x.grad))
    (ref_loss, ref_grad), (tri_loss, tri_grad) = results
    rtol, atol = TOL[logits.dtype]
    assert tri_loss.dtype == torch.float32 and tri_grad.dtype == logits.dtype
    torch.testing.assert_close(tri_loss, ref_loss, rtol=1e-5, atol=1e-5)
    n = max(int((labels != 255).sum()), 1)
    torch.testing.assert_close(tri_grad.float() * n, ref_grad.float() * n, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference_on_loss_and_grad(shape, dtype, device, triton_ok):
    for normalize in ("valid", "weights"):
        _compare(*_inputs(shape, dtype, device), normalize)


def test_triton_applies_the_upstream_gradient(device, triton_ok):
    _compare(*_inputs((2, 19, 9, 10), torch.float32, device), "valid", grad_scale=-2.5)


@pytest.mark.parametrize("layout", ["channel_slice", "transposed_hw", "channels_last", "batch_stride"])
def test_triton_handles_non_contiguous_logits(layout, device, triton_ok):
    logits, labels, weights = _inputs((2, 24, 9, 11), torch.float32, device)
    if layout == "channel_slice":
        logits = logits[:, 2:21]  # K=19 view with the parent's channel stride
    elif layout == "transposed_hw":
        logits = logits.transpose(2, 3).contiguous().transpose(2, 3)  # (h, w) do not flatten: one copy
    elif layout == "channels_last":
        logits = logits[:, :19].contiguous(memory_format=torch.channels_last)
    else:
        logits, labels, weights = logits[::2, :19], labels[::2], weights[::2]
    labels = labels.clamp_max(logits.shape[1] - 1)
    labels_t = labels.transpose(1, 2).contiguous().transpose(1, 2)  # strided labels and weights too
    _compare(logits, labels_t, weights.transpose(1, 2).contiguous().transpose(1, 2), "valid")


def test_triton_forward_without_grad_matches_and_second_backward_raises(device, triton_ok):
    logits, labels, weights = _inputs((2, 19, 4, 6), torch.float32, device)
    logits.requires_grad_(True)
    with torch.no_grad():  # no gradient buffer is written (or needed) here
        loss = weighted_cross_entropy(logits, labels, weights, backend="triton")
    assert not loss.requires_grad
    logits = logits.detach()
    torch.testing.assert_close(
        loss, weighted_cross_entropy_ref(logits, labels, weights), rtol=1e-5, atol=1e-6
    )
    x = logits.requires_grad_(True)
    loss = weighted_cross_entropy(x, labels, weights, backend="triton")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()


def test_triton_launcher_rejects_float64_logits(device, triton_ok):
    from stvm_sdk.kernels.weighted_ce_triton import weighted_cross_entropy_triton

    logits, labels, weights = _inputs((1, 3, 2, 2), torch.float64, device)
    with pytest.raises(ValueError, match="fp32/fp16/bf16"):
        weighted_cross_entropy_triton(logits, labels, weights)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(8, 19, 512, 1024), (2, 19, 1024, 2048), (4, 16, 511, 1021)])
def test_triton_matches_reference_at_full_shape_on_gpu(shape, dtype, cuda):
    _compare(*_inputs(shape, dtype, cuda), "valid")
