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

from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.families import (
    Built,
    Family,
    family_for_checkpoint,
    family_for_folder,
    family_for_module,
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
    family = family_for_checkpoint(ckpt)
    if family is None:
        raise ModelLoadError(
            f"unknown arch '{ckpt['arch']}': use a torchvision segmentation model (fcn_*, deeplabv3_*, "
            "lraspp_*), an smp model (add 'encoder_name'), a save_pretrained folder, or TorchScript"
        )
    k = _classes(int(ckpt["num_classes"]), num_classes, "checkpoint")
    arch, config = family.checkpoint_spec(ckpt)
    module = family.build(arch, k, config)
    check_state_fits(module, ckpt["state_dict"], f"checkpoint {p}", f"arch '{arch}' with {k} classes")
    return _segmodel(Built(module, arch, k, config), family, "checkpoint", ckpt, classifier)


def load_safetensors(p: Path, num_classes: int | None, classifier: str | None) -> SegModel:
    """The SDK's own file: weights plus the JSON metadata in the safetensors header."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (not a dict)
        meta = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else None
    except Exception as exc:
        raise ModelLoadError(f"cannot read {p}: a corrupt safetensors file ({first_line(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT or not meta.get("family"):
        raise ModelLoadError(
            f"{p} is a safetensors file without the SDK's metadata: it holds weights without the "
            "architecture; pass the library's save_pretrained folder it belongs to, or a checkpoint dict "
            "{'arch', 'num_classes', 'state_dict'}"
        )
    family = get_family(str(meta["family"]))
    k = _classes(int(meta["num_classes"]), num_classes, "model")
    arch, config = str(meta["arch"]), dict(meta.get("config") or {})
    module = family.build(arch, k, config)
    check_state_fits(module, state, str(p), f"{family.name} '{arch}' with {k} classes")
    return _segmodel(Built(module, arch, k, config), family, "safetensors", meta, classifier)


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
        mean=tuple(meta.get("mean") or built.mean or IMAGENET_MEAN),  # type: ignore[arg-type]
        std=tuple(meta.get("std") or built.std or IMAGENET_STD),  # type: ignore[arg-type]
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
