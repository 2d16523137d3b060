"""How `--help` shows option types: words (INTEGER, PATH, TEXT), choices as [a|b], nothing for a flag,
and argument names without braces in the usage line (Typer's own forms are `<int>`, `<bool>`, `{model}`).

Typer 0.29 renders these through ``display_type_rich`` and ``_usage_display_name``; older Typer (click
based) already prints words, so each hook is applied only where that method exists.
"""

from __future__ import annotations

import re
from typing import Any

_WORDS = {"int": "INTEGER", "float": "NUMBER", "str": "TEXT", "path": "PATH", "Path": "PATH", "file": "FILE",
          "directory": "DIR", "int range": "INTEGER", "float range": "NUMBER"}  # fmt: skip


def as_word(typer_type: str | None) -> str | None:
    """``"<int>"`` -> ``"INTEGER"``, ``"<a|b>"`` -> ``"[a|b]"``, ``"<list[Path]>"`` -> ``"PATH..."``."""
    if not typer_type or not (typer_type.startswith("<") and typer_type.endswith(">")):
        return typer_type
    inner = typer_type[1:-1]
    if inner == "bool":
        return None
    if m := re.fullmatch(r"list\[(.+)\]", inner):
        word = as_word(f"<{m.group(1)}>")
        return f"{word}..." if word else None
    if inner in _WORDS:
        return _WORDS[inner]
    return f"[{inner}]" if "|" in inner else inner.upper()


def install() -> None:
    """Apply the forms above to every Typer parameter's help (idempotent)."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # pragma: no cover - Typer without these classes
        return
    for cls in (TyperOption, TyperArgument):
        original = cls.__dict__.get("display_type_rich") or getattr(cls, "display_type_rich", None)
        if original is None or getattr(original, "_stvm_words", False):
            continue

        def display_type_rich(self: Any, ctx: Any, _original: Any = original) -> str | None:
            if getattr(self, "is_flag", False) or getattr(self, "count", False):
                return None
            if self.metavar is not None:
                return self.metavar
            return as_word(_original(self, ctx))

        display_type_rich._stvm_words = True  # type: ignore[attr-defined]
        cls.display_type_rich = display_type_rich  # type: ignore[method-assign]
    usage = getattr(TyperArgument, "_usage_display_name", None)
    if usage is not None and not getattr(usage, "_stvm_words", False):

        def _usage_display_name(self: Any) -> str:
            name = self.display_name_raw.upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        _usage_display_name._stvm_words = True  # type: ignore[attr-defined]
        TyperArgument._usage_display_name = _usage_display_name  # type: ignore[method-assign]
    rich_name = getattr(TyperArgument, "_rich_display_name", None)
    if rich_name is not None and not getattr(rich_name, "_stvm_words", False):

        def _rich_display_name(self: Any) -> str:
            return self.display_name_raw.upper()

        _rich_display_name._stvm_words = True  # type: ignore[attr-defined]
        TyperArgument._rich_display_name = _rich_display_name  # type: ignore[method-assign]
