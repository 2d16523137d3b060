"""Models of a known family (torchvision, smp, hf) in and out: the SDK's safetensors, family checkpoint
dicts, a library's own ``save_pretrained`` folder, an in-memory library model, and the library form
written back (:func:`save_native`). The families themselves live in :mod:`stvm_sdk.models.families`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stvm_sdk.boundary.fields import MAX_CLASSES, ModelFields, shown
from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.families import (
    Built,
    Family,
    family_for_checkpoint,
    family_for_folder,
    family_for_module,
    family_names,
    get_family,
)
from stvm_sdk.models.families.base import check_state_fits
from stvm_sdk.models.segmodel import (
    CHECKPOINT_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    METADATA_KEY,
    SegModel,
    from_module,
)


def wrap_module(
    module: nn.Module, *, num_classes: int | None = None, classifier: str | None = None
) -> SegModel:
    """An in-memory model as a :class:`SegModel`: a torchvision, smp or Hugging Face model is recognised
    (family, arch, classifier, class names: saved as safetensors, written back in its library's form);
    any other module is a user's own (:func:`from_module`)."""
    found = family_for_module(module)
    if found is None:
        return from_module(module, num_classes=num_classes, classifier=classifier)
    family, built = found
    _classes(built.num_classes, num_classes, "model")
    return _segmodel(built, family, "module", {}, classifier)


def from_checkpoint(
    ckpt: dict[str, Any], p: Path, num_classes: int | None, classifier: str | None
) -> SegModel:
    missing = [k for k in ("arch", "num_classes") if k not in ckpt]
    if missing:
        raise ModelLoadError(f"checkpoint {p} lacks {missing}: it needs 'arch', 'num_classes', 'state_dict'")
    f = ModelFields(p, ModelLoadError)
    state = f.mapping("state_dict", ckpt["state_dict"])
    if not all(isinstance(t, torch.Tensor) for t in state.values()):
        f.fail("state_dict", {k: type(t).__name__ for k, t in state.items()}, "an object of tensors")
    arch = f.text("arch", ckpt["arch"])
    k = f.integer("num_classes", ckpt["num_classes"], lo=1, hi=MAX_CLASSES)
    if ckpt.get("family") is not None:
        f.text("family", ckpt["family"], choices=family_names())
    for name in ("config", "kwargs"):
        if ckpt.get(name) is not None:
            f.mapping(name, ckpt[name])
    recorded = recorded_fields(ckpt, f, k)
    family = family_for_checkpoint(ckpt)
    if family is None:
        raise ModelLoadError(
            f"unknown arch {shown(arch)}: use a torchvision segmentation model (fcn_*, deeplabv3_*, "
            "lraspp_*), an smp model (add 'encoder_name'), a save_pretrained folder, or TorchScript"
        )
    _classes(k, num_classes, "checkpoint")
    arch, config = family.checkpoint_spec(ckpt)
    prefix = "config." if ckpt.get("config") or not ckpt.get("kwargs") else "kwargs."
    config = family.check_config(arch, k, config, f, prefix)
    module = family.build(arch, k, config)
    check_state_fits(module, state, f"checkpoint {p}", f"arch '{arch}' with {k} classes")
    return _segmodel(Built(module, arch, k, config), family, "checkpoint", recorded, classifier)


def load_safetensors(p: Path, num_classes: int | None, classifier: str | None) -> SegModel:
    """The SDK's own file: weights plus the JSON metadata in the safetensors header."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {p}: a corrupt safetensors file ({first_line(exc)})") from None
    try:
        meta = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else None
    except ValueError as exc:
        raise ModelLoadError(
            f"cannot read {p}: its '{METADATA_KEY}' metadata is not JSON ({first_line(exc)})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT or not meta.get("family"):
        raise ModelLoadError(
            f"{p} is a safetensors file without the SDK's metadata: it holds weights without the "
            "architecture; pass the library's save_pretrained folder it belongs to, or a checkpoint dict "
            "{'arch', 'num_classes', 'state_dict'}"
        )
    f = ModelFields(p, ModelLoadError)
    family = get_family(f.text("family", meta["family"], choices=family_names()))
    arch = f.text("arch", meta.get("arch"))
    k = _classes(
        f.integer("num_classes", meta.get("num_classes"), lo=1, hi=MAX_CLASSES), num_classes, "model"
    )
    recorded = recorded_fields(meta, f, k)
    config = family.check_config(arch, k, f.mapping("config", meta.get("config") or {}), f)
    module = family.build(arch, k, config)
    check_state_fits(module, state, str(p), f"{family.name} '{arch}' with {k} classes")
    return _segmodel(Built(module, arch, k, config), family, "safetensors", recorded, classifier)


def load_folder(p: Path, num_classes: int | None, classifier: str | None) -> SegModel:
    """A library's own ``save_pretrained`` folder."""
    family = family_for_folder(p)
    if family is None:
        raise ModelLoadError(
            f"{p} is a folder but not a model folder the SDK reads: pass the model file itself, or a "
            "segmentation_models_pytorch / Hugging Face save_pretrained folder "
            "(config.json + model.safetensors)"
        )
    built = family.load_folder(p)
    _classes(built.num_classes, num_classes, "model")
    return _segmodel(built, family, "folder", {}, classifier)


def recorded_fields(meta: dict[str, Any], f: ModelFields, k: int | None) -> dict[str, Any]:
    """The classifier, normalisation and class names a model file records, checked (a field that is
    absent or null is left to the family's default); ``class_names`` must name the ``k`` classes."""
    out: dict[str, Any] = {}
    if meta.get("classifier") is not None:
        out["classifier"] = f.text("classifier", meta["classifier"])
    mean, std = meta.get("mean"), meta.get("std")
    if mean is not None or std is not None:
        out["mean"], out["std"] = f.normalisation(
            "mean", IMAGENET_MEAN if mean is None else mean, "std", IMAGENET_STD if std is None else std
        )
    if meta.get("class_names") is not None:
        out["class_names"] = f.texts("class_names", meta["class_names"], length=k)
    return out


def _classes(k: int, asked: int | None, what: str) -> int:
    if asked is not None and asked != k:
        raise ModelLoadError(f"the {what} has {k} classes but --num-classes is {asked}")
    return k


def _segmodel(
    built: Built, family: type[Family], kind: str, meta: dict[str, Any], classifier: str | None
) -> SegModel:
    """A :class:`SegModel` from what a family built; recorded metadata wins over the family's defaults."""
    return from_module(
        built.module,
        num_classes=built.num_classes,
        classifier=classifier or meta.get("classifier") or built.classifier
        or family.classifier(built.module, built.arch),
        mean=meta.get("mean") or built.mean or IMAGENET_MEAN,
        std=meta.get("std") or built.std or IMAGENET_STD,
        class_names=meta.get("class_names") or built.class_names,
        arch=built.arch,
        kind=kind,
        family=family.name,
        config=built.config,
    )  # fmt: skip


def model_suffix(model: SegModel) -> str:
    """The file suffix :func:`save_model` writes ``model`` in by default: ``.safetensors`` for a model of
    a known family; ``.pt`` for TorchScript or a user's own module (a pickle)."""
    if model.family is None or isinstance(model.module, torch.jit.ScriptModule):
        return ".pt"
    return ".safetensors"


def save_native(model: SegModel, folder: str | os.PathLike[str]) -> Path:
    """Write ``model`` in its family's own form into ``folder`` (HF/smp ``save_pretrained``; torchvision
    ``model.safetensors`` + ``config.json`` for ``get_model``), so the user's library loads it back."""
    if model.family is None or model.arch is None:
        raise ModelLoadError("the model has no known family: it has no library form to write")
    family = get_family(model.family)
    module = copy.deepcopy(model.module).cpu().eval()
    return family.save_native(
        module, model.arch, model.num_classes, model.config, model.class_names, Path(folder)
    )


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
