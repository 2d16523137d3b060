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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stvm_sdk.boundary.outputs import atomic_write
from stvm_sdk.boundary.sniff import file_kind
from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.contract import check_contract, find_classifier, get_submodule
from stvm_sdk.models.families import (
    Built,
    Family,
    family_for_checkpoint,
    family_for_folder,
    family_for_module,
    get_family,
)
from stvm_sdk.models.families.base import check_state_fits, save_state

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
        return _load_folder(p, num_classes, classifier)
    kind = file_kind(p)
    if kind == "safetensors":
        return _load_safetensors(p, num_classes, classifier)
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


def _load_safetensors(p: Path, num_classes: int | None, classifier: str | None) -> SegModel:
    """The SDK's own file: weights plus the JSON metadata in the safetensors header."""
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            header = fh.metadata() or {}
            state = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (not a dict)
        meta = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else None
    except Exception as exc:
        raise ModelLoadError(f"cannot read {p}: a corrupt safetensors file ({_first_line(exc)})") from None
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


def _load_folder(p: Path, num_classes: int | None, classifier: str | None) -> SegModel:
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


def atomic_save(obj: Any, path: str | os.PathLike[str], saver: Any = None, *, then: str = "") -> Path:
    """Write ``obj`` with ``saver(obj, file)`` (default ``torch.save``) atomically; see
    :func:`~stvm_sdk.boundary.outputs.atomic_write` (a failed write is one ``OutputError`` line)."""
    return atomic_write(path, lambda fh: (saver or torch.save)(obj, fh), then=then)


def model_suffix(model: SegModel) -> str:
    """The file suffix :func:`save_model` writes ``model`` in by default: ``.safetensors`` for a model of
    a known family; ``.pt`` for TorchScript or a user's own module (a pickle)."""
    if model.family is None or isinstance(model.module, torch.jit.ScriptModule):
        return ".pt"
    return ".safetensors"


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
