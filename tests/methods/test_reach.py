"""What a method can do on a given model, said before it runs; and the methods that would silently do
nothing (adabn on a traced model, tent without BatchNorm) refuse with one line instead."""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
from stvm_sdk.cli.app import app
from support import HeadProbeNet, TinySegNet, WeakHeadNet
from torch import nn
from typer.testing import CliRunner

from stvm_sdk import AdaptConfig, adapt
from stvm_sdk.errors import ConfigError
from stvm_sdk.inputs import check_method_fits
from stvm_sdk.methods import get_method, reach
from stvm_sdk.methods.parts.norm import reestimate_bn
from stvm_sdk.models import from_module, load_model

RUNNER = CliRunner()
FAST = {"run.iters": 1, "data.batch_size": 2, "data.crop": [32, 64]}


def _ts(module: nn.Module, path: Path, *, trace: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = module.eval()
        m = torch.jit.trace(net, torch.zeros(1, 3, 32, 64), strict=False) if trace else torch.jit.script(net)
        torch.jit.save(m, str(path))
    return path


def _stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k}


def test_scripted_batchnorm_is_reestimated_like_the_eager_one(tmp_path: Path) -> None:
    net = TinySegNet()
    scripted = load_model(_ts(copy.deepcopy(net), tmp_path / "net.ts", trace=False)).module
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 32, 64, generator=g) for _ in range(3)]
    assert reestimate_bn(net, batches) == 6
    assert reestimate_bn(scripted, batches) == 6  # was 0: the scripted layers were not recognised
    eager, script = _stats(net), _stats(scripted)
    assert eager.keys() == script.keys() and len(eager) == 6
    for k, v in eager.items():
        torch.testing.assert_close(script[k], v, rtol=1e-5, atol=1e-6)


def test_adabn_on_a_scripted_model_changes_its_statistics(frames: tuple[Path, Path], tmp_path: Path) -> None:
    path = _ts(TinySegNet(), tmp_path / "net.ts", trace=False)
    before = _stats(load_model(path).module)
    cfg = AdaptConfig().with_overrides({**FAST, "method": "adabn"})
    result = adapt(path, frames[0], config=cfg, out_dir=tmp_path / "run", progress=False)
    after = _stats(result.model.module)
    assert [k for k in before if torch.equal(before[k], after[k])] == []


def test_adabn_on_a_traced_model_refuses_with_one_line(frames: tuple[Path, Path], tmp_path: Path) -> None:
    path = _ts(TinySegNet(), tmp_path / "traced.ts", trace=True)
    res = RUNNER.invoke(
        app,
        ["adapt", "--source", str(path), "--target", str(frames[0]), "--method", "adabn",
         "--out", str(tmp_path / "run"), "--iters", "1", "--json"],
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: --method adabn cannot adapt this model")
    assert "3 traced BatchNorm layers keep fixed statistics" in lines[0]
    assert not (tmp_path / "run").exists()


class GroupNormNet(nn.Module):
    """A 5-class net normalised by GroupNorm only: nothing for tent to tune, nothing for adabn."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.classifier = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


@pytest.mark.parametrize("method", ["tent", "adabn"])
def test_a_method_with_nothing_to_update_refuses(
    frames: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    cfg = AdaptConfig().with_overrides({**FAST, "method": method})
    with pytest.raises(ConfigError, match=f"--method {method} cannot adapt this model: .*1 GroupNorm layer"):
        adapt(GroupNormNet(), frames[0], config=cfg, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_tent_trains_only_batchnorm_dropout_stays_in_eval() -> None:
    seg = from_module(HeadProbeNet())
    cfg = AdaptConfig().with_overrides({**FAST, "method": "tent"})
    tent = get_method("tent").build(seg, cfg, torch.Generator().manual_seed(0))
    seen: list[bool] = []
    tent.student.dropout.register_forward_hook(lambda m, i, o: seen.append(m.training))
    g = torch.Generator().manual_seed(0)
    tent.step(torch.rand(2, 3, 32, 64, generator=g), 0, g)
    assert seen == [False]  # dropout ran in eval mode during the step
    assert all(m.training for m in tent.student.modules() if isinstance(m, nn.BatchNorm2d))
    trained = [n for n, p in tent.student.named_parameters() if p.requires_grad]
    assert trained == ["encoder.1.weight", "encoder.1.bias", "encoder.4.weight", "encoder.4.bias"]


def test_reach_says_what_each_method_updates() -> None:
    seg = from_module(TinySegNet())
    r = reach(seg)
    assert list(r) == [c for c in r]  # table order, every method
    assert r["adabn"].counts["batchnorm_layers"] == 3 and r["adabn"].fits and not r["adabn"].weak
    assert r["tent"].counts["parameters"] == 2 * (8 + 16 + 16)
    assert r["tent"].counts["parameters_total"] == sum(p.numel() for p in seg.module.parameters())
    assert r["stvm"].counts["metric_copies"] == "classifier"
    assert not r["source_only"].counts
    weak = reach(from_module(WeakHeadNet()))
    assert not weak["stvm"].fits and "no conv with 5 outputs" in weak["stvm"].updates


def test_adapt_warns_when_adabn_and_tent_touch_little_of_a_segformer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        num_attention_heads=[1, 2], decoder_hidden_size=16, num_labels=5, hidden_dropout_prob=0.1,
        drop_path_rate=0.1,
    )  # fmt: skip
    net = transformers.SegformerForSemanticSegmentation(config)
    seg = from_module(net)  # its output is a ModelOutput with .logits at 1/4 resolution
    layernorms = sum(1 for m in net.modules() if isinstance(m, nn.LayerNorm))
    bns = sum(1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert bns == 1 and layernorms > 1
    r = reach(seg)
    assert r["adabn"].counts["other_norm_layers"] == {"LayerNorm": layernorms} and r["adabn"].weak
    assert r["tent"].weak and r["tent"].counts["parameters"] == 2 * 16
    with caplog.at_level(logging.WARNING, logger="stvm_sdk"):
        check_method_fits(seg, get_method("adabn"))
        check_method_fits(seg, get_method("tent"))
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 2 and all(f"{layernorms} LayerNorm layers" in line for line in lines)


def test_info_shows_what_each_method_updates_and_a_weak_head(tmp_path: Path) -> None:
    path = tmp_path / "weak.pt"
    torch.save(WeakHeadNet(), path)
    res = RUNNER.invoke(app, ["info", str(path), "--trust-pickle", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert "no conv with 5 outputs" in info["classifier_warning"]
    assert info["methods"]["adabn"]["batchnorm_layers"] == 1
    assert info["methods"]["stvm"]["fits"] is False
    text = RUNNER.invoke(app, ["info", str(path), "--trust-pickle"]).stdout
    assert "warning: the classifier 'out' holds no conv with 5 outputs" in text
    assert "adabn: re-estimates the statistics of 1 BatchNorm layer" in text


def test_stvm_with_a_classifier_it_cannot_copy_is_one_line(frames: tuple[Path, Path], tmp_path: Path) -> None:
    # The smp case: the head named as its parameter-free activation (what the old probe chose).
    path = tmp_path / "net.pt"
    torch.save(HeadProbeNet(), path)
    res = RUNNER.invoke(
        app,
        ["adapt", "--source", str(path), "--target", str(frames[0]), "--trust-pickle",
         "--classifier", "segmentation_head.2", "--out", str(tmp_path / "run"), "--iters", "1", "--json"],
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: --method stvm cannot adapt this model"), lines
    assert "'segmentation_head.2' holds no conv with 5 outputs" in lines[0]
