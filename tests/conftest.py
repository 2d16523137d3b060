"""Shared fixtures: seeded torch, a tiny segmentation net, generated labelled frames, a checkpoint.

Everything here runs on CPU in milliseconds; `--runslow` enables tests marked `slow`.
"""

from __future__ import annotations

import os

if not __import__("torch").cuda.is_available():
    # Read when @triton.jit decorates: must be set before any kernel module is imported (docs/environment.md).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from support import TinySegNet, make_frames  # noqa: E402

torch.set_num_threads(2)


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


@pytest.fixture
def tiny_net() -> TinySegNet:
    return TinySegNet()


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
    """Real Cityscapes sample files at ``CS_SAMPLE``, beside the checkout (read there, never copied in)."""
    if not CS_SAMPLE.is_dir():
        pytest.skip(f"{CS_SAMPLE} not present")
    return CS_SAMPLE
