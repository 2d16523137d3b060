"""torchvision segmentation models (``fcn_*``, ``deeplabv3_*``, ``lraspp_*``).

Read from a checkpoint dict ``{"arch", "num_classes", "state_dict"}``; rebuilt with
``torchvision.models.get_model(arch, num_classes=K, weights=None, weights_backbone=None)`` (nothing is
downloaded); written back as ``model.safetensors`` plus ``config.json`` (``arch``, ``num_classes``,
``aux_loss``) that load into that same call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from stvm_sdk.boundary.fields import ModelFields, shown
from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.families import register_family
from stvm_sdk.models.families.base import Built, Family, save_state

PREFIXES = ("fcn_", "deeplabv3_", "lraspp_")
_CLASS_PREFIX = {"FCN": "fcn_", "DeepLabV3": "deeplabv3_", "LRASPP": "lraspp_"}


@register_family
class Torchvision(Family):
    name = "torchvision"
    library = "torchvision"
    extra = None  # a core dependency
    title = "a torchvision model"

    @classmethod
    def reads_checkpoint(cls, ckpt: dict[str, Any]) -> bool:
        return str(ckpt.get("arch", "")).startswith(PREFIXES)

    @classmethod
    def checkpoint_spec(cls, ckpt: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        config = dict(ckpt.get("config") or {})
        if config.get("aux_loss") is None:  # old checkpoints: an aux head is there when its weights are
            config["aux_loss"] = any(str(k).startswith("aux_classifier.") for k in ckpt.get("state_dict", {}))
        return str(ckpt["arch"]), config

    @classmethod
    def check_config(
        cls, arch: str, num_classes: int, config: dict[str, Any], f: ModelFields, prefix: str = "config."
    ) -> dict[str, Any]:
        """Only ``aux_loss`` (true or false) is read; ``build`` passes nothing else to torchvision."""
        aux = config.get("aux_loss")
        return {} if aux is None else {"aux_loss": f.boolean(f"{prefix}aux_loss", aux)}

    @classmethod
    def recognise(cls, module: nn.Module) -> Built | None:
        prefix = _CLASS_PREFIX.get(type(module).__name__)
        if prefix is None or not type(module).__module__.startswith("torchvision.models.segmentation"):
            return None
        tv = cls.require()
        convs = [m for m in module.classifier.modules() if isinstance(m, nn.Conv2d)]  # type: ignore[union-attr]
        k = convs[-1].out_channels
        config = {"aux_loss": getattr(module, "aux_classifier", None) is not None}
        shapes = {n: tuple(t.shape) for n, t in module.state_dict().items()}
        # The class says fcn/deeplabv3/lraspp; the backbone (resnet50/101, mobilenet) only the weights do.
        for arch in tv.models.list_models(module=tv.models.segmentation):
            if arch.startswith(prefix):
                candidate = cls.build(arch, k, config)
                if {n: tuple(t.shape) for n, t in candidate.state_dict().items()} == shapes:
                    return Built(module, arch, k, config, "classifier")
        return None

    @classmethod
    def build(cls, arch: str, num_classes: int, config: dict[str, Any]) -> nn.Module:
        tv = cls.require()
        if not isinstance(arch, str) or not arch.startswith(PREFIXES):
            raise ModelLoadError(
                f"unknown arch {shown(arch)}: use a torchvision segmentation model "
                "(fcn_*, deeplabv3_*, lraspp_*) or save the model as TorchScript"
            )
        # Fixed keyword arguments: nothing read from a file reaches torchvision but the class count and
        # whether the aux head is there (nothing is downloaded: no weights of any kind).
        kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if not arch.startswith("lraspp_"):
            kwargs["aux_loss"] = bool(config.get("aux_loss", False))
        if arch not in tv.models.list_models(module=tv.models.segmentation):
            raise ModelLoadError(f"torchvision has no segmentation model {shown(arch)}")
        try:
            return tv.models.get_model(arch, **kwargs)  # type: ignore[no-any-return]
        except Exception as exc:
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelLoadError(
                f"torchvision cannot build {shown(arch)} with {num_classes} classes: {why}"
            ) from None

    @classmethod
    def classifier(cls, module: nn.Module, arch: str) -> str:
        return "classifier"  # FCNHead, DeepLabHead and LRASPPHead alike; aux_classifier is not used

    @classmethod
    def save_native(cls, module: nn.Module, arch: str, num_classes: int, config: dict[str, Any],
                    class_names: list[str], folder: Path) -> Path:  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        save_state(module.state_dict(), folder / "model.safetensors")
        spec = {"arch": arch, "num_classes": num_classes, "aux_loss": bool(config.get("aux_loss", False)),
                "class_names": list(class_names)}  # fmt: skip
        (folder / "config.json").write_text(json.dumps(spec, indent=2) + "\n")
        return folder
