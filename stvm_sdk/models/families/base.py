"""What a model family adapter knows, and the one-line error for a family whose library is missing.

A family is a library people build segmentation models with (torchvision, segmentation_models_pytorch,
Hugging Face transformers). Its adapter turns the library's own files into a plain ``nn.Module`` whose
output is logits ``[B,K,h,w]`` plus the metadata the SDK needs (classifier head, normalisation, class
names), rebuilds that module from the metadata the SDK records, and writes the adapted weights back
in the library's own form. Adapters never import :mod:`stvm_sdk.models.io` (io imports them).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from torch import nn

from stvm_sdk.boundary.fields import ModelFields
from stvm_sdk.errors import ModelLoadError

MAX_JSON_BYTES = 64 << 20  # a library's config is kilobytes (a large id2label, a few MB); refused beyond


@dataclass
class Built:
    """A module a family built or loaded, with what the SDK records about it.

    ``config`` is JSON-serialisable and, with ``arch`` and ``num_classes``, enough for
    :meth:`Family.build` to rebuild the same architecture (weights come separately).
    """

    module: nn.Module
    arch: str
    num_classes: int
    config: dict[str, Any] = field(default_factory=dict)
    classifier: str | None = None
    mean: tuple[float, float, float] | None = None  # None: ImageNet
    std: tuple[float, float, float] | None = None
    class_names: list[str] | None = None


@dataclass(frozen=True)
class ExportNeeds:
    """What a model's ONNX export needs beyond the defaults (legacy exporter, opset 17, dynamic axes).

    ``static``: the graph is traced at a fixed input size (pooling to fixed bins on traced sizes);
    ``exporter`` / ``opset``: the exporter that can trace it (``None``: the default). ``reason`` says why,
    in a few words for the log line.
    """

    reason: str
    static: bool = False
    exporter: str | None = None
    opset: int | None = None


class Family:
    """One library's adapter. Subclasses set the class attributes, override what they read, and must
    override the methods named in ``REQUIRED`` (``register_family`` refuses a class that does not)."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("build", "classifier", "save_native")

    name: ClassVar[str] = ""
    library: ClassVar[str] = ""  # the import name of the library
    extra: ClassVar[str | None] = None  # the pip extra that installs it (None: a core dependency)
    title: ClassVar[str] = ""  # "a Hugging Face model", for error lines

    # --- the library --------------------------------------------------------------------------------

    @classmethod
    def require(cls) -> ModuleType:
        """Import the family's library, or raise one line naming the extra that installs it."""
        try:
            return importlib.import_module(cls.library)
        except ImportError:
            hint = f"pip install 'stvm_sdk[{cls.extra}]'" if cls.extra else f"pip install {cls.library}"
            raise ModelLoadError(f"this is {cls.title}, which needs {cls.library}: {hint}") from None

    # --- reading the library's own files -----------------------------------------------------------

    @classmethod
    def reads_folder(cls, path: Path) -> bool:
        """True when ``path`` (a folder) holds this library's own save (no library import needed)."""
        return False

    @classmethod
    def load_folder(cls, path: Path) -> Built:
        raise ModelLoadError(f"{path}: {cls.title} is not read from a folder")

    @classmethod
    def reads_checkpoint(cls, ckpt: dict[str, Any]) -> bool:
        """True when a ``torch.save``'d checkpoint dict describes one of this family's models."""
        return False

    @classmethod
    def checkpoint_spec(cls, ckpt: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``(arch, config)`` recorded in a checkpoint dict of this family."""
        return str(ckpt["arch"]), dict(ckpt.get("config") or {})

    @classmethod
    def check_config(
        cls, arch: str, num_classes: int, config: dict[str, Any], f: ModelFields, prefix: str = "config."
    ) -> dict[str, Any]:
        """``config`` as read from a model file (the SDK's metadata, a checkpoint dict), checked: what
        :meth:`build` may pass on to the library. ``f`` names the file in a refusal and ``prefix`` the
        field's place in it. The default passes a registered family's config on as it is."""
        return dict(config)

    @classmethod
    def recognise(cls, module: nn.Module) -> Built | None:
        """The module as this family's model when it is one (an in-memory model handed to ``adapt``).

        Only looks when the library is imported already: an object of its classes cannot exist otherwise.
        """
        return None

    # --- rebuilding from the SDK's metadata --------------------------------------------------------

    @classmethod
    def build(cls, arch: str, num_classes: int, config: dict[str, Any]) -> nn.Module:
        """A random-init module of ``arch`` with ``num_classes`` outputs (nothing is downloaded)."""
        raise NotImplementedError(f"{cls.__name__} must define build (Family.REQUIRED)")

    @classmethod
    def classifier(cls, module: nn.Module, arch: str) -> str:
        """The module path of the classifier head: its input is F(x), STvM's metric network copies it."""
        raise NotImplementedError(f"{cls.__name__} must define classifier (Family.REQUIRED)")

    @classmethod
    def export_needs(cls, arch: str) -> ExportNeeds | None:
        """What exporting ``arch`` to ONNX needs beyond the defaults; None: nothing."""
        return None

    # --- writing the library's own form ------------------------------------------------------------

    @classmethod
    def save_native(cls, module: nn.Module, arch: str, num_classes: int, config: dict[str, Any],
                    class_names: list[str], folder: Path) -> Path:  # fmt: skip
        """Write ``module`` so the family's library loads it back; return the folder."""
        raise NotImplementedError(f"{cls.__name__} must define save_native (Family.REQUIRED)")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when it is missing or not an object."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return None
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_json_strict(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when there is no such file; a file that is too large, not JSON,
    or not an object is refused in one line (a model folder's file is never silently ignored)."""
    if not path.is_file():
        return None
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelLoadError(
                f"{path} is {size:,} bytes, too large for a config (at most {MAX_JSON_BYTES:,})"
            )
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelLoadError(f"cannot read {path}: not a JSON file ({why})") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} holds a JSON {type(obj).__name__}; expected an object")
    return obj


def load_safetensors_into(module: nn.Module, path: Path, what: str, strip: str = "") -> None:
    """Load a safetensors state dict into ``module`` (strict), failing with one line."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"{path.parent} has no {path.name}: {what} needs its weights as safetensors")
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from None
    if strip:
        state = {k[len(strip) :] if k.startswith(strip) else k: v for k, v in state.items()}
    check_state_fits(module, state, f"{path}", what)


def check_state_fits(module: nn.Module, state: dict[str, Any], where: str, what: str) -> None:
    """``module.load_state_dict(state)`` (strict) with a one-line error on any mismatch."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        first = str(exc).strip().splitlines()[1:2] or [""]
        raise ModelLoadError(f"{where} does not fit {what}: {first[0].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{where} does not fit {what} "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def plain_state(state: dict[str, Any]) -> dict[str, Any]:
    """CPU, contiguous tensors with no shared storage (safetensors refuses tied weights; we copy them)."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def save_state(
    state: dict[str, Any], path: Path, metadata: dict[str, str] | None = None, *, then: str = ""
) -> Path:
    """Write a state dict as safetensors (atomically), with string ``metadata`` in its header."""
    from safetensors.torch import save

    from stvm_sdk.boundary.outputs import atomic_write

    data = save(plain_state(state), metadata=metadata)
    return atomic_write(path, lambda fh: fh.write(data), then=then)
