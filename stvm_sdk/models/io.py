"""Load and save segmentation models in the formats the SDK accepts.

Accepted inputs:
- a **checkpoint dict** ``{"arch", "num_classes", "state_dict", optional "classifier", "mean", "std",
  "class_names"}`` where ``arch`` names a torchvision segmentation model (loaded with
  ``torch.load(weights_only=True)``, so it cannot run code);
- a **TorchScript archive** (metadata in its ``stvm.json`` extra file when we wrote it);
- a **pickled nn.Module**, only with ``trust_pickle=True`` (unpickling runs code from the file).

Outputs follow the same formats, written atomically (temporary name, then rename).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stvm_sdk.boundary.outputs import atomic_write
from stvm_sdk.boundary.sniff import file_kind
from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.contract import check_contract, find_classifier, get_submodule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip
CHECKPOINT_FORMAT = "stvm_sdk.checkpoint/1"
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
    kind: str = "module"  # checkpoint | torchscript | pickle | module

    def __post_init__(self) -> None:
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
        return replace(self, module=copy.deepcopy(self.module), class_names=list(self.class_names))

    def metadata(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "classifier": self.classifier,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
        }


def build_torchvision(arch: str, num_classes: int, *, aux_loss: bool = False) -> nn.Module:
    """Build a torchvision segmentation model with random weights (no download)."""
    import torchvision

    if not arch.startswith(TORCHVISION_FAMILIES):
        raise ModelLoadError(
            f"unknown arch '{arch}': use a torchvision segmentation model "
            "(fcn_*, deeplabv3_*, lraspp_*) or save the model as TorchScript"
        )
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if not arch.startswith("lraspp_"):
        kwargs["aux_loss"] = aux_loss
    try:
        return torchvision.models.get_model(arch, **kwargs)
    except ValueError:
        raise ModelLoadError(f"torchvision has no segmentation model '{arch}'") from None


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
) -> SegModel:
    """Wrap an ``nn.Module`` after checking the model contract (output ``[B,K,h,w]``)."""
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"expected an nn.Module, got {type(module).__name__}")
    k = check_contract(module, num_classes)
    if classifier is not None and not isinstance(module, torch.jit.ScriptModule):
        get_submodule(module, classifier)  # fail now, with the module names, not mid-run
    elif not isinstance(module, torch.jit.ScriptModule):
        classifier = find_classifier(module, k, probe=torch.zeros(1, 3, 64, 128))
    return SegModel(module, k, classifier, tuple(mean), tuple(std), list(class_names or []), arch, kind)  # type: ignore[arg-type]


def load_model(
    path: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    classifier: str | None = None,
) -> SegModel:
    """Load a checkpoint dict, TorchScript archive or (opt-in) pickled module from ``path``.

    The file's kind is read from its first bytes (:func:`~stvm_sdk.boundary.sniff.file_kind`) before
    anything parses it, so a wrong file gets a line saying what it is, and nothing is unpickled
    without ``trust_pickle``.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    kind = file_kind(p)
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
        return _from_checkpoint(obj, p, num_classes, classifier)
    raise ModelLoadError(
        f"{p} holds a {type(obj).__name__}, not a model: expected a checkpoint dict with "
        "'arch', 'num_classes' and 'state_dict', a TorchScript archive, or a pickled nn.Module"
    )


_WRONG_KIND = {
    "onnx": "{p} is an ONNX graph, which holds no trainable PyTorch modules: adapting, training and "
    "exporting need the .pt model it was exported from; "
    "`stvm eval`, `info`, `bench` and `predict` read .onnx",
    "safetensors": "{p} is a safetensors file: it holds weights without the architecture; save a checkpoint "
    "dict {{'arch', 'num_classes', 'state_dict'}} with torch.save instead",
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
                f"cannot read {p}: a corrupt PyTorch checkpoint ({_first_line(exc)})"
            ) from None
    except Exception as exc:  # corrupt members of a valid archive, ...
        raise ModelLoadError(f"cannot read {p}: a corrupt PyTorch checkpoint ({_first_line(exc)})") from None
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
        raise ModelLoadError(f"cannot unpickle {p}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def non_finite(module: nn.Module) -> list[str]:
    """Names of the parameters and floating buffers of ``module`` holding NaN or inf."""
    return [
        name
        for name, t in module.state_dict().items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def require_finite(model: SegModel, doing: str) -> None:
    """Refuse a model with NaN/inf weights before ``doing`` it (e.g. "export it")."""
    bad = non_finite(model.module)
    if bad:
        raise ModelLoadError(
            f"the model has NaN or inf values in {len(bad)} tensor(s) (e.g. {', '.join(bad[:3])}): "
            f"refusing to {doing}; use the last good checkpoint or retrain"
        )


def is_sdk_checkpoint(path: Path) -> bool:
    """True for a checkpoint dict this SDK wrote (its ``format`` tag), read without unpickling code."""
    if file_kind(path) != "torch_zip":
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
        raise ModelLoadError(f"cannot load TorchScript archive {p}: {exc}") from None
    meta = json.loads(extra["stvm.json"]) if extra["stvm.json"] else {}
    return from_module(
        module,
        num_classes=num_classes or meta.get("num_classes"),
        classifier=classifier or meta.get("classifier"),
        mean=tuple(meta.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(meta.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        class_names=meta.get("class_names"),
        kind="torchscript",
    )


def _from_checkpoint(
    ckpt: dict[str, Any], p: Path, num_classes: int | None, classifier: str | None
) -> SegModel:
    missing = [k for k in ("arch", "num_classes") if k not in ckpt]
    if missing:
        raise ModelLoadError(f"checkpoint {p} lacks {missing}: it needs 'arch', 'num_classes', 'state_dict'")
    k = int(ckpt["num_classes"])
    if num_classes is not None and num_classes != k:
        raise ModelLoadError(f"the checkpoint has {k} classes but --num-classes is {num_classes}")
    state = ckpt["state_dict"]
    aux = any(key.startswith("aux_classifier.") for key in state)
    module = build_torchvision(str(ckpt["arch"]), k, aux_loss=aux)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        first = str(exc).strip().splitlines()[1:2] or [""]
        raise ModelLoadError(
            f"checkpoint {p} does not fit arch '{ckpt['arch']}' with {k} classes: {first[0].strip()}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"checkpoint {p} does not fit arch '{ckpt['arch']}' with {k} classes "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    return from_module(
        module,
        num_classes=k,
        classifier=classifier or ckpt.get("classifier"),
        mean=tuple(ckpt.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(ckpt.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        class_names=ckpt.get("class_names"),
        arch=str(ckpt["arch"]),
        kind="checkpoint",
    )


def atomic_save(obj: Any, path: str | os.PathLike[str], saver: Any = None, *, then: str = "") -> Path:
    """Write ``obj`` with ``saver(obj, file)`` (default ``torch.save``) atomically; see
    :func:`~stvm_sdk.boundary.outputs.atomic_write` (a failed write is one ``OutputError`` line)."""
    return atomic_write(path, lambda fh: (saver or torch.save)(obj, fh), then=then)


def save_model(model: SegModel, path: str | os.PathLike[str], *, then: str = "") -> Path:
    """Save in the deliverable format: checkpoint dict when ``arch`` is known, else TorchScript/pickle.

    ``then`` ends the error line of a failed write (what the user can do next).
    """
    module = model.module
    if isinstance(module, torch.jit.ScriptModule):
        return save_torchscript(model, path, then=then)
    if model.arch is None:
        # A user's own nn.Module: only a full pickle can rebuild it (loading needs --trust-pickle).
        return atomic_save(module, path, then=then)
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
