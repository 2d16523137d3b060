"""Paired bootstrap of an mIoU difference: the interval the accuracy table states for (STvM - method)."""

from __future__ import annotations

import pytest
import torch

from stvm_sdk.eval.metrics import mean_iou, mean_iou_batch, paired_bootstrap_diff


def _frames(n: int, k: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame confusions of a labelling and of the same labelling with ``noise`` of pixels wrong."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, 400), generator=g)
    target[:, :50] = torch.randint(0, k - 1, (n, 50), generator=g)  # class k-1 rarer: awkward, not empty
    wrong = torch.rand(target.shape, generator=g) < noise
    pred = torch.where(wrong, torch.randint(0, k, target.shape, generator=g), target)
    conf = torch.zeros(n, k, k, dtype=torch.long)
    for i in range(n):
        conf[i] = torch.bincount(target[i] * k + pred[i], minlength=k * k).view(k, k)
    return conf, target


def test_mean_iou_batch_matches_mean_iou_with_absent_classes() -> None:
    confs = torch.randint(0, 5, (6, 7, 7))
    confs[0, 3, :] = 0
    confs[0, :, 3] = 0  # class 3 absent from labels and predictions: left out of the mean
    confs[1] = 0  # nothing at all
    batch = mean_iou_batch(confs)
    assert batch.dtype == torch.float64 and batch.shape == (6,)
    for c, m in zip(confs[2:], batch[2:], strict=True):
        assert float(m) == pytest.approx(mean_iou(c), abs=1e-12)
    assert float(batch[0]) == pytest.approx(mean_iou(confs[0]), abs=1e-12)


def test_identical_methods_give_a_zero_interval() -> None:
    a, _ = _frames(30, 5, 0, 0.3)
    assert paired_bootstrap_diff(a, a.clone(), resamples=200) == (0.0, 0.0, 0.0)


def test_a_clearly_better_method_is_separated_and_the_sign_follows_the_order() -> None:
    good, _ = _frames(40, 5, 1, 0.1)
    bad, _ = _frames(40, 5, 1, 0.4)  # the same frames and labels, more pixels wrong
    diff, lo, hi = paired_bootstrap_diff(good, bad, resamples=300)
    assert 0.0 < lo <= diff <= hi
    assert diff == pytest.approx(mean_iou(good.sum(0)) - mean_iou(bad.sum(0)), abs=1e-12)
    rdiff, rlo, rhi = paired_bootstrap_diff(bad, good, resamples=300)
    assert rdiff == pytest.approx(-diff) and rlo == pytest.approx(-hi) and rhi == pytest.approx(-lo)


def test_pairing_removes_the_frames_own_noise() -> None:
    """Two methods a few points apart on frames of very different difficulty: an unpaired view of
    their intervals would overlap, the paired difference does not."""
    a, _ = _frames(30, 5, 2, 0.20)
    b, _ = _frames(30, 5, 2, 0.23)
    scale = torch.linspace(1, 20, 30).round().long()[:, None, None]  # frames weigh from 1 to 20x
    _, lo, hi = paired_bootstrap_diff(a * scale, b * scale, resamples=400)
    assert lo > 0 and hi - lo < 0.05


def test_several_runs_per_method_average_their_miou() -> None:
    runs_a = torch.stack([_frames(20, 4, 3, p)[0] for p in (0.1, 0.2)])  # [S=2,N,K,K]
    runs_b = torch.stack([_frames(20, 4, 3, p)[0] for p in (0.3, 0.3)])
    diff, lo, hi = paired_bootstrap_diff(runs_a, runs_b, resamples=200)
    expect = sum(mean_iou(r.sum(0)) for r in runs_a) / 2 - sum(mean_iou(r.sum(0)) for r in runs_b) / 2
    assert diff == pytest.approx(expect, abs=1e-12) and lo < diff < hi


def test_unpaired_inputs_are_refused() -> None:
    a, _ = _frames(10, 4, 4, 0.1)
    with pytest.raises(ValueError, match="paired frames differ"):
        paired_bootstrap_diff(a, a[:9])
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap_diff(a, a, level=1.0)
