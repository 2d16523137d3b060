"""The method registry: every adaptation method by name, the built-in ones and users' own.

A built-in method is a module of this package: ``stvm_sdk/methods/<name>.py`` registers the method
``<name>``. Their names are read from the package folder without importing torch (the CLI's help and
config validation stay cheap); a module is imported the first time its method is asked for. Users
add methods from Python with :func:`register_method` (see ``examples/custom_method.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from stvm_sdk.boundary.args import suggest
from stvm_sdk.errors import ConfigError

if TYPE_CHECKING:
    from stvm_sdk.methods.base import Method, Reach
    from stvm_sdk.models.io import SegModel

M = TypeVar("M", bound="type[Method]")
_NOT_METHODS = frozenset({"base", "registry"})  # modules of this package that hold no method
_registered: dict[str, type[Method]] = {}


@functools.cache
def builtin_names() -> tuple[str, ...]:
    """Names of the built-in methods (the method modules of this package), sorted."""
    return tuple(
        sorted(
            m.name
            for m in pkgutil.iter_modules([str(Path(__file__).parent)])
            if not m.ispkg and not m.name.startswith("_") and m.name not in _NOT_METHODS
        )
    )


def method_names() -> tuple[str, ...]:
    """Every method a config may name: the built-in ones, then those registered from Python."""
    builtin = builtin_names()
    return builtin + tuple(n for n in _registered if n not in builtin)


def register_method(cls: M | None = None, *, name: str | None = None) -> Any:
    """Register a :class:`~stvm_sdk.methods.base.Method` subclass under ``name`` (default: ``cls.name``).

    Use as ``@register_method`` or ``register_method(MyMethod, name="mine")``. The name becomes a
    valid ``AdaptConfig(method=...)``; the method's ``Options`` dataclass (if any) its config section
    ``[methods.<name>]``.
    """

    def add(c: M) -> M:
        from stvm_sdk.methods.base import Method

        if not (isinstance(c, type) and issubclass(c, Method)):
            raise TypeError(f"register_method takes a subclass of stvm_sdk.methods.Method, got {c!r}")
        key = name or c.name
        if not key.isidentifier():
            raise ValueError(f"a method name must be an identifier (letters, digits, _), got {key!r}")
        if key in _registered and _registered[key] is not c:
            raise ValueError(
                f"a method named {key!r} is already registered ({_registered[key].__qualname__})"
            )
        if c.Options is not None and not dataclasses.is_dataclass(c.Options):
            raise TypeError(f"{c.__qualname__}.Options must be a dataclass (the method's config section)")
        c.name = key
        _registered[key] = c
        return c

    return add(cls) if cls is not None else add


def unregister_method(name: str) -> None:
    """Remove a method registered from Python (built-in methods stay)."""
    if name in builtin_names():
        raise ValueError(f"{name!r} is a built-in method and cannot be unregistered")
    _registered.pop(name, None)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (a built-in module is imported on first use).

    Raises:
        ConfigError: no method has that name (the line lists them and the nearest one).
    """
    if name not in _registered and name in builtin_names():
        importlib.import_module(f"stvm_sdk.methods.{name}")
        if name not in _registered:  # a broken built-in module: a bug, not a user error
            raise RuntimeError(f"stvm_sdk/methods/{name}.py does not register a method named {name!r}")
    if name not in _registered:
        names = method_names()
        raise ConfigError(f"unknown method '{name}': choose one of {', '.join(names)}{suggest(name, names)}")
    return _registered[name]


def ladder() -> list[type[Method]]:
    """Every method class, in table order (``Method.order``: baselines first, STvM last)."""
    return sorted((get_method(n) for n in method_names()), key=lambda c: (c.order, c.name))


def reach(model: SegModel) -> dict[str, Reach]:
    """What each method (in table order) will update on ``model`` (not mutated), before any runs."""
    return {c.name: c.reach(model) for c in ladder()}
