"""The model contract's probes (head guess, output check) on models from other libraries' layouts.

A probe must never change the model: it runs in eval mode without gradients, and leaves every
module's train/eval flag and every BatchNorm statistic exactly as they were.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch
from support import HeadProbeNet, TinySegNet, WeakHeadNet
from torch import nn

from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models import check_contract, find_classifier, forward_logits, from_module, load_model
from stvm_sdk.models.contract import classifier_problem


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _modes(module: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in module.named_modules()}


def _assert_unchanged(module: nn.Module, state: dict[str, torch.Tensor], modes: dict[str, bool]) -> None:
    after = module.state_dict()
    changed = [k for k, v in state.items() if not torch.equal(v, after[k])]
    assert changed == []
    assert _modes(module) == modes


def test_head_probe_leaves_bn_statistics_and_modes_unchanged() -> None:
    net = HeadProbeNet().train()
    net.encoder[1].eval()  # a mixed model: one BatchNorm frozen by its user
    state, modes = _state(net), _modes(net)
    seg = from_module(net)
    assert seg.classifier == "segmentation_head"
    _assert_unchanged(net, state, modes)


def test_load_model_of_a_pickle_in_train_mode_leaves_it_unchanged(tmp_path: Path) -> None:
    net = HeadProbeNet().train()
    path = tmp_path / "net.pkl"
    path.write_bytes(pickle.dumps(net))
    seg = load_model(path, trust_pickle=True)
    assert seg.classifier == "segmentation_head"
    _assert_unchanged(seg.module, _state(net), _modes(net))


def test_head_probe_skips_parameter_free_leaves() -> None:
    # The last leaf emitting 5 channels is an Identity after an Upsampling; the head is the module
    # holding the 5-output conv.
    assert find_classifier(HeadProbeNet(), 5, probe=torch.zeros(1, 3, 32, 64)) == "segmentation_head"
    assert classifier_problem(HeadProbeNet(), "segmentation_head", 5) is None
    assert "no conv" in (classifier_problem(HeadProbeNet(), "segmentation_head.2", 5) or "")


def test_weak_head_guess_is_said(caplog: pytest.LogCaptureFixture) -> None:
    net = WeakHeadNet()
    with caplog.at_level(logging.WARNING, logger="stvm_sdk"):
        seg = from_module(net)
    assert seg.classifier == "out"
    assert "--classifier" in caplog.text
    problem = classifier_problem(net, "out", 5)
    assert problem is not None and "no conv" in problem


def test_check_contract_accepts_tuple_outputs() -> None:
    net = HeadProbeNet(tuple_out=True)
    assert check_contract(net, 5) == 5
    seg = from_module(net)
    assert seg.classifier == "segmentation_head"
    assert forward_logits(net.eval(), torch.zeros(2, 3, 32, 64)).shape == (2, 5, 32, 64)


def test_check_contract_still_refuses_a_non_logits_output() -> None:
    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3))

    with pytest.raises(ModelLoadError, match=r"logits \[B,K,h,w\]"):
        check_contract(Flat(), None)


def test_check_contract_and_forward_logits_read_a_model_output_logits_attribute() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import SemanticSegmenterOutput

    assert transformers  # the library's own output type: a dict subclass with a .logits tensor

    class HFLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = TinySegNet()

        def forward(self, x: torch.Tensor) -> SemanticSegmenterOutput:
            return SemanticSegmenterOutput(logits=self.net(x)["out"][..., ::4, ::4])

    net = HFLike().eval()
    assert check_contract(net, 5) == 5
    assert forward_logits(net, torch.zeros(1, 3, 32, 64)).shape == (1, 5, 32, 64)


def test_smp_deeplabv3plus_in_train_mode_through_the_python_api() -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    from stvm_sdk.inputs import as_segmodel

    torch.manual_seed(0)
    net = smp.DeepLabV3Plus("mobilenet_v2", encoder_weights=None, classes=5).train()
    state, modes = _state(net), _modes(net)
    seg = as_segmodel(net)  # crashed: "Expected more than 1 value per channel when training"
    assert seg.classifier == "segmentation_head"
    _assert_unchanged(net, state, modes)
    _assert_unchanged(seg.module, state, modes)


def test_smp_unet_head_is_the_segmentation_head_not_its_activation() -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")

    net = smp.Unet("resnet18", encoder_weights=None, classes=5).train()
    state, modes = _state(net), _modes(net)
    seg = from_module(net)
    assert seg.classifier == "segmentation_head"
    _assert_unchanged(net, state, modes)
