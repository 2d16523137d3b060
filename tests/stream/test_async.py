"""Asynchronous adaptation, replay at a frame rate, and the cheap stream baselines.

Named invariants: a prediction runs on one published version of the weights and never on weights the
worker is changing; every frame predicted reaches the health rule in order; the published weights are
the worker's deliverable after each change; a worker's error reaches the caller; a paced stream drops
exactly the frames that arrive while the predictor is busy; BatchNorm mixing is the stated weighted sum
of statistics; a periodic reset puts the source weights back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from stvm_sdk.cli.app import app
from support import TinySegNet, make_frames
from test_online import _frames, _quick_cfg

from stvm_sdk.config import AdaptConfig
from stvm_sdk.errors import DivergedError
from stvm_sdk.inputs import as_segmodel
from stvm_sdk.methods import get_method, resolve
from stvm_sdk.methods.parts.norm import batchnorms, mix_statistics, mixed_statistics_hooks
from stvm_sdk.stream import OnlineAdapter, StreamConfig, online_config
from stvm_sdk.stream.asynchronous import AsyncAdapter
from stvm_sdk.stream.pace import Pacer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from matrix import RUNNER  # noqa: E402


@pytest.fixture
def source() -> object:
    torch.manual_seed(0)
    return as_segmodel(TinySegNet(), classifier="classifier")


def _async(source: object, method: str = "mean_teacher", **stream: object) -> AsyncAdapter:
    scfg = StreamConfig(**{"window": 4, "batch_size": 2, **stream})  # type: ignore[arg-type]
    return AsyncAdapter(OnlineAdapter(source, method, config=_quick_cfg(method), stream=scfg))


# --- asynchronous adaptation --------------------------------------------------------------------------


def test_async_predicts_with_the_published_weights_and_publishes_each_change(source) -> None:
    a = _async(source)
    frames = _frames(12)
    versions = []
    try:
        for f in frames:
            net = a.network
            expected, _ = a.adapter.predict_with_confidence(f, net)
            res = a.step(f)
            versions.append(res.version)
            # the weights that predicted: the published copy at that time (the worker never trains it)
            assert torch.equal(res.labels, expected) or res.version != a.version
            assert all(not p.requires_grad for p in net.parameters())
        windows = a.drain()
        with a.paused() as adapter:
            assert adapter.frames == 12  # every frame predicted was taken in
            assert adapter.steps_run >= 1
            published = a.network.state_dict()
            for k, v in adapter.network.state_dict().items():  # the last publication is the deliverable
                assert torch.equal(published[k], v), k
    finally:
        windows = windows + a.close()
    assert versions == sorted(versions) and versions[0] == 0 and a.version >= 1
    assert len([w for w in windows if w]) <= 3


def test_async_every_frame_reaches_the_health_rule_in_order(source) -> None:
    a = _async(source, window=3)
    got = []
    for f in _frames(15):
        res = a.step(f)
        if res.window is not None:
            got.append(res.window)
    got += a.close()
    assert [w["frame"] for w in got] == [3, 6, 9, 12, 15]
    assert all(w["frames"] == 3 for w in got)
    assert all(w["versions"][0] <= w["versions"][1] for w in got)


def test_async_state_resumes_and_the_source_model_is_untouched(source) -> None:
    before = {k: v.clone() for k, v in source.module.state_dict().items()}
    a = _async(source, "stvm")
    for f in _frames(8):
        a.step(f)
    state = a.state_dict()  # consistent: every frame predicted taken in
    assert state["frames"] == 8 and state["version"] == a.version
    a.close()
    b = _async(source, "stvm")
    b.load_state_dict(state)
    assert b.version == state["version"] and b.predicted == 8
    for k, v in a.network.state_dict().items():
        assert torch.equal(b.network.state_dict()[k], v), k
    b.step(_frames(1, seed=3)[0])
    b.close()
    for k, v in source.module.state_dict().items():
        assert torch.equal(before[k], v), f"the source model changed: {k}"


def test_a_worker_error_reaches_the_caller(source) -> None:
    cfg = online_config("mean_teacher").with_overrides(
        {"optim.lr": 1e300, "methods.mean_teacher.ema_max": 0.0}
    )
    a = AsyncAdapter(OnlineAdapter(source, "mean_teacher", config=cfg, stream=StreamConfig(batch_size=2)))
    with pytest.raises(DivergedError):
        for f in _frames(40):
            a.step(f)
        a.close()
    with pytest.raises(DivergedError):  # and again: the worker stopped, nothing hangs
        a.close()


def test_async_images_waiting_for_the_worker_are_bounded(source) -> None:
    a = _async(source, "stvm", buffer=4, batch_size=2)
    for f in _frames(30):
        a.step(f)
        assert sum(it.image is not None for it in list(a._inbox)) <= 4
    a.close()
    assert a.adapter.frames == 30  # images let go, predictions still observed


def test_async_splits_cpu_threads_and_gives_them_back(source) -> None:
    threads = torch.get_num_threads()
    a = _async(source, "source_only")
    if threads > 1:
        assert torch.get_num_threads() == threads - a._worker_threads
    a.close()
    assert torch.get_num_threads() == threads


# --- replay at a frame rate ---------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_a_paced_stream_drops_exactly_the_frames_that_arrive_while_busy() -> None:
    clock = _Clock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)  # a frame every 100 ms
    served = []
    busy_after = {0: 0.05, 1: 0.25, 4: 0.05}  # seconds the predictor is busy after serving frame i
    for i in range(8):
        if pacer.admit(i):
            served.append(i)
            clock.t += busy_after.get(i, 0.05)
    # frame 1 served at 0.1, busy until 0.35: frame 2 (0.2) is dropped (frame 3 arrived at 0.3),
    # frame 3 is served late at 0.35
    assert served == [0, 1, 3, 4, 5, 6, 7]
    assert pacer.dropped == 1 and pacer.served == 7
    assert pytest.approx(clock.t, abs=1e-9) == 100.75


def test_a_pacer_never_serves_a_frame_before_it_arrives() -> None:
    clock = _Clock()
    pacer = Pacer(4.0, clock=clock, sleep=clock.sleep)
    for i in range(5):
        assert pacer.admit(i)
        assert clock.t >= pacer.arrival(i)
    with pytest.raises(ValueError):
        Pacer(0)


# --- the cheap baselines ------------------------------------------------------------------------------


def test_mixed_statistics_are_the_weighted_sum_of_source_and_frame(source) -> None:
    net = source.module.eval()
    x = torch.randn(1, 3, 16, 24, dtype=torch.float64)
    net = net.double()
    bn = batchnorms(net)[0]
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    seen = {}

    def grab(m, inputs):  # after our hook: the statistics the layer normalises with
        seen["mean"], seen["var"], seen["x"] = m.running_mean.clone(), m.running_var.clone(), inputs[0]

    handles = mixed_statistics_hooks(net, 0.8)
    h2 = bn.register_forward_pre_hook(grab)
    with torch.no_grad():
        net(x)
    for h in [*handles, h2]:
        h.remove()
    xi = seen["x"]
    dims = [0, 2, 3]
    torch.testing.assert_close(seen["mean"], 0.8 * rm + 0.2 * xi.mean(dims))
    torch.testing.assert_close(seen["var"], 0.8 * rv + 0.2 * xi.var(dims, unbiased=False))
    assert torch.equal(bn.running_mean, rm) and torch.equal(bn.running_var, rv)  # put back


def test_mixing_at_share_one_is_the_source_and_offline_mixing_is_the_weighted_sum(source) -> None:
    a = OnlineAdapter(
        source, "bn_mix", config=online_config("bn_mix").with_overrides({"methods.bn_mix.source_share": 1.0})
    )
    plain = OnlineAdapter(source, "source_only")
    f = _frames(1)[0]
    assert torch.equal(a.predict(f), plain.predict(f))
    target = TinySegNet()
    torch.manual_seed(1)
    for b in batchnorms(target):
        b.running_mean.uniform_(-1, 1)
        b.running_var.uniform_(0.5, 2)
    t0 = [(b.running_mean.clone(), b.running_var.clone()) for b in batchnorms(target)]
    mix_statistics(target, source.module, 0.5)
    for (m, v), b, s in zip(t0, batchnorms(target), batchnorms(source.module), strict=True):
        torch.testing.assert_close(b.running_mean, 0.5 * m + 0.5 * s.running_mean)
        torch.testing.assert_close(b.running_var, 0.5 * v + 0.5 * s.running_var)
    assert get_method("bn_mix").source_share(resolve(AdaptConfig(method="bn_mix"))[0]) == 0.8


def test_soft_teacher_learns_the_teachers_softmax(source) -> None:
    from stvm_sdk.models.contract import forward_logits, normalize

    x = _frames(2)[0][None].repeat(2, 1, 1, 1)
    grads = {}
    for augment in (False, True):
        cfg = resolve(
            AdaptConfig(method="soft_teacher").with_overrides({"methods.soft_teacher.augment": augment})
        )[0]
        m = get_method("soft_teacher").build(source, cfg, torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        loss, logs = m.loss(x, 0, g, g)
        if not augment:  # the soft cross-entropy of the student against the teacher's softmax
            xn = normalize(x, m.mean, m.std)
            with torch.no_grad():
                p = forward_logits(m.teacher, xn).float().softmax(1)
            expected = -(p * forward_logits(m.student, xn).float().log_softmax(1)).sum(1).mean()
            torch.testing.assert_close(loss, expected)
        loss.backward()
        grads[augment] = sum(float(q.grad.abs().sum()) for q in m.student.parameters() if q.grad is not None)
        assert m.deliverable_role == "teacher"
    # A student equal to its teacher on the same input has no gradient: the default jitters its input.
    assert grads[False] < 1e-6 < grads[True]
    assert resolve(AdaptConfig(method="soft_teacher"))[0].methods["soft_teacher"]["augment"] is True


def test_a_periodic_reset_puts_the_source_weights_back(source) -> None:
    a = OnlineAdapter(
        source,
        "mean_teacher",
        config=_quick_cfg("mean_teacher"),
        stream=StreamConfig(window=100, batch_size=2, reset_every=6),
    )
    start = {k: v.clone() for k, v in a.method.state_dict().items()}
    for f in _frames(6):
        a.step(f)
    assert a.restores and a.restores[-1] == {
        "frame": 6,
        "to": "source",
        "reasons": ["periodic reset every 6 frames"],
        "periodic": True,
    }
    for k, v in a.method.state_dict().items():
        assert torch.equal(start[k], v), k
    assert a.steps == 0


def _tiny_model(tmp_path: Path) -> Path:
    """The tests' tiny net, pickled (the commands read it with --trust-pickle)."""
    torch.manual_seed(0)
    model = tmp_path / "tiny.pt"
    torch.save(TinySegNet().eval(), model)
    return model


# --- the command ----------------------------------------------------------------------------------------


def test_stream_async_at_a_frame_rate_from_the_command_line(tmp_path: Path) -> None:
    model, (images, labels) = _tiny_model(tmp_path), make_frames(tmp_path / "d", n=12, nested=False)
    out = tmp_path / "run"
    args = ["stream", "-s", str(model), "-i", str(images), "--labels", str(labels), "--out", str(out),
            "--method", "mean_teacher", "--batch-size", "2", "--window", "4", "--async", "--fps", "50",
            "--trust-pickle", "--json"]  # fmt: skip
    res = RUNNER.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "async" and summary["fps_target"] == 50
    assert summary["frames"] + summary["frames_dropped"] == 12
    assert "predict_ms_p99_adapting" in summary and "latency_ms_p99" in summary
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines and all("versions" in x and "frames_dropped" in x for x in lines)
    assert "miou_online" in summary
    res = RUNNER.invoke(app, [*args[:-1], "--resume", "--json"])  # the mode is kept on resume
    assert res.exit_code == 0, res.output
    sync = [a for a in args if a != "--async"] + ["--resume"]
    res = RUNNER.invoke(app, sync)
    assert res.exit_code != 0 and "settings differ" in res.output


@pytest.mark.parametrize("fps", ["0", "-3", "nan", "inf", "5000"])
def test_a_frame_rate_out_of_range_is_one_line(tmp_path: Path, fps: str) -> None:
    model, (images, _) = _tiny_model(tmp_path), make_frames(tmp_path / "d", n=2, nested=False)
    res = RUNNER.invoke(app, ["stream", "-s", str(model), "-i", str(images), "--out", str(tmp_path / "o"),
                              "--fps", fps, "--trust-pickle"])  # fmt: skip
    assert res.exit_code != 0
    assert "--fps must be a frame rate in (0, 1000]" in res.output
    assert not (tmp_path / "o").exists()


def test_reset_every_is_refused_for_a_method_that_changes_nothing_on_a_stream(tmp_path: Path) -> None:
    from stvm_sdk.stream.online import unread_settings

    assert "reset_every" in unread_settings("source_only") and "reset_every" in unread_settings("bn_mix")
    assert "reset_every" not in unread_settings("adabn") and "reset_every" not in unread_settings("stvm")


def test_a_synchronous_paced_stream_reports_drops_but_no_worker_figures(tmp_path: Path) -> None:
    model, (images, labels) = _tiny_model(tmp_path), make_frames(tmp_path / "d", n=6, nested=False)
    out = tmp_path / "run"
    res = RUNNER.invoke(app, ["stream", "-s", str(model), "-i", str(images), "--labels", str(labels),
                              "--out", str(out), "--method", "adabn", "--window", "3", "--fps", "1000",
                              "--trust-pickle", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "sync" and summary["frames"] + summary["frames_dropped"] == 6
    assert "predict_ms_p99_adapting" not in summary and "version" not in summary
    assert "latency_ms_p99" in summary
