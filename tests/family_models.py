"""Tiny random-init models of each family, saved the library's own way (nothing can be downloaded here).

Shared by tests/models/test_families.py and tests/models/test_family_matrix.py; the libraries are
imported with pytest.importorskip, so a missing extra skips the test instead of failing collection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stvm_sdk.boundary.sniff import file_kind

K = 5  # the classes of tests/support.make_frames
NAMES = ["road", "car", "tree", "sky", "person"]
# A TorchScript archive (the run's model.ts) is its own kind: torch.jit.load rebuilds tensors and
# TorchScript code, it never imports arbitrary Python classes as a pickle (or torch.load of one) does.
PICKLE_KINDS = ("pickle", "torch_zip", "torch_legacy")

# smp models small enough for seconds per run: a minimal MobileNetV3 encoder, narrow decoders.
SMP_ENCODER = "timm-mobilenetv3_small_minimal_100"
SMP_TINY = {"encoder_name": SMP_ENCODER, "encoder_depth": 3, "decoder_channels": [16, 8, 8]}
SMP_ARCHS: dict[str, dict[str, object]] = {
    "Unet": SMP_TINY,
    "DeepLabV3Plus": {"encoder_name": SMP_ENCODER, "decoder_channels": 16},
    # FPN's segmentation blocks use GroupNorm(32): their channels must be a multiple of 32
    "FPN": {"encoder_name": SMP_ENCODER, "decoder_pyramid_channels": 16, "decoder_segmentation_channels": 32},
}


def assert_no_pickle(root: Path) -> list[Path]:
    """No file under ``root`` is a pickle or a torch archive (which holds one); returns the files.

    The one exception is a run's resume state ``checkpoints/last.pt`` (optimiser state, nested
    dicts), read back only with ``torch.load(weights_only=True)``: it is not a model, and not pickle-free.
    """
    files = [f for f in root.rglob("*") if f.is_file()]
    for f in files:
        if f.parent.name == "checkpoints" and f.name == "last.pt":
            continue
        assert file_kind(f) not in PICKLE_KINDS, f
    return files


def hf_configs() -> dict[str, Callable[[], object]]:
    def tf() -> object:
        return pytest.importorskip("transformers")

    return {
        "SegformerForSemanticSegmentation": lambda: tf().SegformerConfig(  # type: ignore[attr-defined]
            num_labels=K, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
            num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16,
        ),
        "UperNetForSemanticSegmentation": lambda: tf().UperNetConfig(  # type: ignore[attr-defined]
            backbone_config=tf().ConvNextConfig(  # type: ignore[attr-defined]
                hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                out_features=["stage1", "stage2", "stage3", "stage4"],
            ),
            hidden_size=16, auxiliary_in_channels=16, auxiliary_channels=8, num_labels=K, pool_scales=[1, 2],
        ),
        "DPTForSemanticSegmentation": lambda: tf().DPTConfig(  # type: ignore[attr-defined]
            hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=64,
            patch_size=16, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, num_labels=K,
            backbone_out_indices=[0, 1, 2, 3],
        ),
        "BeitForSemanticSegmentation": lambda: tf().BeitConfig(  # type: ignore[attr-defined]
            hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=64,
            patch_size=16, out_indices=[1, 2, 3, 4], pool_scales=[1, 2], auxiliary_channels=8, num_labels=K,
            use_relative_position_bias=True,
        ),
        "MobileViTV2ForSemanticSegmentation": lambda: tf().MobileViTV2Config(  # type: ignore[attr-defined]
            num_labels=K, width_multiplier=0.5, aspp_out_channels=16, image_size=64
        ),
    }  # fmt: skip


NAMES = ["road", "car", "tree", "sky", "person"]


Frames = tuple[Path, Path]  # (images, labels) folders, as tests/support.make_frames writes them


def fit(net: torch.nn.Module, frames: Frames, steps: int = 25) -> torch.nn.Module:
    """``net`` trained ``steps`` Adam steps on the labelled ``frames`` (whole batch), back in eval mode.

    A random-init model's logits are near-tied almost everywhere, so whether an fp16 or INT8 graph
    agrees with it is chance; a few steps on the frames give it the margins a trained model has, so
    the export checks run at their default bar. Outputs are read as the library gives them (a dict
    with ``out``, a tensor, or a ModelOutput with ``logits`` at a lower resolution).
    """
    images, labels = frames
    files = sorted(images.rglob("*.png"))
    x = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files]
    )
    y = torch.stack([torch.from_numpy(np.asarray(Image.open(labels / f.relative_to(images)))) for f in files])
    x, y = x.float() / 255.0, y.long()
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    net.train()
    for _ in range(steps):
        out = net(pixel_values=x) if type(net).__module__.startswith("transformers.") else net(x)
        out = out.logits if hasattr(out, "logits") else out["out"] if isinstance(out, dict) else out
        out = torch.nn.functional.interpolate(out, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def hf_folder(
    root: Path, arch: str, *, preprocessor: dict | None = None, fit_on: Frames | None = None
) -> Path:
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = hf_configs()[arch]()
    config.id2label = dict(enumerate(NAMES))  # type: ignore[attr-defined]
    config.label2id = {n: i for i, n in enumerate(NAMES)}  # type: ignore[attr-defined]
    folder = root / arch
    model = getattr(tf, arch)(config).eval()
    with torch.no_grad():  # HF's init zeroes some layers (MobileViTV2's logits are all 0): perturb all
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if fit_on is not None:
        fit(model, fit_on)
    model.save_pretrained(str(folder))
    if preprocessor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


def smp_folder(root: Path, arch: str, *, fit_on: Frames | None = None) -> Path:
    """An smp model written by its own ``save_pretrained`` (config.json + model.safetensors)."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = smp.create_model(arch, encoder_weights=None, classes=K, **SMP_ARCHS[arch]).eval()
    if fit_on is not None:
        fit(model, fit_on)
    folder = root / arch
    model.save_pretrained(str(folder))
    return folder


def torchvision_safetensors(root: Path, arch: str, *, fit_on: Frames | None = None) -> Path:
    """A torchvision model in the SDK's own pickle-free form (torchvision has no save format of its own
    besides a pickled checkpoint dict): safetensors with the arch in its JSON metadata."""
    import torchvision

    from stvm_sdk.inputs import as_segmodel
    from stvm_sdk.models import save_model

    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, num_classes=K, weights=None, weights_backbone=None)
    if fit_on is not None:
        fit(net, fit_on)
    return save_model(as_segmodel(net.eval()), root / f"{arch}.safetensors")
