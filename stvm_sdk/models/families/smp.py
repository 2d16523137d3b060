"""segmentation_models_pytorch: any arch and encoder smp can build.

Read from a folder written by smp's own ``model.save_pretrained(dir)`` (``config.json`` with
``_model_class`` + ``model.safetensors``), or from a checkpoint dict
``{"family": "smp", "arch": "Unet", "encoder_name": "resnet18", "kwargs": {...}, "num_classes",
"state_dict"}``.
Rebuilt with ``smp.create_model(arch, encoder_name=..., encoder_weights=None, classes=K, **kwargs)``
(nothing is downloaded), where ``kwargs`` holds only the keys of :data:`KWARGS` the arch's class takes by
name, each checked (a file never passes an encoder keyword such as timm's ``checkpoint_path``); written
back with ``save_pretrained``, so ``smp.from_pretrained(dir)`` loads it.
The classifier is ``segmentation_head`` (Conv2d, upsampling, activation): the metric network copies
it whole and swaps its conv.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from stvm_sdk.boundary.fields import MAX_CLASSES, ModelFields, shown
from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.families import register_family
from stvm_sdk.models.families.base import Built, Family, load_safetensors_into, read_json, read_json_strict

# Constructor arguments the SDK sets itself: the weights are never downloaded (encoder_weights is always
# None), the class count is the model's, the input is RGB.
_NOT_ARCH = ("encoder_weights", "classes", "in_channels")
# smp's registry names, its encoders' names and timm's, with a pretrained tag: no ':' or '/', so never
# timm's "hf-hub:" or "local-dir:" sources (a download, a folder outside the model's).
ENCODER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_SHORT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")
MAX_CHANNELS = 8192  # wider than any smp decoder (256 to 2048); refused beyond, before anything allocates

Check = Callable[[ModelFields, str, Any], Any]


def _int(lo: int, hi: int) -> Check:
    return lambda f, name, v: f.integer(name, v, lo=lo, hi=hi)


def _int_or_ints(lo: int, hi: int) -> Check:
    def check(f: ModelFields, name: str, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            if len(v) > 16:
                f.fail(name, v, "at most 16 integers")
            return f.integers(name, list(v), lo=lo, hi=hi)
        return f.integer(name, v, lo=lo, hi=hi)

    return check


def _ints(lo: int, hi: int) -> Check:
    def check(f: ModelFields, name: str, v: Any) -> list[int]:
        if isinstance(v, (list, tuple)) and len(v) > 16:
            f.fail(name, v, "at most 16 integers")
        return f.integers(name, list(v) if isinstance(v, tuple) else v, lo=lo, hi=hi)

    return check


def _fraction(f: ModelFields, name: str, v: Any) -> float:
    return f.number(name, v, lo=0.0, hi=1.0)


def _boolean(f: ModelFields, name: str, v: Any) -> bool:
    return f.boolean(name, v)


def _short_name(f: ModelFields, name: str, v: Any) -> str:
    return f.matching(name, v, _SHORT_NAME, "a name of 1-40 letters, digits, '_', '.' or '-'")


def _norm(f: ModelFields, name: str, v: Any) -> Any:
    """smp's ``decoder_use_norm``: true/false, a norm's name, or ``{"type": name, ...its arguments}``."""
    if isinstance(v, bool):
        return v
    if isinstance(v, dict):
        f.mapping(name, v)
        _short_name(f, f"{name}.type", v.get("type"))
        for key, item in v.items():
            f.matching(f"{name} key", key, _SHORT_NAME, "a name of 1-40 letters, digits, '_', '.' or '-'")
            if key != "type" and not isinstance(item, (bool, int, float, str)):
                f.fail(f"{name}.{key}", item, "a number, a name, true or false")
            if isinstance(item, str):
                _short_name(f, f"{name}.{key}", item)
            elif isinstance(item, float):
                f.number(f"{name}.{key}", item)
        return dict(v)
    return _short_name(f, name, v)


def _aux_params(f: ModelFields, name: str, v: Any) -> dict[str, Any]:
    """smp's auxiliary classification head: ``classes``, ``pooling``, ``dropout``, ``activation``."""
    aux = f.mapping(name, v)
    f.only(aux, list(_AUX), "an argument of smp's auxiliary head", prefix=f"{name}.")
    return {k: (None if item is None else _AUX[k](f, f"{name}.{k}", item)) for k, item in aux.items()}


_AUX: dict[str, Check] = {
    "classes": _int(1, MAX_CLASSES),
    "pooling": _short_name,
    "dropout": _fraction,
    "activation": _short_name,
}

# The keyword arguments a model file may pass to smp's model classes (the named parameters of their
# constructors in smp 0.6: the decoder's shape, the encoder's depth and stride), each with its check.
# Any other key is refused: the classes pass unknown keywords on to the encoder, and timm's encoders
# read files named by some (checkpoint_path, pretrained_cfg_overlay), which a model file must not choose.
KWARGS: dict[str, Check] = {
    "encoder_name": lambda f, name, v: f.matching(
        name, v, ENCODER_NAME, "an encoder name of 1-100 letters, digits, '_', '.' or '-' (no ':' or '/')"
    ),
    "encoder_depth": _int(1, 8),
    "encoder_output_stride": _int(1, 64),
    "encoder_output_indices": _ints(-64, 64),
    "decoder_channels": _int_or_ints(1, MAX_CHANNELS),
    "decoder_pab_channels": _int(1, MAX_CHANNELS),
    "decoder_pyramid_channels": _int(1, MAX_CHANNELS),
    "decoder_segmentation_channels": _int(1, MAX_CHANNELS),
    "decoder_intermediate_channels": _ints(1, MAX_CHANNELS),
    "decoder_fusion_channels": _int(1, MAX_CHANNELS),
    "psp_out_channels": _int(1, MAX_CHANNELS),
    "decoder_atrous_rates": _ints(1, 512),
    "decoder_use_norm": _norm,
    "decoder_attention_type": _short_name,
    "decoder_interpolation": _short_name,
    "decoder_merge_policy": _short_name,
    "decoder_readout": _short_name,
    "decoder_aspp_separable": _boolean,
    "decoder_dropout": _fraction,
    "decoder_aspp_dropout": _fraction,
    "psp_dropout": _fraction,
    "upsampling": _int(1, 64),
    "activation": _short_name,
    "aux_params": _aux_params,
}
# Older names smp still takes (and maps to the new ones), per class.
_DEPRECATED: dict[str, dict[str, Check]] = {
    "Unet": {"decoder_use_batchnorm": _norm},
    "UnetPlusPlus": {"decoder_use_batchnorm": _norm},
    "MAnet": {"decoder_use_batchnorm": _norm},
    "Linknet": {"decoder_use_batchnorm": _norm},
    "PSPNet": {"psp_use_batchnorm": _norm},
    "PAN": {"upscale_mode": _short_name},
}
# Encoder keywords that only set a rate (timm's drop rates): numbers, never a file or a name.
ENCODER_KWARGS: dict[str, Check] = {"drop_rate": _fraction, "drop_path_rate": _fraction}


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
        where = path / "config.json"
        config = read_json_strict(where) or {}
        f = ModelFields(where, ModelLoadError)
        arch = f.matching("_model_class", config.get("_model_class"), _SHORT_NAME, "an smp model class name")
        k = f.integer("classes", config.get("classes", 1), lo=1, hi=MAX_CLASSES)
        channels = config.get("in_channels")
        if channels is not None and f.integer("in_channels", channels, lo=1, hi=MAX_CHANNELS) != 3:
            raise ModelLoadError(f"{path} is an smp model for {channels}-channel input; the SDK reads RGB")
        kwargs = cls.check_config(arch, k, {n: v for n, v in config.items() if not n.startswith("_")}, f, "")
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
        config["encoder_name"] = encoder
        return str(ckpt["arch"]), config

    @classmethod
    def model_class(cls, arch: str) -> type:
        """smp's class for ``arch`` (any case, as ``smp.create_model`` takes it), or one line naming them."""
        smp = cls.require()
        found = smp.MODEL_ARCHITECTURES_MAPPING.get(arch.lower()) if isinstance(arch, str) else None
        if found is None:
            names = sorted(c.__name__ for c in smp.MODEL_ARCHITECTURES_MAPPING.values())
            raise ModelLoadError(f"smp has no arch {shown(arch)}: choose one of {', '.join(names)}")
        return found  # type: ignore[no-any-return]

    @classmethod
    def allowed_kwargs(cls, arch: str) -> dict[str, Check]:
        """The keyword arguments a file may set for ``arch``: those of :data:`KWARGS` its class takes by
        name, its deprecated aliases, and the encoder's drop rates."""
        model_cls = cls.model_class(arch)
        named = set(inspect.signature(model_cls).parameters)
        return {
            **{n: c for n, c in KWARGS.items() if n in named},
            **_DEPRECATED.get(model_cls.__name__, {}),
            **ENCODER_KWARGS,
        }

    @classmethod
    def check_config(
        cls, arch: str, num_classes: int, config: dict[str, Any], f: ModelFields, prefix: str = "config."
    ) -> dict[str, Any]:
        """The keyword arguments for smp, each checked; a key outside :meth:`allowed_kwargs` is refused by
        name. ``encoder_weights`` is dropped (never downloaded); ``classes`` must be the model's class
        count and ``in_channels`` 3 when the file states them."""
        allowed = cls.allowed_kwargs(arch)
        f.only(
            (n for n in config if n not in _NOT_ARCH),
            list(allowed),
            f"an argument the SDK passes to smp's {cls.model_class(arch).__name__} (encoder keywords can "
            "name files to open)",
            prefix,
        )
        if (
            config.get("classes") is not None
            and f.integer(f"{prefix}classes", config["classes"]) != num_classes
        ):
            f.fail(f"{prefix}classes", config["classes"], f"{num_classes}, the model's class count")
        if config.get("in_channels") is not None and config["in_channels"] != 3:
            f.fail(f"{prefix}in_channels", config["in_channels"], "3 (RGB input)")
        kwargs: dict[str, Any] = {}
        for name, value in config.items():
            if name in _NOT_ARCH:
                continue
            if value is None and name != "encoder_name":
                kwargs[name] = None  # what smp's own config records for an argument left at None
                continue
            kwargs[name] = allowed[name](f, f"{prefix}{name}", value)
        if "encoder_name" not in kwargs:
            f.missing(f"{prefix}encoder_name", "an smp encoder name, e.g. 'resnet18'")
        return kwargs

    @classmethod
    def build(cls, arch: str, num_classes: int, config: dict[str, Any]) -> nn.Module:
        smp = cls.require()
        # Checked again here, so no caller can pass a keyword the allow-list does not name.
        kwargs = cls.check_config(
            arch, num_classes, config, ModelFields(f"smp {shown(arch)} config", ModelLoadError)
        )
        try:
            return smp.create_model(arch, encoder_weights=None, classes=num_classes, **kwargs)  # type: ignore[no-any-return]
        except Exception as exc:  # an encoder smp does not know, arguments that do not fit together
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelLoadError(f"smp cannot build {arch} from {shown(kwargs, 200)}: {why}") from None

    @classmethod
    def classifier(cls, module: nn.Module, arch: str) -> str:
        return "segmentation_head"

    @classmethod
    def save_native(cls, module: nn.Module, arch: str, num_classes: int, config: dict[str, Any],
                    class_names: list[str], folder: Path) -> Path:  # fmt: skip
        module.save_pretrained(str(folder))  # type: ignore[operator]  # config.json + model.safetensors
        return folder
