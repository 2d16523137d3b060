"""Command-line options generated from the config dataclasses, and ``key=value`` overrides.

A flag that sets a config field (``--iters`` is ``run.iters``) is declared here once as a
:class:`ConfigOption`: its type, default and help text are read from the dataclass field (its type
hint, its default, the comment beside it), so they cannot drift from the config. Any other field is
set with ``key=value`` after the options, as Ultralytics users expect::

    stvm adapt --source m.pt --target f/ optim.lr=1e-4 methods.stvm.mix.tau=0.6 data.crop=none

Values are read as JSON (``1e-4``, ``true``, ``[64, 128]``, ``"text"``); ``none``/``null`` unsets a
field; anything else is a string. The command receives the parsed values as one ``overrides`` dict of
dotted keys.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ConfigOption:
    """A flag for one field of a config dataclass tree (``root``, e.g. AdaptConfig or StreamConfig)."""

    flag: str  # "--iters"
    key: str  # "run.iters": the field, dotted from the root dataclass
    root: type
    extra_help: str = ""  # appended to the field's comment (e.g. the choices)
    prefix: str = ""  # of the key in ``overrides`` ("stream." for a StreamConfig field)
    short: str | None = None  # "-m"

    @property
    def param(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def field(self) -> tuple[type, dataclasses.Field[Any], Any]:
        """(the dataclass holding the field, the field, its resolved type)."""
        cls: Any = self.root
        *parents, leaf = self.key.split(".")
        for part in parents:
            cls = typing.get_type_hints(cls)[part]
        fld = next(f for f in dataclasses.fields(cls) if f.name == leaf)
        return cls, fld, typing.get_type_hints(cls)[leaf]

    def default(self) -> Any:
        _, fld, _ = self.field()
        if fld.default is not dataclasses.MISSING:
            return fld.default
        return fld.default_factory()  # type: ignore[misc,operator]

    def is_hw(self) -> bool:
        """A ``(H, W)`` field: typed as ``HxW`` on the command line (``none`` for None)."""
        tp = self.field()[2]
        args = [a for a in typing.get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
        return len(args) == 1 and typing.get_origin(args[0]) is tuple

    def cli_type(self) -> type:
        if self.is_hw():
            return str
        tp = self.field()[2]
        if _is_union(tp):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        return tp if tp in (int, float, str, bool) else str

    def help(self) -> str:
        from stvm_sdk.config_toml import field_comments

        cls, fld, _ = self.field()
        text = field_comments(cls).get(fld.name, fld.name.replace("_", " "))
        text = text[:1].upper() + text[1:]
        return f"{text}{self.extra_help}" + ("" if text.endswith(".") or self.extra_help else ".")

    def shown_default(self) -> str:
        value = self.default()
        if self.is_hw():
            return "none" if value is None else f"{value[0]}x{value[1]}"
        return "none" if value is None else str(value)

    def parse(self, value: Any) -> Any:
        """The config value of what was typed (``HxW`` -> ``(H, W)``; ``none`` -> None), checked as the
        config checks its field (finite, in its limits: ``--batch-size`` at most its count limit, each
        side of ``--crop`` at most ``MAX_SIDE``), with the flag named in the one-line error."""
        from stvm_sdk.boundary.args import parse_hw
        from stvm_sdk.config import check_value

        value = parse_hw(value, self.flag) if self.is_hw() else value
        return value if value is None else check_value(self.field()[2], value, self.key, self.flag)

    def option(self) -> Any:
        flags = [self.flag, *([self.short] if self.short else [])]
        return typer.Option(None, *flags, help=self.help(), show_default=self.shown_default())


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


OVERRIDES_HELP = (
    "Any config field as KEY=VALUE, e.g. optim.lr=1e-4 methods.stvm.mix.tau=0.6 data.crop=none "
    "(`stvm config` lists every key; values read as JSON)."
)


def with_config_options(*specs: ConfigOption, overrides_arg: bool = True) -> Callable[[F], F]:
    """Add the flags of ``specs`` (and, with ``overrides_arg``, trailing ``KEY=VALUE`` arguments) to a
    Typer command; the command gets every value given as ``overrides: dict[str, Any]`` of dotted keys
    (``{"run.iters": 10}``; flags left out are absent)."""

    def deco(func: F) -> F:
        sig = inspect.signature(func)
        params = [p for p in sig.parameters.values() if p.name != "overrides"]
        added = [
            inspect.Parameter(
                s.param, inspect.Parameter.KEYWORD_ONLY, default=s.option(), annotation=s.cli_type()
            )
            for s in specs
        ]
        if overrides_arg:
            arg = typer.Argument(None, metavar="[KEY=VALUE]...", help=OVERRIDES_HELP, show_default=False)
            added.append(
                inspect.Parameter(
                    "key_values", inspect.Parameter.KEYWORD_ONLY, default=arg, annotation=list[str]
                )
            )

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides: dict[str, Any] = {}
            for s in specs:
                value = kwargs.pop(s.param, None)
                if value is not None:
                    overrides[s.prefix + s.key] = s.parse(value)
            overrides.update(parse_key_values(kwargs.pop("key_values", None) or []))
            return func(*args, overrides=overrides, **kwargs)

        hints = {p.name: p.annotation for p in added}
        wrapper.__annotations__ = {**func.__annotations__, **hints}
        wrapper.__signature__ = sig.replace(parameters=[*params, *added])  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return deco


def count_option(value: int | None, flag: str, *, lo: int = 1, hi: int | None = None) -> int | None:
    """``value`` of the integer option ``flag`` (None when not given) if it is in ``[lo, hi]``; else one
    :class:`~stvm_sdk.errors.ConfigError` line naming the flag and the range (``--threads -1``).

    Typer's own ``min=`` prints a usage panel; a command calls this first thing instead, inside
    :func:`~stvm_sdk.cli.common.user_errors`, so the problem is one ``error:`` line."""
    from stvm_sdk.boundary.args import check_int

    return check_int(value, flag, lo, hi)


def parse_key_values(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-4", "data.crop=none"]`` -> ``{"optim.lr": 1e-4, "data.crop": None}``."""
    from stvm_sdk.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key or not all(part.isidentifier() for part in key.split(".")):
            raise ConfigError(
                f"'{item[:80]}' is not KEY=VALUE: set a config field as e.g. optim.lr=1e-4 "
                "(`stvm config` lists every key)"
            )
        out[key] = parse_value(text)
    return out


def parse_value(text: str) -> Any:
    """A typed value: JSON where it reads as JSON, None for none/null, else the text itself."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
