"""The method's named invariants (docs/method.md decisions 2-8)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import pytest
import torch

from stvm_sdk.config import AdaptConfig
from stvm_sdk.methods import get_method, ladder, method_keys
from stvm_sdk.methods.base import Method
from stvm_sdk.methods.parts.ema import ema_beta, ema_update
from stvm_sdk.methods.parts.mixing import mocm
from stvm_sdk.methods.parts.pseudo import class_balance, label_counts, reliability
from stvm_sdk.models import IMAGENET_MEAN, IMAGENET_STD, SegModel

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def _adapter(net: torch.nn.Module, method: str = "stvm", warmup: int = 0, **over: object) -> Method:
    """The method built on ``net``; ``over`` holds keys of its own section (``mix.tau``)."""
    own = method_keys(method, {"metric.warmup": warmup, **over})
    cfg = AdaptConfig(method=method).with_overrides({"run.iters": 20, **own})
    source = SegModel(net, 5, "classifier", MEAN, STD)
    return get_method(method).build(source, cfg, torch.Generator().manual_seed(0))


def _images(b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 32, 64, generator=torch.Generator().manual_seed(1))


def test_teacher_is_ema_of_student_including_buffers(tiny_net: torch.nn.Module) -> None:
    a = _adapter(tiny_net, student_bn="train")
    a.step(_images(), 0, torch.Generator().manual_seed(0))
    teacher_before = copy.deepcopy(a.teacher.state_dict())
    a.step(_images(), 1, torch.Generator().manual_seed(1))
    beta = ema_beta(1, a.options.ema_max)
    student = a.student.state_dict()
    for name, t_now in a.teacher.state_dict().items():
        if t_now.is_floating_point():
            expected = beta * teacher_before[name] + (1 - beta) * student[name]
            torch.testing.assert_close(t_now, expected, msg=f"{name} is not the EMA")
        else:
            assert torch.equal(t_now, student[name]), f"integer buffer {name} not copied"
    # BN running statistics really moved (the student's BN runs in train mode).
    assert not torch.equal(
        a.teacher.state_dict()["backbone.1.running_mean"], teacher_before["backbone.1.running_mean"]
    )


@pytest.mark.parametrize("method", ["stvm", "mean_teacher"])
def test_frozen_student_bn_keeps_the_start_statistics_in_student_and_teacher(
    tiny_net: torch.nn.Module, method: str
) -> None:
    """``student_bn="frozen"``: BN normalises by the (target) statistics it started with; its affine
    parameters still learn, and the teacher's BN buffers (EMA of the student's) stay equal to them."""
    a = _adapter(tiny_net, method, student_bn="frozen")
    start = {k: v.clone() for k, v in a.student.state_dict().items() if "running_" in k}
    weight_before = a.student.state_dict()["backbone.1.weight"].clone()
    for t in range(3):
        a.step(_images(), t, torch.Generator().manual_seed(t))
    for name, value in start.items():
        torch.testing.assert_close(a.student.state_dict()[name], value, msg=f"student {name} moved")
        torch.testing.assert_close(a.teacher.state_dict()[name], value, msg=f"teacher {name} moved")
    assert not torch.equal(a.student.state_dict()["backbone.1.weight"], weight_before)
    assert a.student.training  # only the BN layers are in eval mode


def test_ema_beta_schedule() -> None:
    assert ema_beta(0, 0.999) == 0.0
    assert ema_beta(1, 0.999) == 0.5
    assert ema_beta(10_000, 0.999) == 0.999


def test_ema_update_handles_integer_buffers() -> None:
    t, s = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    s.num_batches_tracked += 7
    s.running_mean += 1.0
    ema_update(t, s, 0.75)
    assert int(t.num_batches_tracked) == 7
    torch.testing.assert_close(t.running_mean, torch.full((3,), 0.25))


def test_teacher_never_requires_grad_and_gets_none(tiny_net: torch.nn.Module) -> None:
    a = _adapter(tiny_net)
    a.step(_images(), 0, torch.Generator().manual_seed(0))
    assert all(not p.requires_grad and p.grad is None for p in a.teacher.parameters())


def test_student_loss_gradients_never_reach_teacher_or_metric_net(tiny_net: torch.nn.Module) -> None:
    a = _adapter(tiny_net, **{"metric.weight": 0.0})  # total loss = student loss only
    a.step(_images(), 0, torch.Generator().manual_seed(0))
    for p in list(a.metric.parameters()):
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in a.student.parameters())


def test_metric_loss_gradients_never_reach_segmentation_networks(tiny_net: torch.nn.Module) -> None:
    for proxies in ("centroid", "learned"):
        a = _adapter(tiny_net, warmup=5, **{"metric.proxies": proxies})  # warm-up: only the metric loss
        a.step(_images(), 0, torch.Generator().manual_seed(0))
        assert all(p.grad is None for p in a.student.parameters())
        assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in a.metric.body.parameters())
        if proxies == "learned":
            assert a.metric.proxies.grad is not None and torch.count_nonzero(a.metric.proxies.grad) > 0
        else:  # centroids are buffers that follow the embeddings: never a gradient
            assert a.metric.proxies.grad is None


def test_student_waits_during_metric_warmup(tiny_net: torch.nn.Module) -> None:
    a = _adapter(tiny_net, warmup=2)
    before = copy.deepcopy(a.student.state_dict())
    logs = a.step(_images(), 0, torch.Generator().manual_seed(0))
    assert "loss_st" not in logs
    for k, v in a.student.state_dict().items():
        assert torch.equal(v, before[k]), k
    logs = a.step(_images(), 2, torch.Generator().manual_seed(0))
    assert "loss_st" in logs


@pytest.mark.parametrize("mode", ["softmax", "cosine", "agreement"])
def test_reliability_weights_lie_in_unit_interval_and_match_pseudo_label_shape(mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 8, 5, 7, generator=g), dim=1)
    proxies = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    labels = torch.randint(0, 5, (2, 5, 7), generator=g)
    labels[0, 0, 0] = 255
    r = reliability(z, proxies, labels, mode, 16.0, "torch")
    assert r.shape == labels.shape
    assert float(r.min()) >= 0.0 and float(r.max()) <= 1.0
    assert float(r[0, 0, 0]) == 0.0
    assert not r.requires_grad


def test_mocm_mask_label_and_weight_agree_pixel_for_pixel() -> None:
    g = torch.Generator().manual_seed(0)
    b, h, w = 3, 40, 72
    images = torch.rand(b, 3, h, w, generator=g)
    labels = torch.randint(0, 5, (b, h, w), generator=g)
    labels[:, :4] = 255
    weights = torch.rand(b, h, w, generator=g)
    x, y, r, m = mocm(
        images, labels, weights, 5, patch=8, tau=0.3, fraction=0.5, generator=g, backend="torch"
    )
    partner = torch.roll(torch.arange(b), -1)
    mf = m[:, None].float()
    torch.testing.assert_close(x, mf * images + (1 - mf) * images[partner])
    assert torch.equal(y, torch.where(m, labels, labels[partner]))
    torch.testing.assert_close(r, torch.where(m, weights, weights[partner]))
    assert not bool(m[:, :4].any()), "ignored pixels are never pasted"
    assert bool(m.any()) and not bool(m.all())
    # Pasted pixels hold only about half of each sample's classes.
    for a in range(b):
        pasted = set(labels[a][m[a]].unique().tolist())
        present = set(labels[a][labels[a] != 255].unique().tolist())
        assert pasted <= present and len(pasted) <= (len(present) + 1) // 2


def test_mocm_high_tau_pastes_nothing() -> None:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(2, 3, 16, 16, generator=g), torch.randint(0, 3, (2, 16, 16), generator=g)
    weights = torch.full((2, 16, 16), 0.2)
    _, y, _, m = mocm(
        images, labels, weights, 3, patch=4, tau=0.5, fraction=1.0, generator=g, backend="torch"
    )
    assert not bool(m.any()) and torch.equal(y, labels[torch.tensor([1, 0])])


@pytest.mark.parametrize("method", [m.name for m in ladder() if m.trains()])
def test_every_training_method_takes_a_finite_step(tiny_net: torch.nn.Module, method: str) -> None:
    a = _adapter(tiny_net, method=method)
    before = copy.deepcopy(a.student.state_dict())
    logs = a.step(_images(), 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(logs["loss"])
    assert any(not torch.equal(v, before[k]) for k, v in a.student.state_dict().items())


def test_threshold_st_ignores_the_least_confident_pixels(tiny_net: torch.nn.Module) -> None:
    a = _adapter(tiny_net, method="threshold_st", keep=0.2)
    assert a.metric is None and a.teacher is not None
    a.step(_images(), 0, torch.Generator().manual_seed(0))  # runs; the kept share is checked below
    from stvm_sdk.models import forward_logits, normalize

    with torch.no_grad():
        conf = forward_logits(a.teacher, normalize(_images(), MEAN, STD)).softmax(1).max(1).values
    thr = torch.quantile(conf.flatten(), 0.8)
    assert 0.1 < float((conf >= thr).float().mean()) < 0.3


def test_class_normalisation_is_the_mean_over_classes_of_each_class_mean_weighted_loss() -> None:
    """Decision 6's ``normalize="class"``: scaling each weight by ``class_balance`` and dividing by the
    valid pixels gives, in float64, mean_k (mean_{i: y_i = k} w_i CE_i) over the classes present."""
    g = torch.Generator().manual_seed(3)
    k = 5
    logits = torch.randn(2, k, 7, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k - 1, (2, 7, 9), generator=g)  # class k-1 absent
    labels[0, :2] = 255
    labels[1, 0, 0] = 2  # a class with very few pixels still counts as one class
    weights = torch.rand(2, 7, 9, generator=g, dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    expected = torch.stack([(weights * ce)[labels == c].mean() for c in labels.unique() if c != 255]).mean()
    counts = label_counts(labels)
    assert torch.equal(counts, torch.bincount(labels.flatten(), minlength=256))
    factor = class_balance(counts, k)
    halves = label_counts(labels[:1]) + label_counts(labels[1:])  # what two processes' counts sum to
    torch.testing.assert_close(class_balance(halves, k), factor)
    assert factor[k - 1] == 0 and factor[255] == 0
    scaled = weights * factor[labels].to(weights)
    got = (scaled * ce).sum() / (labels != 255).sum()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)  # the factor is float32
    # the weights still average to the valid-pixel mean of the original scale (mean factor 1)
    torch.testing.assert_close(factor[labels][labels != 255].mean(), torch.tensor(1.0))


@pytest.mark.parametrize("power", [0.0, 0.25, 0.5, 1.0])
def test_class_balance_power_goes_from_valid_to_class_mean_with_mean_factor_one(power: float) -> None:
    """``class_balance(counts, K, p)`` is n_k^-p normalised so the factors average to 1 over the valid
    pixels: p = 0 is the plain valid-pixel mean (every present class 1), p = 1 the class mean
    N / (K' n_k), p = 0.5 (``"class_sqrt"``) in between; ratios between classes follow (n_j / n_k)^p."""
    k = 6
    labels = torch.tensor([0] * 400 + [1] * 100 + [2] * 25 + [4] * 1 + [255] * 30)  # class 3, 5 absent
    counts = label_counts(labels)
    n = counts[:k].double()
    factor = class_balance(counts, k, power).double()
    assert factor[3] == 0 and factor[5] == 0 and factor[255] == 0 and factor[k:].abs().sum() == 0
    torch.testing.assert_close((n * factor[:k]).sum(), n.sum(), rtol=1e-6, atol=0)
    for a, b in [(0, 1), (1, 2), (0, 4)]:
        torch.testing.assert_close(factor[b] / factor[a], (n[a] / n[b]) ** power, rtol=1e-5, atol=0)
    if power == 0.0:
        torch.testing.assert_close(factor[[0, 1, 2, 4]], torch.ones(4, dtype=torch.float64))
    if power == 1.0:
        expected = n.sum() / (4 * n[[0, 1, 2, 4]])
        torch.testing.assert_close(factor[[0, 1, 2, 4]], expected, rtol=1e-6, atol=0)


def test_class_sqrt_is_a_config_choice_and_moves_the_student(tiny_net: torch.nn.Module) -> None:
    from stvm_sdk.methods.parts.pseudo import CLASS_POWER

    assert CLASS_POWER == {"class": 1.0, "class_sqrt": 0.5}
    a = _adapter(tiny_net, method="stvm", **{"normalize": "class_sqrt"})
    before = copy.deepcopy(a.student.state_dict())
    logs = a.step(_images(), 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(logs["loss_st"])
    assert any(not torch.equal(v, before[k]) for k, v in a.student.state_dict().items())


@pytest.mark.parametrize("method", ["mean_teacher", "stvm"])
def test_class_normalised_step_moves_the_student(tiny_net: torch.nn.Module, method: str) -> None:
    a = _adapter(tiny_net, method=method, **{"normalize": "class"})
    before = copy.deepcopy(a.student.state_dict())
    logs = a.step(_images(), 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(logs["loss_st"])
    assert any(not torch.equal(v, before[k]) for k, v in a.student.state_dict().items())


def test_confident_labels_keep_each_classes_most_confident_share() -> None:
    from stvm_sdk.methods.parts.pseudo import confident_labels

    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 4, (2, 9, 11), generator=g)
    labels[0, 0] = 255
    conf = torch.rand(2, 9, 11, generator=g)
    kept = confident_labels(labels, conf, 5, 0.3)
    for c in range(4):
        in_class = labels == c
        values = conf[in_class].sort(descending=True).values
        n_keep = math.ceil(0.3 * len(values))
        expected = in_class & (conf >= values[n_keep - 1])
        assert torch.equal(kept == c, expected), c
    assert bool((kept[labels == 255] == 255).all())


def test_combined_and_classwise_reliability_stay_in_the_unit_interval_and_rank_within_classes() -> None:
    from stvm_sdk.methods.parts.options import ReliabilityConfig
    from stvm_sdk.methods.parts.pseudo import pixel_reliability

    g = torch.Generator().manual_seed(5)
    z = torch.nn.functional.normalize(torch.randn(2, 8, 4, 6, generator=g), dim=1)
    proxies = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    y_feat = torch.randint(0, 3, (2, 4, 6), generator=g)
    pseudo = torch.randint(0, 3, (2, 16, 24), generator=g)
    conf = torch.rand(2, 16, 24, generator=g)
    soft = pixel_reliability(z, proxies, y_feat, pseudo, conf, ReliabilityConfig(mode="softmax"), 3, "torch")
    comb = pixel_reliability(
        z,
        proxies,
        y_feat,
        pseudo,
        conf,
        ReliabilityConfig(mode="combined", confidence_power=0.25),
        3,
        "torch",
    )
    torch.testing.assert_close(comb, conf**0.25 * soft**0.75)
    cw = pixel_reliability(
        z, proxies, y_feat, pseudo, conf, ReliabilityConfig(mode="combined", classwise=True), 3, "torch"
    )
    assert float(cw.min()) >= 0.0 and float(cw.max()) <= 1.0
    base = pixel_reliability(z, proxies, y_feat, pseudo, conf, ReliabilityConfig(mode="combined"), 3, "torch")
    for c in range(3):  # the same order inside each class, and the class's best pixel gets 1
        m = pseudo == c
        assert torch.equal(torch.argsort(cw[m], stable=True), torch.argsort(base[m], stable=True))
        assert float(cw[m].max()) == 1.0


def test_rare_power_pastes_rare_classes_more_often() -> None:
    from stvm_sdk.methods.parts.mixing import choose_classes

    counts = torch.tensor([[900.0, 90.0, 10.0]]).repeat(4000, 1)
    mean_rel = torch.full_like(counts, 0.8)
    g = torch.Generator().manual_seed(0)
    plain = choose_classes(counts, mean_rel, 1 / 3, g).float().mean(0)
    rare = (
        choose_classes(counts, mean_rel, 1 / 3, torch.Generator().manual_seed(0), rare_power=1.0)
        .float()
        .mean(0)
    )
    assert abs(float(plain[2]) - 1 / 3) < 0.03  # equal reliability: uniform
    assert float(rare[2]) > 0.8 and float(rare[0]) < 0.05  # p ∝ 1/share: the 1 % class nearly always


@pytest.mark.parametrize(
    "over",
    [
        {"metric.clean": "confident"},
        {"reliability.mode": "combined"},
        {"reliability.classwise": True},
        {"mix.rare_power": 1.0},
        {"metric.proxies": "centroid"},
        {"metric.proxies": "centroid", "reliability.mode": "combined"},
    ],
)
def test_stvm_options_take_a_finite_step(tiny_net: torch.nn.Module, over: dict[str, object]) -> None:
    a = _adapter(tiny_net, **over)
    logs = a.step(_images(), 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(logs["loss"]) and torch.isfinite(logs["loss_metric"])
    assert 0.0 <= float(logs["mean_weight"]) <= 1.0


def test_centroid_proxies_follow_the_classes_and_are_not_learned(tiny_net: torch.nn.Module) -> None:
    """``metric.proxies = "centroid"``: proxies are unit EMA centroids of M's embeddings, updated by
    each step's pixels (a class's first sighting takes its mean), absent classes keep theirs, and no
    optimiser group holds them."""
    a = _adapter(tiny_net, **{"metric.proxies": "centroid", "metric.centroid_momentum": 0.9})
    metric = a.metric
    start = metric.unit_proxies().clone()
    assert not metric.proxies.requires_grad
    assert all(metric.proxies is not p for g in a.optimizer.param_groups for p in g["params"])
    a.step(_images(), 0, torch.Generator().manual_seed(0))
    after = metric.unit_proxies()
    assert torch.allclose(after.norm(dim=1), torch.ones(len(after)), atol=1e-5)
    moved = ~torch.isclose(after, start).all(1)
    assert torch.equal(moved, metric.seen)  # exactly the classes the teacher predicted moved
    # a direct update: first sighting = the class's weighted mean; then an EMA step towards it
    z = torch.nn.functional.normalize(torch.randn(1, after.shape[1], 2, 2), dim=1)
    labels = torch.tensor([[[0, 0], [255, 1]]])
    metric.seen.zero_()
    metric.update_centroids(z, labels, torch.ones(1, 2, 2), momentum=0.9)
    mean0 = torch.nn.functional.normalize(z[0, :, 0, :].sum(1), dim=0)
    assert torch.allclose(metric.centroids[0], mean0, atol=1e-5)
    assert torch.allclose(metric.centroids[1], z[0, :, 1, 1], atol=1e-5)
    before = metric.centroids.clone()
    metric.update_centroids(z.flip(-1), labels, torch.ones(1, 2, 2), momentum=0.9)
    want = torch.nn.functional.normalize(0.9 * before[1] + 0.1 * z[0, :, 1, 0], dim=0)
    assert torch.allclose(metric.centroids[1], want, atol=1e-5)
    assert torch.equal(metric.centroids[2:], before[2:])  # absent classes untouched


def test_mocm_prob_leaves_undrawn_samples_whole_and_prob_one_is_the_paper_rule() -> None:
    """``mix.prob``: a sample not drawn reaches the student as its own frame, labels and weights;
    prob = 1 draws nothing extra, so the default mix is bit-identical to the rule without the option."""
    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 16, 16, generator=g)
    labels = torch.randint(0, 3, (4, 16, 16), generator=g)
    weights = torch.rand(4, 16, 16, generator=g)
    kw = {"patch": 4, "tau": 0.0, "fraction": 1.0, "backend": "torch"}
    none = mocm(images, labels, weights, 3, generator=torch.Generator().manual_seed(0), prob=0.0, **kw)
    assert torch.equal(none[0], images) and torch.equal(none[1], labels) and torch.equal(none[2], weights)
    assert not none[3].any()
    one = mocm(images, labels, weights, 3, generator=torch.Generator().manual_seed(0), prob=1.0, **kw)
    plain = mocm(images, labels, weights, 3, generator=torch.Generator().manual_seed(0), **kw)
    assert all(torch.equal(a, b) for a, b in zip(one, plain, strict=True)) and one[3].any()
    half = mocm(images, labels, weights, 3, generator=torch.Generator().manual_seed(1), prob=0.5, **kw)
    mixed = [bool(m.any()) for m in half[3]]
    for i, was_mixed in enumerate(mixed):
        if not was_mixed:
            assert torch.equal(half[0][i], images[i]) and torch.equal(half[1][i], labels[i])


def test_mocm_keep_clean_adds_the_composites_to_the_frames_themselves(tiny_net: torch.nn.Module) -> None:
    """``mix.keep_clean`` (the default): the student's batch is the frames with their own labels and
    weights, then the same composites the paper's rule makes (same draws): MOCM adds samples instead of
    replacing them."""
    g = torch.Generator().manual_seed(3)
    images = torch.rand(3, 3, 32, 64, generator=g)
    labels = torch.randint(0, 5, (3, 32, 64), generator=g)
    weights = torch.rand(3, 32, 64, generator=g)
    plain = _adapter(tiny_net, **{"mix.tau": 0.0, "mix.patch": 8, "mix.keep_clean": False})
    both = _adapter(tiny_net, **{"mix.tau": 0.0, "mix.patch": 8, "mix.keep_clean": True})
    mixed = plain.mix(images, labels, weights, torch.Generator().manual_seed(0), {})
    out = both.mix(images, labels, weights, torch.Generator().manual_seed(0), {})
    assert all(o.shape[0] == 6 for o in out)
    assert (
        torch.equal(out[0][:3], images)
        and torch.equal(out[1][:3], labels)
        and torch.equal(out[2][:3], weights)
    )
    assert all(torch.equal(o[3:], m) for o, m in zip(out, mixed, strict=True))
    assert not torch.equal(mixed[0], images)  # the composites differ from the frames
    both.step(images, 0, torch.Generator().manual_seed(0))  # a training step takes the doubled batch


@contextlib.contextmanager
def _loss_inputs() -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Records the (labels, weights) every mean-teacher step hands to its loss; the loss is unchanged."""
    import stvm_sdk.methods.mean_teacher as mt

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = mt.weighted_cross_entropy

    def spy(logits, labels, weights, **kw):
        seen.append((labels.detach().clone(), weights.detach().clone()))
        return original(logits, labels, weights, **kw)

    mt.weighted_cross_entropy = spy
    try:
        yield seen
    finally:
        mt.weighted_cross_entropy = original


def _weights_by_scale(
    net: torch.nn.Module, method: str, scales: tuple[str, ...]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One step of ``method`` per ``weight_scale``, same frames and draws: what reached each loss."""
    with _loss_inputs() as seen:
        for scale in scales:
            a = _adapter(net, method, weight_scale=scale, normalize="valid")
            a.step(_images(), 0, torch.Generator().manual_seed(0))
    return seen


def test_unit_mean_weights_rescale_the_loss_weights_to_mean_one(tiny_net: torch.nn.Module) -> None:
    """``weight_scale = "unit_mean"``: confidence weights rescaled to mean 1 over valid pixels give the
    loss of weights w / mean(w); for the mean teacher (weights 1) the option changes nothing."""
    (_, raw), (_, unit) = _weights_by_scale(tiny_net, "confidence_weighted", ("raw", "unit_mean"))
    assert float(raw.mean()) < 1.0 and float(unit.mean()) == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(unit, raw / raw.mean(), atol=1e-6)
    (_, ones), (_, same) = _weights_by_scale(tiny_net, "mean_teacher", ("raw", "unit_mean"))
    assert torch.equal(ones, same)


def test_class_mean_weights_have_mean_one_inside_every_pseudo_class(tiny_net: torch.nn.Module) -> None:
    """``weight_scale = "class_mean"``: inside each pseudo-class the weights reaching the loss average 1
    and keep their order (one factor per class), so weighting never moves loss between classes; the
    mean teacher's weights (all 1) are unchanged."""
    (labels, raw), (same_labels, scaled) = _weights_by_scale(
        tiny_net, "confidence_weighted", ("raw", "class_mean")
    )
    assert torch.equal(labels, same_labels)
    present = [int(k) for k in labels.unique() if int(k) != 255]
    assert len(present) >= 2
    for k in present:
        inside = labels == k
        assert float(scaled[inside].mean()) == pytest.approx(1.0, abs=1e-4)
        ratio = scaled[inside] / raw[inside]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)
    (_, ones), (_, same) = _weights_by_scale(tiny_net, "mean_teacher", ("raw", "class_mean"))
    assert torch.equal(ones, same)


def test_a_saved_metric_network_loads_with_the_proxies_it_was_trained_with(tiny_net: torch.nn.Module) -> None:
    """``load_extras`` follows the saved state: learned proxies of a run recorded before centroid
    proxies existed load under today's default config, and centroids load as centroids."""
    from stvm_sdk.methods.stvm import Stvm

    source = SegModel(tiny_net, 5, "classifier", MEAN, STD)
    for proxies in ("learned", "centroid"):
        a = _adapter(tiny_net, **{"metric.proxies": proxies})
        a.step(_images(), 0, torch.Generator().manual_seed(0))
        state = {f"metric.{k}": v for k, v in a.metric.state_dict().items()}
        loaded = Stvm.load_extras(source, AdaptConfig(), state)["metric"]
        assert loaded.centroid == (proxies == "centroid")
        assert torch.equal(loaded.unit_proxies(), a.metric.unit_proxies())
