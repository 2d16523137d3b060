"""segmentation_models_pytorch: any arch and encoder smp can build.

Read from a folder written by smp's own ``model.save_pretrained(dir)`` (``config.json`` with
``_model_class`` + ``model.safetensors``), or from a checkpoint dict
``{"family": "smp", "arch": "Unet", "encoder_name": "resnet18", "kwargs": {...}, "num_classes",
"state_dict"}``.
Rebuilt with ``smp.create_model(arch, encoder_name=..., encoder_weights=None, classes=K, **kwargs)``
(nothing is downloaded); written back with ``save_pretrained``, so ``smp.from_pretrained(dir)`` loads it.
The classifier is ``segmentation_head`` (Conv2d, upsampling, activation): the metric network copies
it whole and swaps its conv.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.families import register_family
from stvm_sdk.models.families.base import Built, Family, load_safetensors_into, read_json

# Constructor arguments that are not part of the architecture (or that the SDK sets itself).
_NOT_ARCH = ("encoder_weights", "classes", "in_channels")


@register_family
class Smp(Family):
    name = "smp"
    library = "segmentation_models_pytorch"
    extra = "smp"
    title = "a segmentation_models_pytorch model"

    @classmethod
    def reads_folder(cls, path: Path) -> bool:
        config = read_json(path / "config.json")
        return config is not None and "_model_class" in config and "encoder_name" in config

    @classmethod
    def load_folder(cls, path: Path) -> Built:
        config = read_json(path / "config.json") or {}
        arch = str(config["_model_class"])
        k = int(config.get("classes", 1))
        kwargs = {n: v for n, v in config.items() if not n.startswith("_") and n not in _NOT_ARCH}
        if int(config.get("in_channels", 3)) != 3:
            raise ModelLoadError(
                f"{path} is an smp model for {config['in_channels']}-channel input; the SDK reads RGB"
            )
        module = cls.build(arch, k, kwargs)
        load_safetensors_into(module, path / "model.safetensors", f"smp {arch} with {k} classes")
        return Built(module, arch, k, kwargs, cls.classifier(module, arch))

    @classmethod
    def recognise(cls, module: nn.Module) -> Built | None:
        smp = sys.modules.get(cls.library)
        if smp is None or not isinstance(module, smp.base.SegmentationModel):
            return None
        config: dict[str, Any] = dict(getattr(module, "config", None) or {})
        if "classes" not in config or "encoder_name" not in config:
            return None  # not built through smp's constructor: no record of its arch
        kwargs = {n: v for n, v in config.items() if not n.startswith("_") and n not in _NOT_ARCH}
        arch = type(module).__name__
        return Built(module, arch, int(config["classes"]), kwargs, cls.classifier(module, arch))

    @classmethod
    def reads_checkpoint(cls, ckpt: dict[str, Any]) -> bool:
        return "encoder_name" in ckpt or "encoder" in ckpt

    @classmethod
    def checkpoint_spec(cls, ckpt: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        config = dict(ckpt.get("config") or ckpt.get("kwargs") or {})
        encoder = ckpt.get("encoder_name", ckpt.get("encoder", config.get("encoder_name")))
        if encoder is None:
            raise ModelLoadError("an smp checkpoint needs 'encoder_name' (e.g. 'resnet18') beside 'arch'")
        config["encoder_name"] = str(encoder)
        return str(ckpt["arch"]), {n: v for n, v in config.items() if n not in _NOT_ARCH}

    @classmethod
    def build(cls, arch: str, num_classes: int, config: dict[str, Any]) -> nn.Module:
        smp = cls.require()
        kwargs = {n: v for n, v in config.items() if n not in _NOT_ARCH}
        try:
            return smp.create_model(arch, encoder_weights=None, classes=num_classes, **kwargs)  # type: ignore[no-any-return]
        except KeyError:
            names = sorted(c.__name__ for c in smp.MODEL_ARCHITECTURES_MAPPING.values())
            raise ModelLoadError(f"smp has no arch '{arch}': choose one of {', '.join(names)}") from None
        except Exception as exc:  # unknown encoder, bad kwargs
            raise ModelLoadError(
                f"smp cannot build {arch} from {kwargs}: {str(exc).splitlines()[0][:200]}"
            ) from None

    @classmethod
    def classifier(cls, module: nn.Module, arch: str) -> str:
        return "segmentation_head"

    @classmethod
    def save_native(cls, module: nn.Module, arch: str, num_classes: int, config: dict[str, Any],
                    class_names: list[str], folder: Path) -> Path:  # fmt: skip
        module.save_pretrained(str(folder))  # type: ignore[operator]  # config.json + model.safetensors
        return folder
