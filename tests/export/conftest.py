"""Fixtures for the export tests: a tiny-resolution lraspp (19 classes) whose predictions vary over
the image, synthetic labelled target frames, and one full export (fp32 + fp16 + INT8) shared by the
tests that only inspect its outputs (exports are the slow part, so they are made once per session).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HW = (64, 128)


def spread_lraspp(seed: int = 0):  # -> SegModel
    """lraspp_mobilenet_v3_large, random weights, rescaled so its argmax varies across pixels.

    Plain random init predicts one class everywhere, which would make "argmax agreement" trivially
    100 %; larger head weights and BN variances < 1 give ~14 classes on a 64x128 frame.
    """
    from stvm_sdk.models import build_torchvision, from_module

    torch.manual_seed(seed)
    net = build_torchvision("lraspp_mobilenet_v3_large", 19).eval()
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(0.5)
            if isinstance(m, torch.nn.Conv2d) and name.startswith("classifier"):
                m.weight.mul_(20)
    return from_module(net, arch="lraspp_mobilenet_v3_large")


@pytest.fixture(scope="session")
def make_seg_model():
    return spread_lraspp


@pytest.fixture(scope="session")
def seg_model():
    return spread_lraspp()


class TinyNet(torch.nn.Module):
    """19-class conv net with a `classifier` head: exports and runs in milliseconds (CLI tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.Hardswish(),
        )  # fmt: skip
        self.classifier = torch.nn.Conv2d(16, 19, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.classifier(self.backbone(x))
        return {
            "out": torch.nn.functional.interpolate(
                out, size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        }


@pytest.fixture(scope="session")
def tiny_model():
    from stvm_sdk.models import from_module

    torch.manual_seed(0)
    return from_module(TinyNet().eval(), classifier="classifier")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stvm_sdk.export.onnx import export_onnx

    return export_onnx(tiny_model, tmp_path_factory.mktemp("tiny_onnx") / "tiny.onnx").path


@pytest.fixture(scope="session")
def checkpoint(seg_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stvm_sdk.models import save_model

    return save_model(seg_model, tmp_path_factory.mktemp("ckpt") / "demo.pt")


@pytest.fixture(scope="session")
def target_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 labelled synthetic target frames at 64x128, Cityscapes layout."""
    from stvm_sdk.synthetic.dataset import generate

    return generate(tmp_path_factory.mktemp("target"), "target", 6, seed=1, size=HW, split="val", workers=1)


@pytest.fixture(scope="session")
def full_export(seg_model, checkpoint: Path, target_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One `export_model` run with fp16 and INT8 (min-max calibration only, to keep it quick: the
    choice between methods is tested on a tiny graph)."""
    from stvm_sdk.export.pipeline import ExportOptions, export_model

    out = tmp_path_factory.mktemp("export")
    opts = ExportOptions(
        out_dir=out,
        precisions=("fp16", "int8"),
        calib=target_root,
        shape="64x128",
        verify_frames=3,
        calib_frames=3,
        calib_methods=("minmax",),
    )
    return export_model(seg_model, opts, source=checkpoint)


@pytest.fixture
def frames_dir(tmp_path: Path) -> Path:
    """A plain folder of 3 small RGB frames (no labels)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    d = tmp_path / "frames" / "seq"
    d.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (*HW, 3), dtype=np.uint8)).save(d / f"f{i}.png")
    return tmp_path / "frames"
