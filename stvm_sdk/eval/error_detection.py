"""How well a per-pixel score finds wrong pseudo-labels: AUROC, AUPR of the errors, risk-coverage.

A score (reliability, confidence) should rank right pseudo-labels above wrong ones. Three views:

- :func:`auroc`: the chance that a random right pixel scores above a random wrong one (ties count
  half); 0.5 is no signal;
- :func:`aupr_errors`: average precision at finding the *errors* by ranking pixels from the lowest
  score up; its floor is the error rate;
- :func:`aurc`: area under the risk-coverage curve: keep the top-scored pixels, the risk is the share
  of them that is wrong, averaged over every coverage; lower is better, its floor is reached when every
  error ranks below every right pixel.

Ties are handled as a group (no order within a tie is invented), so a saturated score that gives many
pixels the same value gets no credit for an order it does not have. Everything is exact (no binning),
in float64, on flat tensors of any size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor


def _groups(score: Tensor, correct: Tensor, descending: bool) -> tuple[Tensor, Tensor]:
    """Per distinct score (in rank order): how many right and how many wrong pixels share it."""
    s = score.detach().flatten().double()
    ok = correct.detach().flatten().bool()
    if s.numel() != ok.numel():
        raise ValueError(f"score has {s.numel()} values but correct has {ok.numel()}")
    values, inverse = torch.unique(s, sorted=True, return_inverse=True)
    right = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ok.double())
    wrong = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, (~ok).double())
    if descending:
        right, wrong = right.flip(0), wrong.flip(0)
    return right, wrong


def auroc(score: Tensor, correct: Tensor) -> float:
    """P(score of a right pixel > score of a wrong one) + 0.5 P(equal); NaN if either set is empty."""
    right, wrong = _groups(score, correct, descending=False)
    n_right, n_wrong = right.sum(), wrong.sum()
    if n_right == 0 or n_wrong == 0:
        return float("nan")
    wrong_below = torch.cumsum(wrong, 0) - wrong  # wrong pixels with a strictly lower score
    pairs = (right * (wrong_below + 0.5 * wrong)).sum()
    return float(pairs / (n_right * n_wrong))


def aupr_errors(score: Tensor, correct: Tensor) -> float:
    """Average precision of finding the wrong pixels, ranking from the lowest score up (ties as one step)."""
    right, wrong = _groups(score, correct, descending=False)
    n_wrong = wrong.sum()
    if n_wrong == 0:
        return float("nan")
    found, seen = torch.cumsum(wrong, 0), torch.cumsum(right + wrong, 0)
    return float(((found / seen) * wrong).sum() / n_wrong)


def aurc(score: Tensor, correct: Tensor) -> float:
    """Area under the risk-coverage curve, keeping pixels from the highest score down (ties together)."""
    right, wrong = _groups(score, correct, descending=True)
    n = right.sum() + wrong.sum()
    if n == 0:
        return float("nan")
    # Within a tie group the kept pixels are a random subset of the group, so at the j-th of its sz
    # coverages the expected risk is (w_b + j*w/sz) / (k_b + j) (w_b, k_b: wrong and kept before the
    # group, w: its wrong pixels). Summed over j: w + (w_b - k_b*w/sz) * (H(k_b+sz) - H(k_b)), with the
    # harmonic numbers as digamma differences: no loop over pixels.
    size = right + wrong
    kept_before = torch.cumsum(size, 0) - size
    wrong_before = torch.cumsum(wrong, 0) - wrong
    harmonic = torch.special.digamma(kept_before + size + 1) - torch.special.digamma(kept_before + 1)
    per_group = wrong + (wrong_before - kept_before * wrong / size) * harmonic
    return float(per_group.sum() / n)


@dataclass(frozen=True)
class ErrorDetection:
    """One score's figures at finding wrong pseudo-labels (see the module docstring)."""

    auroc: float
    aupr_errors: float
    aurc: float
    error_rate: float  # the share of wrong pixels: AUPR's floor

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def error_detection(score: Tensor, correct: Tensor) -> ErrorDetection:
    """All three figures for ``score`` against ``correct`` (bool, True where the pseudo-label is right)."""
    ok = correct.flatten().bool()
    rate = float((~ok).double().mean()) if ok.numel() else float("nan")
    return ErrorDetection(auroc(score, ok), aupr_errors(score, ok), aurc(score, ok), rate)
