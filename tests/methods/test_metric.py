"""Metric network, proxies and proxy losses against naive references."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from stvm_sdk.methods.parts.metric import MetricHead, balanced_pixel_mask, proxy_anchor_loss, proxy_nca_loss


def _naive_proxy_anchor(
    z: torch.Tensor, y: torch.Tensor, p: torch.Tensor, alpha: float, delta: float
) -> float:
    """Proxy-Anchor written as in the paper, with Python loops (float64)."""
    k = p.shape[0]
    sims = z @ p.T
    pos_terms, neg_terms = [], []
    for c in range(k):
        pos = [math.exp(-alpha * (float(sims[i, c]) - delta)) for i in range(len(y)) if y[i] == c]
        neg = [math.exp(alpha * (float(sims[i, c]) + delta)) for i in range(len(y)) if y[i] != c]
        if pos:
            pos_terms.append(math.log(1 + sum(pos)))
        neg_terms.append(math.log(1 + sum(neg)))
    return sum(pos_terms) / len(pos_terms) + sum(neg_terms) / k


def test_proxy_anchor_matches_naive_float64() -> None:
    g = torch.Generator().manual_seed(0)
    z = nnf.normalize(torch.randn(1, 6, 3, 4, generator=g, dtype=torch.float64), dim=1)
    p = nnf.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, 3, (1, 3, 4), generator=g)  # class 3 has no positives
    got = proxy_anchor_loss(z, y, p, torch.ones(1, 3, 4, dtype=torch.float64), alpha=8.0, delta=0.1)
    want = _naive_proxy_anchor(z.permute(0, 2, 3, 1).reshape(-1, 6), y.flatten(), p, 8.0, 0.1)
    assert abs(float(got) - want) < 1e-9


def test_proxy_anchor_ignores_masked_and_ignored_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    z = nnf.normalize(torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64), dim=1)
    p = nnf.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([[[0, 1], [2, 255]]])
    mask = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    got = proxy_anchor_loss(z, y, p, mask, 8.0, 0.1)
    keep = torch.tensor([0, 1])
    want = _naive_proxy_anchor(z.permute(0, 2, 3, 1).reshape(-1, 4)[keep], y.flatten()[keep], p, 8.0, 0.1)
    assert abs(float(got) - want) < 1e-9


def test_proxy_nca_is_cross_entropy_of_scaled_cosines() -> None:
    g = torch.Generator().manual_seed(0)
    z = nnf.normalize(torch.randn(2, 4, 3, 3, generator=g), dim=1)
    p = nnf.normalize(torch.randn(5, 4, generator=g), dim=1)
    y = torch.randint(0, 5, (2, 3, 3), generator=g)
    got = proxy_nca_loss(z, y, p, torch.ones(2, 3, 3), scale=10.0)
    want = nnf.cross_entropy(10.0 * z.permute(0, 2, 3, 1).reshape(-1, 4) @ p.T, y.flatten())
    torch.testing.assert_close(got, want)


def test_balanced_sampling_caps_pixels_per_class() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 30, 30, dtype=torch.long)
    labels[:, :5] = 1
    labels[:, 5:6] = 255
    mask = balanced_pixel_mask(labels, 3, cap=100, generator=g)
    assert float(mask[labels == 0].sum()) == 100
    assert float(mask[labels == 1].sum()) == 100
    assert float(mask[labels == 255].sum()) == 0
    small = balanced_pixel_mask(labels, 3, cap=10_000, generator=g)
    assert float(small.sum()) == float((labels != 255).sum())


def test_metric_head_copies_classifier_except_the_logit_layer(tiny_net: torch.nn.Module) -> None:
    head = MetricHead(tiny_net.classifier, 5, dim=12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(head.body[0].weight, tiny_net.classifier[0].weight)
    assert head.body[3].out_channels == 12 and head.proxies.shape == (5, 12)
    z = head(torch.randn(2, 16, 4, 6))
    assert z.shape == (2, 12, 4, 6)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 4, 6))
    assert head.body[0].weight is not tiny_net.classifier[0].weight


def test_metric_head_on_lraspp_dict_features() -> None:
    from stvm_sdk.models import build_torchvision, capture_features

    net = build_torchvision("lraspp_mobilenet_v3_large", 4).eval()
    with capture_features(net, "classifier") as hook, torch.no_grad():
        net(torch.rand(1, 3, 64, 64))
        feats = hook.pop()
    head = MetricHead(net.classifier, 4, dim=16)
    assert head(feats).shape[:2] == (1, 16)
