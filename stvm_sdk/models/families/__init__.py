"""The model-family registry: which library a model comes from, found the way methods are.

A built-in family is a module of this package (``torchvision``, ``smp``, ``hf``) that registers a
:class:`~stvm_sdk.models.families.base.Family` subclass; it is imported the first time it is asked
for, and its library only when a model of that family is read or built, so ``import stvm_sdk`` works
without transformers or segmentation_models_pytorch. Users add families with :func:`register_family`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, TypeVar

from stvm_sdk.errors import ModelLoadError
from stvm_sdk.models.families.base import Built, Family

__all__ = [
    "Built", "Family", "family_for_checkpoint", "family_for_folder", "family_for_module", "family_names",
    "get_family", "register_family",
]  # fmt: skip

BUILTIN = ("torchvision", "smp", "hf")  # also the order in which folders and checkpoints are tried
F = TypeVar("F", bound=type[Family])
_registered: dict[str, type[Family]] = {}


def register_family(cls: F) -> F:
    """Register a :class:`Family` subclass under ``cls.name`` (use as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Family)) or not cls.name.isidentifier():
        raise TypeError(f"register_family takes a Family subclass with an identifier name, got {cls!r}")
    missing = [m for m in Family.REQUIRED if getattr(cls, m).__func__ is getattr(Family, m).__func__]
    if missing:
        raise TypeError(f"family {cls.name!r} does not define {', '.join(missing)} (Family.REQUIRED)")
    if cls.name in _registered and _registered[cls.name] is not cls:
        raise ValueError(f"a family named {cls.name!r} is already registered")
    _registered[cls.name] = cls
    return cls


def family_names() -> tuple[str, ...]:
    """Built-in families, then those registered from Python."""
    return BUILTIN + tuple(n for n in _registered if n not in BUILTIN)


def get_family(name: str) -> type[Family]:
    """The family registered as ``name`` (a built-in module is imported on first use)."""
    if name not in _registered and name in BUILTIN:
        importlib.import_module(f"stvm_sdk.models.families.{name}")
    if name not in _registered:
        raise ModelLoadError(f"unknown model family '{name}': known are {', '.join(family_names())}")
    return _registered[name]


def family_for_folder(path: Path) -> type[Family] | None:
    """The family whose own save ``path`` (a folder) is, or None."""
    return next((f for f in map(get_family, family_names()) if f.reads_folder(path)), None)


def family_for_module(module: Any) -> tuple[type[Family], Built] | None:
    """The family an in-memory module belongs to, with what it records, or None (a user's own module)."""
    for family in map(get_family, family_names()):
        built = family.recognise(module)
        if built is not None:
            return family, built
    return None


def family_for_checkpoint(ckpt: dict[str, Any]) -> type[Family] | None:
    """The family a checkpoint dict names (its ``family`` key, else recognised by its fields), or None."""
    if "family" in ckpt:
        return get_family(str(ckpt["family"]))
    return next((f for f in map(get_family, family_names()) if f.reads_checkpoint(ckpt)), None)
