"""MOCM blend: reference vs naive loop, Triton vs reference (bit-exact), awkward shapes."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from stvm_sdk.kernels import mocm_blend
from stvm_sdk.kernels.mocm_ref import mocm_blend_ref

# (B, C, H, W, K, p): 1x1, primes, H and W not multiples of p, a patch larger than the image.
SHAPES = [(1, 3, 1, 1, 19, 4), (2, 3, 37, 41, 19, 16), (3, 1, 13, 7, 16, 3), (2, 3, 5, 9, 5, 32)]


def _inputs(b: int, c: int, h: int, w: int, k: int, p: int, device: torch.device, dtype=torch.float32):
    images = torch.rand(b, c, h, w, device=device).to(dtype)
    labels = torch.randint(0, k, (b, h, w), device=device)
    labels[torch.rand(b, h, w, device=device) < 0.2] = 255
    weights = torch.rand(b, h, w, device=device)
    partner = torch.roll(torch.arange(b, device=device), -1)  # docs/method.md decision 7: next sample
    class_mask = torch.rand(b, k, device=device) < 0.5
    patch_keep = torch.rand(b, -(-h // p), -(-w // p), device=device) < 0.7
    return images, labels, weights, partner, class_mask, patch_keep, p


def _naive(images, labels, weights, partner, class_mask, patch_keep, p) -> tuple[Tensor, ...]:
    """Pixel loop of the formula in docs/method.md decision 7."""
    out = [images.clone(), labels.clone(), weights.clone(), torch.zeros_like(labels, dtype=torch.bool)]
    b, _, h, w = images.shape
    for a in range(b):
        pb = int(partner[a])
        for i in range(h):
            for j in range(w):
                y = int(labels[a, i, j])
                m = y != 255 and bool(class_mask[a, y]) and bool(patch_keep[a, i // p, j // p])
                src = a if m else pb
                out[0][a, :, i, j] = images[src, :, i, j]
                out[1][a, i, j] = labels[src, i, j]
                out[2][a, i, j] = weights[src, i, j]
                out[3][a, i, j] = m
    return tuple(out)


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_naive_pixel_loop(shape):
    args = _inputs(*shape, torch.device("cpu"))
    got = mocm_blend_ref(*args[:-1], patch_size=args[-1])
    for g, want in zip(got, _naive(*args), strict=True):
        assert torch.equal(g, want)


def test_pasted_pixels_keep_their_label_and_weight_together():
    images, labels, weights, partner, cls, keep, p = _inputs(2, 3, 16, 16, 4, 4, torch.device("cpu"))
    _, mixed_labels, mixed_weights, mask = mocm_blend_ref(
        images, labels, weights, partner, cls, keep, patch_size=p
    )
    assert torch.equal(mixed_weights[mask], weights[mask]) and torch.equal(mixed_labels[mask], labels[mask])
    assert not torch.any(mixed_labels[mask] == 255)


def test_reference_rejects_a_wrong_patch_grid():
    images, labels, weights, partner, cls, keep, p = _inputs(1, 3, 10, 10, 4, 4, torch.device("cpu"))
    with pytest.raises(ValueError, match="patch_keep must be"):
        mocm_blend_ref(images, labels, weights, partner, cls, keep[:, :2], patch_size=p)


def _compare(images, labels, weights, partner, class_mask, patch_keep, p) -> None:
    args = (images, labels, weights, partner, class_mask, patch_keep)
    ref = mocm_blend(*args, patch_size=p, backend="torch")
    got = mocm_blend(*args, patch_size=p, backend="triton")
    for name, g, r in zip(("images", "labels", "weights", "mask"), got, ref, strict=True):
        assert g.dtype == r.dtype and g.shape == r.shape, name
        assert torch.equal(g, r), name  # a blend copies values: it must be bit-exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference_exactly(shape, dtype, device, triton_ok):
    _compare(*_inputs(*shape, device, dtype))


def test_triton_handles_strided_inputs_and_any_partner(device, triton_ok):
    images, labels, weights, _, cls, keep, p = _inputs(4, 4, 12, 20, 19, 8, device)
    partner = torch.tensor([2, 2, 0, 3], device=device)
    _compare(
        images[:, 1:].contiguous(memory_format=torch.channels_last),
        labels.transpose(1, 2).contiguous().transpose(1, 2),
        weights.transpose(1, 2).contiguous().transpose(1, 2),
        partner.int(),
        cls.t().contiguous().t(),
        keep,
        p,
    )


def test_all_ignored_labels_paste_nothing(device, triton_ok):
    images, labels, weights, partner, cls, keep, p = _inputs(2, 3, 8, 8, 19, 4, device)
    labels.fill_(255)
    for backend in ("torch", "triton"):
        out = mocm_blend(images, labels, weights, partner, cls, keep, patch_size=p, backend=backend)
        assert not out[3].any() and torch.equal(out[0], images[partner])


@pytest.mark.gpu
@pytest.mark.parametrize(
    "shape", [(8, 3, 512, 1024, 19, 32), (2, 3, 1024, 2048, 19, 32), (4, 3, 511, 1021, 16, 32)]
)
def test_triton_matches_reference_at_full_shape_on_gpu(shape, cuda):
    _compare(*_inputs(*shape, cuda))
