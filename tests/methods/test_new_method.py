"""A new method is one file: registered here, it runs offline (``adapt``) and on a stream
(``OnlineAdapter``, ``adapt_stream``) through the Method contract alone, with its own config section
and its own stream behaviour; nothing outside this file names it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as nnf
from PIL import Image
from support import TinySegNet
from torch import Tensor

from stvm_sdk import AdaptConfig, adapt
from stvm_sdk.errors import ConfigError
from stvm_sdk.inputs import as_segmodel
from stvm_sdk.methods import register_method, unregister_method
from stvm_sdk.methods.base import Logs, Method, Online
from stvm_sdk.methods.parts.norm import configure_tent
from stvm_sdk.models.contract import forward_logits, normalize
from stvm_sdk.stream import OnlineAdapter, StreamConfig
from stvm_sdk.stream.run import adapt_stream


@dataclass(frozen=True)
class SharpenOptions:
    lr: float = 1e-2  # Adam's learning rate on the BatchNorm affine parameters
    temperature: float = 0.5  # targets are the prediction sharpened by this temperature


class Sharpen(Method):
    """Soft self-training on BatchNorm affine parameters: targets are the sharpened prediction."""

    name = "sharpen_bn"
    summary = "sharpened soft targets on BatchNorm affine parameters"
    updates = "BatchNorm affine parameters"
    Options = SharpenOptions
    # Its own stream behaviour: always the frame's statistics, running ones never used, two frames a step.
    online = Online(bn_predict="frame", follow_bn=False, min_batch=2, min_batch_why="needs batch statistics")

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(configure_tent(self.student), lr=self.options.lr)

    def lr_at(self, step: int) -> float:
        return float(self.options.lr)

    def loss(
        self, images: Tensor, step: int, g: torch.Generator, g_batch: torch.Generator
    ) -> tuple[Tensor, Logs]:
        logits = forward_logits(self.net("student"), normalize(images, self.mean, self.std)).float()
        target = (logits.detach() / self.options.temperature).softmax(1)
        loss = -(target * nnf.log_softmax(logits, 1)).sum(1).mean()
        return loss, {"loss_sharpen": loss.detach()}


@pytest.fixture
def sharpen() -> Iterator[type[Method]]:
    cls = register_method(Sharpen)
    yield cls
    unregister_method(cls.name)


def _frames(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(32, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"f{i:02d}.png")
    return folder


def _bn_affine(net: torch.nn.Module) -> list[Tensor]:
    return [p.detach().clone() for n, p in net.named_parameters() if "backbone.1" in n]


def test_a_method_registered_in_one_file_runs_offline_with_its_own_section(
    sharpen: type[Method], tmp_path: Path
) -> None:
    frames = _frames(tmp_path / "frames")
    cfg = AdaptConfig(method="sharpen_bn").with_overrides(
        {"methods.sharpen_bn.temperature": 0.25, "run.iters": 3, "data.batch_size": 2, "data.crop": (32, 48)}
    )
    net = TinySegNet()
    before = _bn_affine(net)
    result = adapt(net, frames, config=cfg, out_dir=tmp_path / "run", progress=False)
    assert result.metrics["method"] == "sharpen_bn" and result.metrics["steps"] == 3
    assert result.config.methods["sharpen_bn"] == {"lr": 1e-2, "temperature": 0.25}
    after = _bn_affine(result.model.module)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with pytest.raises(ConfigError, match=r"methods\.sharpen_bn\.temprature"):
        adapt(net, frames, config=AdaptConfig(method="sharpen_bn").with_overrides(
            {"methods.sharpen_bn.temprature": 1.0}), out_dir=tmp_path / "bad", progress=False)  # fmt: skip


def test_the_same_method_runs_on_a_stream_as_its_online_contract_says(
    sharpen: type[Method], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = as_segmodel(TinySegNet(), classifier="classifier")
    with pytest.raises(ConfigError, match=r"sharpen_bn needs batch statistics when it trains: .* >= 2"):
        OnlineAdapter(source, "sharpen_bn", stream=StreamConfig(batch_size=1, buffer=4))
    adapter = OnlineAdapter(source, "sharpen_bn", stream=StreamConfig(batch_size=2, window=3))
    assert adapter.batch_stats and not adapter.follow_bn and adapter.adapts
    frames = _frames(tmp_path / "stream", n=6)

    def follow(*_: object) -> None:
        raise AssertionError("the stream moved BatchNorm statistics of a method whose follow_bn is False")

    monkeypatch.setattr(OnlineAdapter, "_follow_bn", follow)
    scfg = StreamConfig(batch_size=2, window=3)
    result = adapt_stream(source, frames, method="sharpen_bn", stream_config=scfg, out_dir=tmp_path / "out")
    assert result.summary["method"] == "sharpen_bn" and result.summary["kind"] == "stream"
    assert result.summary["frames"] == 6 and result.summary["adapted_frames"] == 6
    trained = result.adapter.method.student
    assert any(
        not torch.equal(a, b) for a, b in zip(_bn_affine(source.module), _bn_affine(trained), strict=True)
    )
