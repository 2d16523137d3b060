"""Shared fixtures: seeded torch, a tiny segmentation net, generated labelled frames, a checkpoint.

Everything here runs on CPU in milliseconds; `--runslow` enables tests marked `slow`.
"""

from __future__ import annotations

import os

if not __import__("torch").cuda.is_available():
    # Read when @triton.jit decorates: must be set before any kernel module is imported (env.md).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(2)

# Class k is drawn with colour PALETTE[k] (+ noise): a model can learn it, and labels are exact.
PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35], [70, 130, 180]], dtype=np.uint8
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class TinySegNet(nn.Module):
    """A 5-class segmentation net with BatchNorm and a `classifier` head (conv-bn-relu-conv)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.classifier(self.backbone(x))
        return {
            "out": nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        }


@pytest.fixture
def tiny_net() -> TinySegNet:
    return TinySegNet()


def make_frames(
    root: Path, n: int = 6, size: tuple[int, int] = (32, 64), seed: int = 0, nested: bool = True
) -> tuple[Path, Path]:
    """Write ``n`` frames of coloured blocks to ``root/images`` and trainId labels to ``root/labels``."""
    rng = np.random.default_rng(seed)
    images, labels = root / "images", root / "labels"
    for i in range(n):
        h, w = size
        lab = np.zeros(size, dtype=np.uint8)
        lab[: h // 3] = 4
        lab[h // 3 :, : w // 2] = rng.integers(0, 4)
        lab[h // 3 :, w // 2 :] = rng.integers(0, 4)
        img = PALETTE[lab].astype(np.int16) + rng.integers(-20, 20, (*size, 3))
        sub = Path(f"seq{i % 2}") if nested else Path()
        (images / sub).mkdir(parents=True, exist_ok=True)
        (labels / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images / sub / f"f{i}.png")
        Image.fromarray(lab).save(labels / sub / f"f{i}.png")
    return images, labels


@pytest.fixture
def frames(tmp_path: Path) -> tuple[Path, Path]:
    return make_frames(tmp_path / "data")


@pytest.fixture(scope="session")
def lraspp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision lraspp_mobilenet_v3_large checkpoint dict with 5 classes (random weights)."""
    from stvm_sdk.models import build_torchvision

    torch.manual_seed(0)
    net = build_torchvision("lraspp_mobilenet_v3_large", 5)
    path = tmp_path_factory.mktemp("models") / "lraspp.pt"
    torch.save(
        {
            "arch": "lraspp_mobilenet_v3_large",
            "num_classes": 5,
            "state_dict": net.state_dict(),
            "class_names": ["road", "sidewalk", "building", "vegetation", "sky"],
        },
        path,
    )
    return path


CS_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cityscapes_sample"


@pytest.fixture(scope="session")
def cityscapes_sample() -> Path:
    """The real Cityscapes files in ../shared (read there, never copied into the repo)."""
    if not CS_SAMPLE.is_dir():
        pytest.skip(f"{CS_SAMPLE} not present")
    return CS_SAMPLE
