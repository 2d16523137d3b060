"""Model files: checkpoint dicts, TorchScript archives (ours included), pickles only by opt-in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models import (
    build_torchvision,
    forward_logits,
    from_module,
    load_model,
    save_model,
    save_torchscript,
)


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path: Path) -> None:
    net = build_torchvision("lraspp_mobilenet_v3_large", 3).eval()
    seg = from_module(net, arch="lraspp_mobilenet_v3_large", class_names=["a", "b", "c"])
    back = load_model(save_model(seg, tmp_path / "m.pt"))
    assert (back.kind, back.arch, back.classifier) == ("checkpoint", seg.arch, "classifier")
    assert back.class_names == ["a", "b", "c"]
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(back.module.eval(), x), forward_logits(net, x))


def test_our_torchscript_archive_loads_back_with_its_metadata(tmp_path: Path) -> None:
    net = build_torchvision("lraspp_mobilenet_v3_large", 3).eval()
    seg = from_module(net, arch="lraspp_mobilenet_v3_large", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    back = load_model(save_torchscript(seg, tmp_path / "m.ts"))
    assert back.kind == "torchscript" and back.classifier == "classifier" and back.mean == (0.5, 0.5, 0.5)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(back.module, x), forward_logits(net, x))


def test_checkpoint_that_does_not_fit_its_arch(tmp_path: Path) -> None:
    state = build_torchvision("lraspp_mobilenet_v3_large", 3).state_dict()
    torch.save(
        {"arch": "lraspp_mobilenet_v3_large", "num_classes": 5, "state_dict": state}, tmp_path / "m.pt"
    )
    with pytest.raises(ModelLoadError, match="does not fit arch"):
        load_model(tmp_path / "m.pt")


def test_checkpoint_missing_keys(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "m.pt")
    with pytest.raises(ModelLoadError, match="lacks"):
        load_model(tmp_path / "m.pt")
