"""Load and save segmentation models in the formats the SDK accepts.

Accepted inputs:
- the **SDK's own file**: safetensors whose header metadata (``__metadata__["stvm_sdk"]``, JSON) names
  the model's family, arch and build config, classes, classifier and normalisation; no code runs;
- a **checkpoint dict** ``{"arch", "num_classes", "state_dict", optional "family", "config",
  "classifier", "mean", "std", "class_names"}`` of a known family (a torchvision segmentation model,
  or smp with ``encoder_name``), loaded with ``torch.load(weights_only=True)``, so it cannot run code;
- a **library's own folder**: smp's or Hugging Face's ``save_pretrained`` (config.json + safetensors);
- a **TorchScript archive** (metadata in its ``stvm.json`` extra file when we wrote it);
- a **pickled nn.Module**, only with ``trust_pickle=True`` (unpickling runs code from the file).

Model families (:mod:`stvm_sdk.models.families`) know how to build, read and write their models.
Outputs are written atomically (temporary name, then rename): safetensors for a ``.safetensors``
path, a checkpoint dict for ``.pt``; a model with no family only as a pickle or TorchScript.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stvm_sdk.boundary.fields import MAX_CLASSES, ModelFields
from stvm_sdk.boundary.outputs import atomic_write
from stvm_sdk.boundary.sniff import file_kind
from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.families.base import save_state
from stvm_sdk.models.family_io import (
    first_line,
    from_checkpoint,
    load_folder,
    load_safetensors,
    model_suffix,
    recorded_fields,
    save_native,
    wrap_module,
)
from stvm_sdk.models.segmodel import (
    CHECKPOINT_FORMAT,
    CITYSCAPES_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    METADATA_KEY,
    TORCHVISION_FAMILIES,
    SegModel,
    build_torchvision,
    from_module,
    non_finite,
    require_finite,
)

# What callers have imported from here since before the split into segmodel / family_io.
__all__ = [
    "CHECKPOINT_FORMAT", "CITYSCAPES_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "METADATA_KEY",
    "TORCHVISION_FAMILIES", "SegModel", "atomic_save", "build_torchvision", "from_module",
    "is_sdk_checkpoint", "load_model", "model_suffix", "non_finite", "require_finite", "save_model",
    "save_native", "save_torchscript", "wrap_module",
]  # fmt: skip


def load_model(
    path: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    classifier: str | None = None,
) -> SegModel:
    """Load the SDK's safetensors, a checkpoint dict, a library's folder, TorchScript or (opt-in) a pickle.

    A folder is read by the family whose own save it is (smp or Hugging Face ``save_pretrained``).
    The file's kind is read from its first bytes (:func:`~stvm_sdk.boundary.sniff.file_kind`) before
    anything parses it, so a wrong file gets a line saying what it is, and nothing is unpickled
    without ``trust_pickle``.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if p.is_dir():
        return load_folder(p, num_classes, classifier)
    kind = file_kind(p)
    if kind == "safetensors":
        return load_safetensors(p, num_classes, classifier)
    if kind == "torchscript":
        return _load_torchscript(p, num_classes, classifier)
    if kind in ("torch_zip", "torch_legacy"):
        obj = _torch_load(p, trust_pickle)
    elif kind == "pickle":
        obj = _unpickle(p, trust_pickle, lambda fh: pickle.load(fh))  # noqa: S301 (opt-in)
    else:
        raise ModelLoadError(_WRONG_KIND[kind].format(p=p))
    if isinstance(obj, nn.Module):
        return from_module(obj, num_classes=num_classes, classifier=classifier, kind="pickle")
    if isinstance(obj, dict) and "state_dict" in obj:
        return from_checkpoint(obj, p, num_classes, classifier)
    raise ModelLoadError(
        f"{p} holds a {type(obj).__name__}, not a model: expected a checkpoint dict with "
        "'arch', 'num_classes' and 'state_dict', a TorchScript archive, or a pickled nn.Module"
    )


_WRONG_KIND = {
    "onnx": "{p} is an ONNX graph, which holds no trainable PyTorch modules: adapting, training and "
    "exporting need the .pt model it was exported from; "
    "`stvm eval`, `info`, `bench` and `predict` read .onnx",
    "empty": "{p} is empty (0 bytes): save or copy the model again",
    "truncated_zip": "{p} is a truncated or corrupt archive (an interrupted save or copy?): "
    "save or copy it again",
    "unknown": "{p} is not a model file: expected a PyTorch checkpoint dict (.pt), a TorchScript archive, "
    "or a pickled nn.Module",
}


def _torch_load(p: Path, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; a full unpickle only with ``trust_pickle``."""
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise ModelLoadError(
                f"cannot read {p}: a corrupt PyTorch checkpoint ({first_line(exc)})"
            ) from None
    except Exception as exc:  # corrupt members of a valid archive, ...
        raise ModelLoadError(f"cannot read {p}: a corrupt PyTorch checkpoint ({first_line(exc)})") from None
    return _unpickle(p, trust_pickle, lambda fh: torch.load(fh, map_location="cpu", weights_only=False))


def _unpickle(p: Path, trust_pickle: bool, load: Any) -> Any:
    """Run ``load(file)`` on a pickle, only with the caller's opt-in; every failure is one line."""
    if not trust_pickle:
        raise ModelLoadError(
            f"{p} is a pickled Python object; loading it runs code from the file. "
            "If you trust it, pass --trust-pickle (trust_pickle=True); better, save a checkpoint dict"
        )
    try:
        with open(p, "rb") as fh:
            return load(fh)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"cannot unpickle {p}: it needs the Python module '{exc.name}', which is not importable here: "
            "install or add to PYTHONPATH the code that defines the model, or save a checkpoint dict"
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"cannot unpickle {p}: {first_line(exc)}") from None


def is_sdk_checkpoint(path: Path) -> bool:
    """True for a model file this SDK wrote (its ``format`` tag), read without unpickling code."""
    kind = file_kind(path)
    if kind == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get(METADATA_KEY, "{}"))
        except Exception:
            return False
        return isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT
    if kind != "torch_zip":
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def _load_torchscript(p: Path, num_classes: int | None, classifier: str | None) -> SegModel:
    extra = {"stvm.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still supported
            module = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ModelLoadError(f"cannot load TorchScript archive {p}: {first_line(exc)}") from None
    f = ModelFields(f"{p} (stvm.json)", ModelLoadError)
    try:
        meta = json.loads(extra["stvm.json"]) if extra["stvm.json"] else {}
    except ValueError as exc:
        raise ModelLoadError(f"cannot read {p}: its stvm.json is not JSON ({first_line(exc)})") from None
    if not isinstance(meta, dict):
        f.fail("stvm.json", meta, "an object")
    stated = meta.get("num_classes")
    if stated is not None:
        stated = f.integer("num_classes", stated, lo=1, hi=MAX_CLASSES)
    recorded = recorded_fields(meta, f, None)
    seg = from_module(
        module,
        num_classes=num_classes,
        classifier=classifier or recorded.get("classifier"),
        mean=recorded.get("mean", IMAGENET_MEAN),
        std=recorded.get("std", IMAGENET_STD),
        kind="torchscript",
    )
    if stated is not None and stated != seg.num_classes:
        f.fail("num_classes", stated, f"{seg.num_classes}, the channels the model outputs")
    names = recorded.get("class_names")
    if names is not None:
        seg = replace(seg, class_names=f.texts("class_names", names, length=seg.num_classes))
    return seg


def atomic_save(obj: Any, path: str | os.PathLike[str], saver: Any = None, *, then: str = "") -> Path:
    """Write ``obj`` with ``saver(obj, file)`` (default ``torch.save``) atomically; see
    :func:`~stvm_sdk.boundary.outputs.atomic_write` (a failed write is one ``OutputError`` line)."""
    return atomic_write(path, lambda fh: (saver or torch.save)(obj, fh), then=then)


def save_model(model: SegModel, path: str | os.PathLike[str], *, then: str = "") -> Path:
    """Save in the deliverable format, chosen by the model and the path's suffix.

    - a model of a known family: ``.safetensors`` -> weights plus the JSON metadata in the header (no
      pickle anywhere); any other suffix -> a checkpoint dict (read back with ``weights_only=True``);
    - TorchScript: a TorchScript archive; a user's own ``nn.Module``: a pickle (needs --trust-pickle).

    ``then`` ends the error line of a failed write (what the user can do next).
    """
    module = model.module
    safetensors = Path(path).suffix.lower() == ".safetensors"
    if model_suffix(model) == ".pt" and safetensors:
        raise ModelLoadError(
            f"{path}: only a model of a known family (torchvision, smp, hf) is written as safetensors; "
            "save this one under a .pt name (TorchScript or a pickle)"
        )
    if isinstance(module, torch.jit.ScriptModule):
        return save_torchscript(model, path, then=then)
    if model.family is None:
        # A user's own nn.Module: only a full pickle can rebuild it (loading needs --trust-pickle).
        return atomic_save(module, path, then=then)
    if safetensors:
        return save_state(
            module.state_dict(), Path(path), {METADATA_KEY: json.dumps(model.metadata())}, then=then
        )
    ckpt = model.metadata()
    ckpt["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    return atomic_save(ckpt, path, then=then)


def save_torchscript(
    model: SegModel, path: str | os.PathLike[str], example_hw: tuple[int, int] = (64, 128), *, then: str = ""
) -> Path:
    """Save a TorchScript archive (script, else trace) with the metadata in ``stvm.json``."""
    module = copy.deepcopy(model.module).cpu().eval()
    extra = {"stvm.json": json.dumps(model.metadata())}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still supported
        if not isinstance(module, torch.jit.ScriptModule):
            try:
                module = torch.jit.script(module)
            except Exception:
                with torch.no_grad():
                    module = torch.jit.trace(
                        module, torch.zeros(1, 3, *example_hw), strict=False, check_trace=False
                    )
        return atomic_save(
            module, path, saver=lambda m, f: torch.jit.save(m, f, _extra_files=extra), then=then
        )
