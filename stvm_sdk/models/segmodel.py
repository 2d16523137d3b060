"""The SDK's model object: a segmentation ``nn.Module`` plus what adapting, evaluating and exporting it
needs (classes, classifier head, normalisation, and for a model of a known family how to rebuild it)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from stvm_sdk.boundary.fields import ModelFields
from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.contract import check_contract, find_classifier, get_submodule
from stvm_sdk.models.families import get_family

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip
CHECKPOINT_FORMAT = "stvm_sdk.checkpoint/1"
METADATA_KEY = "stvm_sdk"  # the safetensors header entry that holds the SDK's JSON metadata
TORCHVISION_FAMILIES = ("fcn_", "deeplabv3_", "lraspp_")


@dataclass
class SegModel:
    """A segmentation model plus the metadata the SDK needs to adapt, evaluate and export it."""

    module: nn.Module
    num_classes: int
    classifier: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: list[str] = field(default_factory=list)
    arch: str | None = None
    kind: str = "module"  # safetensors | checkpoint | folder | torchscript | pickle | module
    family: str | None = None  # torchvision | smp | hf | a registered one; None: a user's own module
    config: dict[str, Any] = field(default_factory=dict)  # what the family needs to rebuild ``arch``

    def __post_init__(self) -> None:
        if self.family is None and self.arch is not None and self.arch.startswith(TORCHVISION_FAMILIES):
            self.family = "torchvision"
        if self.family == "torchvision" and "aux_loss" not in self.config:  # rebuilt with or without it
            aux = getattr(self.module, "aux_classifier", None) is not None
            self.config = {**self.config, "aux_loss": aux}
        # Every model, wherever it came from, normalises [0,1] input with a usable mean and std (a file's
        # are checked where it is read, naming the file; this catches a caller's own).
        self.mean, self.std = ModelFields("the model", ModelLoadError).normalisation(
            "mean", self.mean, "std", self.std
        )
        if not self.class_names:
            self.class_names = (
                list(CITYSCAPES_CLASSES)
                if self.num_classes == 19
                else [f"class_{i}" for i in range(self.num_classes)]
            )
        if len(self.class_names) != self.num_classes:
            raise ModelLoadError(
                f"class_names has {len(self.class_names)} entries "
                f"but the model has {self.num_classes} classes"
            )

    def clone(self) -> SegModel:
        """Deep copy of the module (the caller's model is never mutated)."""
        return replace(
            self,
            module=copy.deepcopy(self.module),
            class_names=list(self.class_names),
            config=copy.deepcopy(self.config),
        )

    def metadata(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "family": self.family,
            "arch": self.arch,
            "config": self.config,
            "num_classes": self.num_classes,
            "classifier": self.classifier,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
        }


def build_torchvision(arch: str, num_classes: int, *, aux_loss: bool = False) -> nn.Module:
    """Build a torchvision segmentation model with random weights (no download)."""
    return get_family("torchvision").build(arch, num_classes, {"aux_loss": aux_loss})


def from_module(
    module: nn.Module,
    *,
    num_classes: int | None = None,
    classifier: str | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    class_names: list[str] | None = None,
    arch: str | None = None,
    kind: str = "module",
    family: str | None = None,
    config: dict[str, Any] | None = None,
) -> SegModel:
    """Wrap an ``nn.Module`` after checking the model contract (output ``[B,K,h,w]``).

    ``family``/``arch``/``config`` say how to rebuild the module (what :func:`save_model` records);
    without them the model is a user's own module, saved only as a pickle or TorchScript.
    """
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"expected an nn.Module, got {type(module).__name__}")
    k = check_contract(module, num_classes)
    if classifier is not None and not isinstance(module, torch.jit.ScriptModule):
        get_submodule(module, classifier)  # fail now, with the module names, not mid-run
    elif not isinstance(module, torch.jit.ScriptModule):
        classifier = find_classifier(module, k, probe=torch.zeros(1, 3, 64, 128))
    return SegModel(
        module, k, classifier, tuple(mean), tuple(std), list(class_names or []), arch, kind,  # type: ignore[arg-type]
        family, dict(config or {}),
    )  # fmt: skip


def non_finite(obj: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating tensors in ``obj`` holding NaN or inf: a module's parameters
    and buffers, or the tensors of nested dicts, lists and tuples (a checkpoint, an optimiser state)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        ok = not (obj.is_floating_point() or obj.is_complex()) or bool(torch.isfinite(obj).all())
        return [] if ok else [prefix or "tensor"]
    if isinstance(obj, dict):
        items: Iterable[tuple[Any, Any]] = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    out: list[str] = []
    for k, v in items:
        out += non_finite(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def require_finite(model: SegModel, doing: str) -> None:
    """Refuse a model with NaN/inf weights before ``doing`` it (e.g. "export it")."""
    bad = non_finite(model.module)
    if bad:
        raise ModelLoadError(
            f"the model has NaN or inf values in {len(bad)} tensor(s) (e.g. {', '.join(bad[:3])}): "
            f"refusing to {doing}; use the last good checkpoint or retrain"
        )
