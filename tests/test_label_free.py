"""Label-free validators, the snapshot choice and the deploy gate: each validator against a direct float64
computation, the gate on forced collapses (every one must be caught) and on healthy models, and the run's
``label_free`` summary, held-out frames, ``--deliver``, ``--eval-every`` and ``--strict`` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support import PALETTE, TinySegNet, make_frames
from torch import Tensor, nn
from typer.testing import CliRunner

from stvm_sdk import AdaptConfig, adapt, load_model
from stvm_sdk.config import VALIDATORS
from stvm_sdk.data import scan_frames
from stvm_sdk.errors import ConfigError
from stvm_sdk.eval.label_free import Outputs, compare, model_outputs, pool_labels, statistics
from stvm_sdk.methods import register_method, unregister_method
from stvm_sdk.methods.base import Method
from stvm_sdk.models import SegModel
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.selection import GATES, Judge, candidate_steps, split_holdout
from stvm_sdk.stream.settings import HealthRule

K = len(PALETTE)


class PaletteNet(nn.Module):
    """Class k where a pixel's colour is nearest PALETTE[k]: right on the test frames, moderately sure.
    ``bias`` forces classes (a collapse), ``noise`` scrambles the logits (a worse model)."""

    def __init__(self, scale: float = 20.0, bias: Tensor | None = None, noise: float = 0.0) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.tensor(PALETTE / 255.0, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(K) if bias is None else bias.float())
        self.scale, self.noise = scale, noise

    def forward(self, x: Tensor) -> Tensor:
        d = ((x[:, None] - self.centres[None, :, :, None, None]) ** 2).sum(2)  # [B,K,H,W]
        logits = -self.scale * d + self.bias[None, :, None, None]
        if self.noise:
            g = torch.Generator().manual_seed(int(x.sum() * 1000) % 2**31)  # a function of the input
            logits = logits + self.noise * torch.randn(logits.shape, generator=g)
        return logits


def palette_model(**kw: object) -> SegModel:
    return SegModel(PaletteNet(**kw), K, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Tensor:
    root, _ = make_frames(tmp_path_factory.mktemp("lf") / "data", n=12, size=(32, 64))
    folder = scan_frames(root)
    return torch.stack([folder.load(f, None)[0] for f in folder.frames])  # type: ignore[index]


def judge_of(images: Tensor, validator: str = "im", gate_validator: str = "") -> Judge:
    judge = Judge(images, validator, HealthRule(), torch.device("cpu"), gate_validator=gate_validator)
    judge.start(palette_model())
    return judge


def outputs(model: SegModel, images: Tensor) -> Outputs:
    def forward(x: Tensor) -> Tensor:
        return forward_logits(model.module, normalize(x, model.mean, model.std))

    return model_outputs(forward, images)


# --- validators against direct computations --------------------------------------------------------


def test_every_validator_equals_its_direct_float64_computation(images: Tensor) -> None:
    model = palette_model(scale=5.0)
    out, src = outputs(model, images), outputs(palette_model(), images)
    with torch.no_grad():
        p = model.module(images).double().softmax(1)  # [N,K,H,W]
    ent = -(p * p.clamp_min(1e-300).log()).sum(1) / math.log(K)
    mean_p = p.mean((0, 2, 3))
    expected = {
        "confidence": float(p.amax(1).mean()),
        "neg_entropy": -float(ent.mean()),
        "im": float(-(mean_p * mean_p.log()).sum() / math.log(K) - ent.mean()),
    }
    for name, value in expected.items():
        assert statistics(name, out, src).score() == pytest.approx(value, abs=1e-5), name
    # source_agreement: mean IoU over the source model's classes between the two argmaxes
    a, b = out.pred.flatten(), src.pred.flatten()
    ious = [((a == c) & (b == c)).sum() / ((a == c) | (b == c)).sum().clamp_min(1) for c in b.unique()]
    assert statistics("source_agreement", out, src).score() == pytest.approx(float(torch.stack(ious).mean()))


def test_consistency_is_one_for_equal_views_and_low_for_a_collapse() -> None:
    pred = torch.arange(4).repeat_interleave(4).view(1, 4, 4)  # classes 0..3, a row each
    grid = torch.full((1, K, 1, 1), 1.0 / K)
    same = Outputs(pred, [pred.clone(), pred.clone()], grid)
    assert statistics("consistency", same, same).score() == pytest.approx(1.0)
    collapsed = Outputs(torch.zeros_like(pred), [torch.zeros_like(pred)] * 2, grid)  # certain, and wrong
    # only class 0 of the source model's 4 survives: a collapse cannot look consistent
    assert statistics("consistency", collapsed, same).score() == pytest.approx(0.25)


def test_a_network_that_takes_one_input_size_keeps_the_views_it_can_take(images: Tensor) -> None:
    net = PaletteNet()
    size = tuple(images.shape[-2:])

    def fixed(x: Tensor) -> Tensor:  # as a network traced at one size
        if tuple(x.shape[-2:]) != size:
            raise RuntimeError("The size of tensor a must match the size of tensor b")
        return net(x)

    out = model_outputs(fixed, images)
    assert len(out.views) == 1 and out.views[0].shape == out.pred.shape  # the flipped copy only
    assert out.pred.dtype == torch.uint8  # labels kept as bytes
    assert 0.0 < statistics("consistency", out, out).score() <= 1.0


def test_ensemble_scores_a_model_equal_to_the_pool_one(images: Tensor) -> None:
    out = outputs(palette_model(), images)
    noisy = outputs(palette_model(noise=30.0), images)
    pool = pool_labels([out])
    assert statistics("ensemble", out, out, pool=pool).score() == pytest.approx(1.0)
    assert statistics("ensemble", noisy, out, pool=pool).score() < 0.6


def test_resampled_statistics_reduce_like_the_score_and_a_model_compared_with_itself_is_zero(
    images: Tensor,
) -> None:
    out, src = outputs(palette_model(scale=5.0), images), outputs(palette_model(), images)
    pool = pool_labels([out, src])
    for name in VALIDATORS:
        stat = statistics(name, out, src, pool=pool)
        ones = torch.ones(1, stat.per_frame.shape[0], dtype=torch.float64)
        assert float(stat.reduce(ones @ stat.per_frame)[0]) == pytest.approx(stat.score()), name
        assert compare(stat, stat) == (0.0, 0.0, 0.0), name


# --- the gate: every forced collapse is caught, a healthy model passes ------------------------------

COLLAPSES = {
    "one class everywhere": dict(bias=torch.tensor([1e3, 0, 0, 0, 0])),
    "two classes left": dict(bias=torch.tensor([1e3, 1e3, 0, 0, 0])),
    "certain everywhere": dict(scale=1e5),
    "non-finite logits": dict(bias=torch.tensor([float("nan"), 0, 0, 0, 0])),
}


@pytest.mark.parametrize("forced", list(COLLAPSES), ids=list(COLLAPSES))
@pytest.mark.parametrize("validator", VALIDATORS)
def test_the_gate_catches_every_forced_collapse(images: Tensor, forced: str, validator: str) -> None:
    judge = judge_of(images, validator)
    judge.observe(0, palette_model())
    judge.observe(10, palette_model(**COLLAPSES[forced]))  # type: ignore[arg-type]
    verdict = judge.gate(10, 0.0)
    assert verdict["gate"] == "collapsed" and verdict["reasons"], verdict


@pytest.mark.parametrize("validator", ["ensemble", "consistency", "source_agreement"])
def test_the_gate_calls_a_scrambled_model_worse_and_passes_the_source_itself(
    images: Tensor, validator: str
) -> None:
    judge = judge_of(images, validator)
    judge.observe(0, palette_model())
    judge.observe(10, palette_model(noise=8.0))  # every class still predicted, no collapse
    worse = judge.gate(10, 0.0)
    assert worse["gate"] == "worse_than_source", worse
    assert worse["interval"][1] < 0 and "source model's" in worse["reasons"][0]
    assert judge.gate(0, 0.0)["gate"] == "pass"  # the source model is not worse than itself


@pytest.mark.parametrize("validator", ["im", "consistency", "ensemble", "source_agreement"])
def test_the_gate_calls_a_model_drifting_to_two_classes_worse_before_it_collapses(
    images: Tensor, validator: str
) -> None:
    judge = judge_of(images, validator)
    judge.observe(0, palette_model())
    judge.observe(10, palette_model(bias=torch.tensor([3.0, 3.0, 0, 0, 0])))  # pixels drift to 0 and 1
    assert not judge.health(judge.outputs[10])["collapse"]  # every class still predicted: not a collapse
    assert judge.gate(10, 0.0)["gate"] == "worse_than_source"


def test_the_choice_ranks_the_healthy_candidate_first_and_last_means_last(images: Tensor) -> None:
    judge = judge_of(images)
    judge.observe(0, palette_model())
    judge.observe(5, palette_model(bias=torch.tensor([3.0, 3.0, 0, 0, 0])))
    judge.observe(10, palette_model(**COLLAPSES["one class everywhere"]))  # type: ignore[arg-type]
    assert judge.choose("best")[0] == 0
    assert judge.choose("last")[0] == 10


def test_the_gate_and_the_choice_may_read_different_validators(images: Tensor) -> None:
    judge = judge_of(images, "consistency", gate_validator="im")
    judge.observe(0, palette_model())
    judge.observe(5, palette_model(noise=8.0))  # IM ranks confident noise up: the gate reads IM
    assert judge.choose("best")[0] == 0  # consistency chooses
    verdict = judge.gate(5, 0.0)
    assert verdict["gate_validator"] == "im" and verdict["gate"] == "pass"
    with pytest.raises(ValueError, match="unknown validator"):
        judge_of(images, "im", gate_validator="mood")


def test_im_is_blind_to_confident_noise_that_consistency_catches(images: Tensor) -> None:
    """The known blind spot of the default validator (docs/method.md, decision 15): logits scrambled
    by large noise are confident and use every class, so IM ranks them up; consistency does not."""
    for validator, noisy_first in (("im", True), ("consistency", False)):
        judge = judge_of(images, validator)
        judge.observe(0, palette_model())
        judge.observe(5, palette_model(noise=8.0))
        assert (judge.choose("best")[0] == 5) is noisy_first, validator


# --- held-out frames and candidates ----------------------------------------------------------------


def test_held_out_frames_are_spread_capped_and_disjoint_from_training(tmp_path: Path) -> None:
    root, _ = make_frames(tmp_path, n=40, size=(32, 32), nested=False)
    frames = scan_frames(root).frames
    train, held = split_holdout(frames, 0.1)
    assert len(held) == 4 and not set(f.image for f in held) & set(f.image for f in train)
    assert len(train) + len(held) == 40
    positions = sorted(frames.index(f) for f in held)
    assert positions[0] < 10 and positions[-1] >= 30  # across the folder, not its first frames
    assert len(split_holdout(frames * 10, 0.5)[1]) == 32  # at most 32
    assert split_holdout(frames[:5], 0.1) == (frames[:5], [])


def test_candidate_steps_are_the_start_even_steps_snapshots_and_the_end() -> None:
    assert candidate_steps(100, 4, ()) == [0, 25, 50, 75, 100]
    assert candidate_steps(100, 1, (10, 200)) == [0, 10, 100]
    assert candidate_steps(0, 4, ()) == [0]


def test_config_refuses_unknown_validators_and_bad_label_free_values() -> None:
    for key, value in (("run.validator", "mood"), ("run.gate_validator", "x"), ("run.deliver", "first"),
                       ("run.holdout", 0.9), ("run.candidates", 0), ("run.eval_every", -1)):  # fmt: skip
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            AdaptConfig().with_overrides({key: value})


# --- a run end to end ------------------------------------------------------------------------------

TINY = {"run.iters": 4, "data.batch_size": 2, "data.crop": [32, 64], "run.log_every": 2,
        "run.checkpoint_every": 2, "run.device": "cpu"}  # fmt: skip


class Collapse(Method):
    """A method made to collapse: cross-entropy of every pixel against class 0 at a large rate."""

    name = "collapse_test"
    summary = "drives every pixel to class 0 (tests only)"
    order = 999

    def loss(self, images: Tensor, step: int, g: torch.Generator, g_batch: torch.Generator):  # type: ignore[no-untyped-def]
        logits = forward_logits(self.student, normalize(images, self.mean, self.std)).float()
        target = torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long)
        loss = nn.functional.cross_entropy(logits, target)
        return loss, {"loss": loss.detach()}


@pytest.fixture
def collapse_method() -> object:
    register_method(Collapse)
    yield Collapse
    unregister_method(Collapse.name)


@pytest.fixture
def many_frames(tmp_path: Path) -> tuple[Path, Path]:
    return make_frames(tmp_path / "data", n=20, size=(32, 64))


def test_a_run_without_labels_summarises_its_candidates_choice_and_gate(
    many_frames: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = AdaptConfig(method="mean_teacher").with_overrides(TINY)
    result = adapt(TinySegNet(), many_frames[0], config=cfg, out_dir=tmp_path / "run", progress=False)
    lf = result.metrics["label_free"]
    assert lf["validator"] == "consistency" and lf["gate_validator"] == "im" and lf["frames"] == 2
    assert lf["frames_held_out"]
    assert [s["step"] for s in lf["snapshots"]] == [0, 1, 2, 3, 4]
    assert all(isinstance(s["score"], float) for s in lf["snapshots"])
    best = max(lf["snapshots"], key=lambda s: (s["score"], s["step"]))
    assert lf["delivered_step"] == best["step"] and lf["gate"] in GATES
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["label_free"] == json.loads(json.dumps(lf))
    # the delivered file holds the chosen candidate's weights
    delivered = load_model(result.metrics["model_path"], trust_pickle=True).module.state_dict()  # a pickle
    if best["step"] != 4:
        chosen = load_model(
            tmp_path / "run" / "candidates" / f"step_{best['step']:06d}.pt", trust_pickle=True
        ).module.state_dict()
        assert all(torch.equal(delivered[k], chosen[k]) for k in chosen)


def test_held_out_frames_never_reach_a_training_batch(many_frames: tuple[Path, Path], tmp_path: Path) -> None:
    from stvm_sdk.data import batches

    seen: list[str] = []
    original = batches.BatchLoader.__init__

    def spy(self: object, frames: list, *args: object, **kwargs: object) -> None:  # type: ignore[type-arg]
        seen.extend(str(f.image) for f in frames)
        original(self, frames, *args, **kwargs)  # type: ignore[arg-type]

    batches.BatchLoader.__init__ = spy  # type: ignore[method-assign]
    try:
        cfg = AdaptConfig(method="tent").with_overrides(TINY)
        adapt(TinySegNet(), many_frames[0], config=cfg, out_dir=tmp_path / "run", progress=False)
    finally:
        batches.BatchLoader.__init__ = original  # type: ignore[method-assign]
    held = split_holdout(scan_frames(many_frames[0]).frames, 0.1)[1]
    assert len(held) == 2 and seen and not {str(f.image) for f in held} & set(seen)


def test_a_forced_collapse_is_delivered_only_when_asked_and_then_the_gate_says_so(
    many_frames: tuple[Path, Path], tmp_path: Path, collapse_method: object
) -> None:
    over = {**TINY, "optim.lr": 5.0, "optim.head_lr_mult": 1.0}
    last = adapt(TinySegNet(), many_frames[0], config=AdaptConfig(method="collapse_test").with_overrides(
        {**over, "run.deliver": "last"}), out_dir=tmp_path / "last", progress=False)  # fmt: skip
    lf = last.metrics["label_free"]
    assert lf["delivered_step"] == 4 and lf["gate"] == last.gate == "collapsed", lf
    assert any("classes" in r or "certain" in r or "diverged" in r for r in lf["reasons"])
    best = adapt(TinySegNet(), many_frames[0], config=AdaptConfig(method="collapse_test").with_overrides(
        over), out_dir=tmp_path / "best", progress=False)  # fmt: skip
    assert best.metrics["label_free"]["delivered_step"] < 4  # a candidate from before the collapse


def test_strict_exits_non_zero_with_one_line_when_the_gate_fails(
    many_frames: tuple[Path, Path], tmp_path: Path, collapse_method: object
) -> None:
    from stvm_sdk.cli.app import app

    from stvm_sdk.models.io import save_model

    source = tmp_path / "source.pt"
    save_model(SegModel(TinySegNet(), 5), source)
    args = ["adapt", "--source", str(source), "--target", str(many_frames[0]), "--method", "collapse_test",
            "--iters", "4", "--batch-size", "2", "--crop", "32x64", "--deliver", "last", "--trust-pickle",
            "optim.lr=5.0", "optim.head_lr_mult=1.0", "run.device=cpu"]  # fmt: skip
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "strict"), "--strict"])
    assert res.exit_code == 3, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "gate collapsed" in line[0] and "Traceback" not in res.output
    assert (tmp_path / "strict" / "summary.json").is_file()  # the run is kept, and says why
    lenient = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "lenient")])
    assert lenient.exit_code == 0 and "collapsed" in lenient.output


def test_eval_every_scores_the_deliverable_into_metrics_and_the_curve(
    many_frames: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = AdaptConfig(method="mean_teacher").with_overrides({**TINY, "run.eval_every": 2})
    adapt(TinySegNet(), many_frames[0], labels_dir=many_frames[1], config=cfg, out_dir=tmp_path / "run",
          progress=False)  # fmt: skip
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [(r["step"], r["miou"]) for r in records if "miou" in r]
    assert [s for s, _ in scored] == [2, 4] and all(0 <= m <= 100 for _, m in scored)
    assert all("loss" in r for r in records if "miou" in r)  # one record per step, not two
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    curve = Path(summary["figures_dir"]) / "curves.png"
    assert curve.is_file() and np.asarray(__import__("PIL.Image").Image.open(curve)).shape[1] > 1200


def test_eval_every_without_labels_says_it_scores_nothing(
    many_frames: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = AdaptConfig(method="tent").with_overrides({**TINY, "run.eval_every": 2})
    with caplog.at_level("WARNING", logger="stvm_sdk"):
        adapt(TinySegNet(), many_frames[0], config=cfg, out_dir=tmp_path / "run", progress=False)
    assert any("needs labels" in r.message for r in caplog.records)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not any("miou" in r for r in records)


def test_label_free_off_holds_nothing_out_scores_nothing_and_delivers_the_last(
    many_frames: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = AdaptConfig(method="mean_teacher").with_overrides({**TINY, "run.label_free": False})
    result = adapt(TinySegNet(), many_frames[0], config=cfg, out_dir=tmp_path / "run", progress=False)
    assert "label_free" not in result.metrics and result.gate is None
    assert not (tmp_path / "run" / "candidates").exists()
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records and not any("label_free" in r for r in records)
