"""Supervised training (`stvm train-source`): from scratch, or fine-tuning a checkpoint with --init."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stvm_sdk.errors import ConfigError
from stvm_sdk.models import load_model
from stvm_sdk.supervised import TrainConfig, train_source

FAST = {
    "num_classes": 5,
    "iters": 2,
    "batch_size": 2,
    "crop": (32, 64),
    "precise_bn_frames": 0,
    "device": "cpu",
}


def test_training_from_scratch_writes_a_loadable_checkpoint(
    frames: tuple[Path, Path], tmp_path: Path
) -> None:
    train_source(*frames, tmp_path / "m.pt", TrainConfig(**FAST), progress=False)  # type: ignore[arg-type]
    model = load_model(tmp_path / "m.pt")
    assert model.arch == "lraspp_mobilenet_v3_large" and model.num_classes == 5


def test_init_starts_from_the_checkpoints_weights(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = TrainConfig(**{**FAST, "lr": 1e-12, "init": str(lraspp_checkpoint)})  # type: ignore[arg-type]
    train_source(*frames, tmp_path / "ft.pt", cfg, progress=False)
    start = torch.load(lraspp_checkpoint, weights_only=True)["state_dict"]
    tuned = load_model(tmp_path / "ft.pt").module.state_dict()
    for k, v in start.items():
        if v.is_floating_point() and "running" not in k:  # BN statistics move with the batches
            torch.testing.assert_close(tuned[k], v, atol=1e-6, rtol=0, msg=k)
    assert load_model(tmp_path / "ft.pt").class_names == ["road", "sidewalk", "building", "vegetation", "sky"]


def test_init_of_another_arch_or_over_itself_is_refused(
    lraspp_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    other = TrainConfig(**{**FAST, "arch": "deeplabv3_mobilenet_v3_large", "init": str(lraspp_checkpoint)})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="is a lraspp_mobilenet_v3_large model but --arch is deeplabv3"):
        train_source(*frames, tmp_path / "x.pt", other, progress=False)
    from stvm_sdk.errors import OutputError

    same = TrainConfig(**{**FAST, "init": str(lraspp_checkpoint)})  # type: ignore[arg-type]
    with pytest.raises(OutputError, match="contains the input"):
        train_source(*frames, lraspp_checkpoint, same, progress=False)
