"""OnlineAdapter: predict before adapting, bounded memory, the health rule, anchors, state, export.

Named invariants of continual adaptation: the prediction of a frame is made before the method learns
from it; the source model is never mutated; memory does not grow with the stream; a collapse fires the
health rule and restores healthy weights; a resumed adapter continues exactly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from support import TinySegNet

from stvm_sdk.errors import ConfigError, DataError
from stvm_sdk.inputs import as_segmodel
from stvm_sdk.methods import method_keys
from stvm_sdk.models.contract import normalize
from stvm_sdk.stream import HealthRule, OnlineAdapter, StreamConfig, online_config
from stvm_sdk.stream.health import HealthMonitor, js_divergence
from stvm_sdk.stream.online import RingBuffer


def _frames(n: int, size: tuple[int, int] = (32, 48), seed: int = 0) -> list[torch.Tensor]:
    """Blocky frames with a sky band (class 4-like colour) and two random ground colours."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.rand(3, *size, generator=g) * 0.15
        x[:, : size[0] // 3] += torch.tensor([0.3, 0.5, 0.7])[:, None, None]
        x[:, size[0] // 3 :, : size[1] // 2] += torch.rand(3, 1, 1, generator=g)
        x[:, size[0] // 3 :, size[1] // 2 :] += torch.rand(3, 1, 1, generator=g)
        out.append(x.clamp(0, 1))
    return out


@pytest.fixture
def source() -> object:
    torch.manual_seed(0)
    return as_segmodel(TinySegNet(), classifier="classifier")


def _quick_cfg(method: str) -> object:
    own = method_keys(method, {"metric.warmup": 2, "mix.patch": 8})
    return online_config(method).with_overrides({**own, "optim.lr": 1e-3})


@pytest.mark.parametrize("method", ["source_only", "adabn", "tent", "mean_teacher", "stvm"])
def test_each_frame_is_predicted_before_the_method_adapts_on_it(source, method: str) -> None:
    adapter = OnlineAdapter(
        source, method, config=_quick_cfg(method), stream=StreamConfig(window=4, batch_size=2)
    )
    for i, frame in enumerate(_frames(8)):
        expected = adapter.predict(frame)
        before = copy.deepcopy(adapter.network.state_dict())
        res = adapter.step(frame)
        assert torch.equal(res.labels, expected), f"frame {i}: the prediction saw the frame's own update"
        assert res.labels.shape == frame.shape[1:]
        changed = any(not torch.equal(v, adapter.network.state_dict()[k]) for k, v in before.items())
        assert changed == (method != "source_only")
    assert adapter.frames == 8


def test_source_model_is_never_mutated(source) -> None:
    snapshot = copy.deepcopy(source.module.state_dict())
    adapter = OnlineAdapter(
        source, "stvm", config=_quick_cfg("stvm"), stream=StreamConfig(window=3, batch_size=2)
    )
    for frame in _frames(10):
        adapter.step(frame)
    for k, v in source.module.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    for k, v in adapter.source.module.state_dict().items():  # the adapter's own frozen copy too
        assert torch.equal(v, snapshot[k]), k


def test_adabn_online_moves_statistics_only(source) -> None:
    adapter = OnlineAdapter(source, "adabn", stream=StreamConfig(bn_momentum=0.5))
    weights = {n: p.detach().clone() for n, p in adapter.network.named_parameters()}
    mean0 = adapter.network.backbone[1].running_mean.clone()
    for frame in _frames(5):
        adapter.step(frame)
    assert not torch.allclose(adapter.network.backbone[1].running_mean, mean0)
    for n, p in adapter.network.named_parameters():
        assert torch.equal(p, weights[n]), n


def test_the_teacher_follows_the_students_statistics_and_never_gets_gradients(source) -> None:
    adapter = OnlineAdapter(
        source, "mean_teacher", config=_quick_cfg("mean_teacher"), stream=StreamConfig(batch_size=2)
    )
    for frame in _frames(4):
        adapter.step(frame)
    teacher, student = adapter.method.teacher, adapter.method.student
    assert teacher is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert torch.equal(teacher.backbone[1].running_mean, student.backbone[1].running_mean)


def test_memory_is_bounded_by_the_ring_buffer(source) -> None:
    adapter = OnlineAdapter(source, "mean_teacher", config=_quick_cfg("mean_teacher"),
                            stream=StreamConfig(buffer=4, batch_size=2, window=5))  # fmt: skip
    frames = _frames(30)
    for frame in frames[:10]:
        adapter.step(frame)
    early = adapter.memory_bytes()
    for frame in frames[10:]:
        adapter.step(frame)
    late = adapter.memory_bytes()
    assert adapter.buffer.data is not None and adapter.buffer.data.shape == (4, 3, 32, 48)
    assert early == late, (early, late)
    assert late["buffer"] == 4 * 3 * 32 * 48 * 4


def test_ring_buffer_batches_hold_the_newest_frame_first_and_distinct_others() -> None:
    buf = RingBuffer(5)
    for i in range(12):
        buf.push(torch.full((3, 2, 2), float(i)))
    b = buf.batch(4, torch.Generator().manual_seed(0))
    firsts = [int(v) for v in b[:, 0, 0, 0]]
    assert firsts[0] == 11 and len(set(firsts)) == 4 and all(7 <= v <= 11 for v in firsts)
    assert len(buf) == 5 and buf.count == 12


def test_js_divergence_bounds() -> None:
    p = torch.tensor([10.0, 10.0, 0.0])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(1.0)
    assert 0 < js_divergence(torch.tensor([5.0, 1.0]), torch.tensor([1.0, 5.0])) < 1


def test_health_rule_judges_windows_and_waits_for_patience() -> None:
    mon = HealthMonitor(3, HealthRule(patience=2, js_max=0.3))
    spread = torch.tensor([[0, 1, 2], [2, 1, 0]])
    collapsed = torch.zeros(2, 3, dtype=torch.long)
    mon.observe(spread, spread, 0.7)
    ok = mon.close()
    assert ok["healthy"] and not ok["restore"] and ok["hist_js"] == 0.0 and ok["class_ratio"] == 1.0
    mon.observe(collapsed, spread, 0.99)
    first = mon.close()
    assert not first["healthy"] and not first["restore"]  # patience 2: not yet
    assert any("classes" in r for r in first["reasons"]) and any("JS" in r for r in first["reasons"])
    mon.observe(collapsed, spread, 0.99)
    assert mon.close()["restore"]
    mon.observe(spread, spread, 0.5, {"loss": float("nan")})
    bad = mon.close()
    assert bad["restore"] and "non-finite loss or logits" in bad["reasons"]  # at once, whatever patience


def _collapse(adapter: OnlineAdapter) -> None:
    """Force a collapse: every network of the method predicts class 0 everywhere."""
    with torch.no_grad():
        for net in (adapter.method.student, adapter.method.teacher):
            if net is not None:
                net.classifier[-1].bias[0] = 1e4


@pytest.mark.parametrize("method", ["mean_teacher", "stvm"])
def test_a_forced_collapse_fires_the_health_rule_and_restores_healthy_weights(source, method: str) -> None:
    rule = HealthRule(patience=1)
    adapter = OnlineAdapter(source, method, config=_quick_cfg(method),
                            stream=StreamConfig(window=4, batch_size=2, health=rule))  # fmt: skip
    frames = _frames(24)
    records = [r.window for f in frames[:8] if (r := adapter.step(f)).window]
    assert all(r["healthy"] for r in records), records
    healthy = copy.deepcopy(adapter._healthy)
    _collapse(adapter)
    collapsed = adapter.predict(frames[8])
    assert (collapsed == 0).all()
    fired = [r.window for f in frames[8:12] if (r := adapter.step(f)).window]
    assert fired and fired[-1]["restore"] and not fired[-1]["healthy"]
    assert fired[-1]["restored_to"] == "last_healthy"
    assert adapter.restores and adapter.restores[-1]["frame"] == 12
    assert healthy is not None
    for k, v in adapter.method.state_dict().items():  # exactly the snapshot of the last healthy window
        assert torch.equal(v.cpu(), healthy[k]), k
    after = adapter.predict(frames[12])
    assert len(after.unique()) > 1
    # Collapsing again right away: the snapshot was already on the way down, so back to the source.
    _collapse(adapter)
    again = [r.window for f in frames[12:16] if (r := adapter.step(f)).window]
    assert again[-1]["restored_to"] == "source" and adapter.steps == 0
    src = adapter.source.module.state_dict()
    for k, v in adapter.network.state_dict().items():
        if v.is_floating_point() and "running" not in k:
            assert torch.equal(v.cpu(), src[k]), k


def _collapse_after_two_healthy_windows(source, restore: str) -> tuple[OnlineAdapter, list[dict]]:
    """A mean teacher (patience 1, ``restore``) collapsed after 8 healthy frames; the next window."""
    rule = HealthRule(patience=1, restore=restore)
    adapter = OnlineAdapter(source, "mean_teacher", config=_quick_cfg("mean_teacher"),
                            stream=StreamConfig(window=4, batch_size=2, health=rule))  # fmt: skip
    frames = _frames(12)
    for f in frames[:8]:
        adapter.step(f)
    _collapse(adapter)
    return adapter, [r.window for f in frames[8:12] if (r := adapter.step(f)).window]


def test_on_collapse_source_always_restores_the_source(source) -> None:
    adapter, _ = _collapse_after_two_healthy_windows(source, "source")
    assert [r["to"] for r in adapter.restores] == ["source"]


def test_stochastic_restore_pulls_a_share_of_weights_back_to_the_source(source) -> None:
    cfg = _quick_cfg("mean_teacher").with_overrides({"optim.lr": 0.5})
    for prob, expect_some in ((0.0, False), (0.3, True)):
        adapter = OnlineAdapter(
            source, "mean_teacher", config=cfg, stream=StreamConfig(batch_size=2, restore_prob=prob)
        )
        for f in _frames(3):
            adapter.step(f)
        w = adapter.method.student.classifier[0].weight
        same = (w == adapter._anchor["classifier.0.weight"]).float().mean().item()
        assert (same > 0.15) == expect_some, (prob, same)


def test_state_dict_resumes_exactly(source) -> None:
    cfg, scfg = _quick_cfg("stvm"), StreamConfig(window=3, batch_size=3, buffer=5)
    frames = _frames(14)
    whole = OnlineAdapter(source, "stvm", config=cfg, stream=scfg)
    labels = [whole.step(f).labels for f in frames]
    first = OnlineAdapter(source, "stvm", config=cfg, stream=scfg)
    for f in frames[:8]:
        first.step(f)
    state = copy.deepcopy(first.state_dict())
    del first
    second = OnlineAdapter(source, "stvm", config=cfg, stream=scfg)
    second.load_state_dict(state)
    resumed = [second.step(f).labels for f in frames[8:]]
    for a, b in zip(labels[8:], resumed, strict=True):
        assert torch.equal(a, b)
    for k, v in whole.method.state_dict().items():
        assert torch.equal(v, second.method.state_dict()[k]), k


def test_frames_of_another_size_or_shape_are_one_line_errors(source) -> None:
    adapter = OnlineAdapter(source, "adabn")
    adapter.step(torch.rand(3, 32, 48))
    with pytest.raises(DataError, match="--size"):
        adapter.step(torch.rand(3, 40, 48))
    with pytest.raises(DataError, match=r"\[3,H,W\]"):
        adapter.step(torch.rand(1, 3, 32, 48))


def test_bad_stream_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="buffer"):
        StreamConfig(buffer=2, batch_size=4)
    with pytest.raises(ConfigError, match="restore"):
        HealthRule(restore="nowhere")


def test_the_current_teacher_exports_through_the_verified_onnx_path(source, tmp_path: Path) -> None:
    adapter = OnlineAdapter(
        source, "mean_teacher", config=_quick_cfg("mean_teacher"), stream=StreamConfig(batch_size=2)
    )
    for f in _frames(4):
        adapter.step(f)
    report = adapter.export(tmp_path / "export", shape="32x48", verify_frames=2)
    onnx = tmp_path / "export" / "model.onnx"
    assert onnx.is_file() and report.artifacts and all(a.verification.passed for a in report.artifacts)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    x = _frames(1)[0][None].numpy()
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    # The export is the deliverable in eval mode: BatchNorm by the running statistics the stream followed.
    model = adapter.deliverable()
    with torch.no_grad():
        expected = model.module(normalize(torch.from_numpy(x), model.mean, model.std))["out"].argmax(1)[0]
    agree = (torch.from_numpy(out).argmax(1)[0] == expected).float().mean().item()
    assert agree > 0.99


def test_frame_statistics_prediction_leaves_running_statistics_alone(source) -> None:
    adapter = OnlineAdapter(source, "adabn", stream=StreamConfig(bn_predict="frame", bn_momentum=0.0))
    bn = adapter.network.backbone[1]
    mean0 = bn.running_mean.clone()
    frame = _frames(1)[0]
    labels = adapter.predict(frame)
    assert torch.equal(bn.running_mean, mean0) and not bn.training
    with torch.no_grad():  # what "frame" means: BatchNorm normalises by this frame's own statistics
        net = copy.deepcopy(adapter.network).train()
        x = (frame[None] - torch.tensor(source.mean).view(1, 3, 1, 1)) / torch.tensor(source.std).view(
            1, 3, 1, 1
        )
        expected = net(x)["out"].argmax(1)[0]
    assert torch.equal(labels, expected)


def test_a_collapse_that_training_itself_causes_fires_the_health_rule(source) -> None:
    """Self-training with a far too high learning rate and a fast teacher, no anchor: the pseudo-labels
    feed on themselves until one class is left; the rule must notice it from the histograms alone."""
    cfg = online_config("mean_teacher").with_overrides(
        {"optim.lr": 0.5, "methods.mean_teacher.ema_max": 0.5, "methods.mean_teacher.normalize": "valid"}
    )
    adapter = OnlineAdapter(source, "mean_teacher", config=cfg,
                            stream=StreamConfig(window=5, batch_size=2, restore_prob=0.0))  # fmt: skip
    windows = [r.window for f in _frames(30) if (r := adapter.step(f)).window]
    fired = [w for w in windows if w["restore"]]
    assert fired, windows
    first = fired[0]
    assert not first["healthy"]
    assert first["classes"] < first["source_classes"] or first["hist_js"] > 0.45
    assert [r["to"] for r in adapter.restores][:2] == ["last_healthy", "source"]


class _PooledBranchNet(TinySegNet):
    """TinySegNet plus an image-pooling branch with BatchNorm (as DeepLabV3's ASPP has): one frame gives
    that BatchNorm a single value per channel."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Conv2d(16, 16, 1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        out = self.classifier(f + self.pool(f))
        return {"out": torch.nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear")}


@pytest.mark.parametrize("method", ["tent", "stvm"])
def test_frame_statistics_work_on_a_pooled_branch_with_one_value_per_channel(method: str) -> None:
    src = as_segmodel(_PooledBranchNet(), classifier="classifier")
    adapter = OnlineAdapter(src, method, config=_quick_cfg(method), stream=StreamConfig(batch_size=2))
    pooled_bn = adapter.network.pool[2]
    mean0 = pooled_bn.running_mean.clone()
    for frame in _frames(3):
        labels = adapter.step(frame).labels
    assert labels.shape == (32, 48)
    if method == "stvm":  # one frame cannot give that layer statistics: it keeps the source's running ones
        assert torch.equal(pooled_bn.running_mean, mean0)
        assert not torch.equal(adapter.network.backbone[1].running_mean, src.module.backbone[1].running_mean)


def test_on_collapse_off_logs_the_verdict_and_restores_nothing(source) -> None:
    adapter, fired = _collapse_after_two_healthy_windows(source, "off")
    assert fired[-1]["restore"] and fired[-1]["restored_to"] is None and not adapter.restores
    assert (adapter.predict(_frames(1)[0]) == 0).all()  # still collapsed: monitored, not acted on


def test_a_users_config_still_learns_at_a_constant_rate_on_a_stream(source) -> None:
    from stvm_sdk.config import AdaptConfig

    user = AdaptConfig(method="mean_teacher")  # poly decay to 0 over run.iters (2000), as for adapt
    assert user.optim.poly_power > 0
    adapter = OnlineAdapter(source, "mean_teacher", config=user)
    assert adapter.cfg.method == "mean_teacher" and adapter.cfg.optim.poly_power == 0.0
    assert adapter.method.lr_at(10 * user.run.iters) == user.optim.lr  # past run.iters: still learning
