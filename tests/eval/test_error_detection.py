"""Error-detection figures against naive float64 references written from their definitions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from stvm_sdk.eval.error_detection import aupr_errors, aurc, auroc, error_detection


def _naive_auroc(score: list[float], ok: list[bool]) -> float:
    right = [s for s, o in zip(score, ok, strict=True) if o]
    wrong = [s for s, o in zip(score, ok, strict=True) if not o]
    pairs = list(itertools.product(right, wrong))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def _naive_aurc_over_orders(score: list[float], ok: list[bool]) -> float:
    """Mean over every order of tied pixels of the plain risk-coverage area (pixels kept best first)."""
    idx = list(range(len(score)))
    areas = []
    for perm in itertools.permutations(idx):
        order = sorted(perm, key=lambda i: -score[i])  # stable: ties keep the permutation's order
        wrong = 0
        area = 0.0
        for k, i in enumerate(order, 1):
            wrong += not ok[i]
            area += wrong / k
        areas.append(area / len(score))
    return sum(areas) / len(areas)


def _naive_aupr_over_orders(score: list[float], ok: list[bool]) -> float:
    """Average precision of the errors with ties as one step (precision at the end of each tie group)."""
    groups = sorted(set(score))
    found = seen = 0
    ap = 0.0
    n_wrong = sum(not o for o in ok)
    for v in groups:
        members = [o for s, o in zip(score, ok, strict=False) if s == v]
        found += sum(not o for o in members)
        seen += len(members)
        ap += (found / seen) * sum(not o for o in members)
    return ap / n_wrong


CASES = [
    ([0.9, 0.8, 0.3, 0.2, 0.7], [True, True, False, False, True]),  # perfect ranking
    ([0.1, 0.9, 0.5, 0.5, 0.5, 0.2], [True, False, True, False, True, False]),  # ties across classes
    ([0.4, 0.4, 0.4, 0.4], [True, False, True, True]),  # one score for all: no signal
    ([0.2, 0.9, 0.9, 0.1, 0.6, 0.6, 0.3], [False, True, False, True, True, False, True]),
]


@pytest.mark.parametrize(("score", "ok"), CASES)
def test_figures_match_their_definitions_with_ties(score: list[float], ok: list[bool]) -> None:
    s, c = torch.tensor(score), torch.tensor(ok)
    assert auroc(s, c) == pytest.approx(_naive_auroc(score, ok), abs=1e-12)
    assert aurc(s, c) == pytest.approx(_naive_aurc_over_orders(score, ok), abs=1e-12)
    assert aupr_errors(s, c) == pytest.approx(_naive_aupr_over_orders(score, ok), abs=1e-12)


def test_a_score_without_signal_gets_half_and_the_error_rate() -> None:
    ok = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) < 0.7
    flat = torch.full((10_000,), 0.5)
    figures = error_detection(flat, ok)
    assert figures.auroc == pytest.approx(0.5)
    assert figures.aupr_errors == pytest.approx(figures.error_rate)
    assert figures.aurc == pytest.approx(figures.error_rate, rel=1e-9)


def test_a_perfect_score_has_auroc_1_aupr_1_and_the_lowest_risk_area() -> None:
    ok = torch.tensor([True] * 70 + [False] * 30)
    score = ok.double() + torch.linspace(0, 0.1, 100)
    f = error_detection(score, ok)
    assert f.auroc == 1.0 and f.aupr_errors == pytest.approx(1.0)
    # best possible: the 30 errors are kept last, risk (k-70)/k for k > 70
    best = sum((k - 70) / k for k in range(71, 101)) / 100
    assert f.aurc == pytest.approx(best)
    assert math.isnan(auroc(score, torch.ones(100, dtype=torch.bool)))


def test_large_inputs_are_fast_and_agree_with_a_sorted_sweep() -> None:
    g = torch.Generator().manual_seed(1)
    score = torch.rand(2_000_000, generator=g)
    ok = torch.rand(2_000_000, generator=g) < score  # informative: higher score, more often right
    order = torch.argsort(score, descending=True)
    wrong = (~ok[order]).double().cumsum(0)
    sweep = float((wrong / torch.arange(1, len(ok) + 1, dtype=torch.float64)).mean())
    assert aurc(score, ok) == pytest.approx(sweep, rel=1e-9)  # continuous scores: no ties to treat
    assert 0.6 < auroc(score, ok) < 0.9


def test_bootstrap_std_of_the_miou_is_zero_for_identical_frames_and_grows_with_their_spread() -> None:
    from stvm_sdk.eval.metrics import miou_bootstrap_std

    same = torch.tensor([[[5, 1], [0, 4]]] * 30)
    assert miou_bootstrap_std(same, 50) == pytest.approx(0.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    mixed = torch.stack(
        [torch.tensor([[int(a), 3], [1, int(b)]]) for a, b in torch.randint(0, 20, (30, 2), generator=g)]
    )
    few, many = miou_bootstrap_std(mixed[:6], 300), miou_bootstrap_std(mixed, 300)
    assert few > many > 0  # more frames: less evaluation noise
