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
from stvm_sdk.config import AdaptConfig, migrate_config
from stvm_sdk.errors import ConfigError
from stvm_sdk.methods.parts.options import options_of

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
        inherited = next((o for b in c.__mro__[1:] if (o := getattr(b, "Options", None)) is not None), None)
        if inherited is not None and not (isinstance(c.Options, type) and issubclass(c.Options, inherited)):
            raise TypeError(
                f"{c.__qualname__}.Options must subclass {inherited.__qualname__}: the base method's code "
                "reads those options"
            )
        if c.own_lr is not None and (
            c.Options is None or c.own_lr not in {f.name for f in dataclasses.fields(c.Options)}
        ):
            raise TypeError(
                f"{c.__qualname__}.own_lr names {c.own_lr!r}, which is not a field of its Options"
            )
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


def resolve(cfg: AdaptConfig) -> tuple[AdaptConfig, type[Method]]:
    """The method ``cfg`` names, and ``cfg`` with every ``[methods.<name>]`` section validated and the
    chosen method's filled with its defaults (what a run records, and what a resume compares).

    Raises:
        ConfigError: an unknown method, or a section with an unknown key or a wrong value.
    """
    cls = get_method(cfg.method)
    sections: dict[str, Any] = {}
    for name, section in cfg.methods.items():
        options = options_of(get_method(name), section)
        if options is not None:  # a method without options has no section
            sections[name] = dataclasses.asdict(options)
    options = options_of(cls, cfg.methods.get(cls.name))
    if options is not None:
        sections[cls.name] = dataclasses.asdict(options)
    return dataclasses.replace(cfg, methods=sections), cls


def read_options(method: str, given: dict[str, Any], lr_flag: str = "optim.lr") -> dict[str, Any]:
    """``given`` (the config keys a user set on the command line) as ``method`` reads them.

    An option the method does not read is never ignored in silence: the learning rate (``optim.lr``,
    e.g. a command's ``--lr``, named ``lr_flag`` in messages) moves to the method's own key
    (:meth:`~stvm_sdk.methods.base.Method.lr_key`) where it has one; another ``optim.*`` key of a method
    with its own optimiser, and any ``optim.*`` key of a method that does not train, is one line.

    Raises:
        ConfigError: a key the method does not read, or the learning rate given twice.
    """
    cls = get_method(method)
    lr_key = cls.lr_key()
    out = dict(given)
    for key in [k for k in given if k.startswith("optim.")]:
        if lr_key is None:
            what = lr_flag if key == "optim.lr" else key
            raise ConfigError(
                f"{what}: --method {method} does not train, so it reads no learning rate or optimiser "
                f"setting; drop {what}, or choose a method that trains"
            )
        if lr_key == "optim.lr":
            continue
        if key != "optim.lr":
            raise ConfigError(
                f"{key}: --method {method} runs its own optimiser and does not read {key}; drop it (its "
                f"learning rate is {lr_key})"
            )
        if lr_key in given and given[lr_key] != given[key]:
            raise ConfigError(
                f"{lr_flag} and {lr_key} both set the learning rate of --method {method}, to different "
                "values: give one"
            )
        out[lr_key] = out.pop(key)
    return out


def method_keys(method: str, own: dict[str, Any]) -> dict[str, Any]:
    """Keys inside a method's section (``{"metric.warmup": 40}``) as config keys of ``method``
    (``{"methods.stvm.metric.warmup": 40}``), leaving out those whose option the method does not have:
    for one plan shared by several methods (a benchmark's, a test's), each method gets what it reads."""
    options = get_method(method).Options
    known = {f.name for f in dataclasses.fields(options)} if options is not None else set()
    return {f"methods.{method}.{k}": v for k, v in own.items() if k.split(".")[0] in known}


def migrate(data: dict[str, Any]) -> AdaptConfig:
    """A run folder's recorded config of any schema as today's :class:`AdaptConfig`: schema-1 keys
    move into the method's section, and keys the method never read (the mean teacher's ``metric``
    section of an old run) are dropped, as they were ignored."""
    data = migrate_config(data)
    name = str(data.get("method", AdaptConfig.method))
    options = get_method(name).Options
    section = data["methods"].pop(name, {})
    known = {f.name for f in dataclasses.fields(options)} if options is not None else set()
    if options is not None:
        data["methods"][name] = {k: v for k, v in section.items() if k in known}
    return resolve(AdaptConfig.from_dict(data))[0]


def ladder() -> list[type[Method]]:
    """Every method class, in table order (``Method.order``: baselines first, STvM last)."""
    return sorted((get_method(n) for n in method_names()), key=lambda c: (c.order, c.name))


def reach(model: SegModel) -> dict[str, Reach]:
    """What each method (in table order) will update on ``model`` (not mutated), before any runs."""
    return {c.name: c.reach(model) for c in ladder()}
