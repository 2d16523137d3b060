"""An :class:`~stvm_sdk.config.AdaptConfig` written as the TOML file ``--config`` reads (`stvm config`).

Every field gets one comment: the comment written beside (or above) it in the dataclass source, so the
file explains what the code documents; the few fields without one in the source are described here.
A field that is unset (None) is written as a comment, since TOML has no null: leaving it out reads
back as the same default.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import textwrap
import tokenize
from typing import Any

from stvm_sdk.config import AdaptConfig

# Fields whose dataclass source carries no comment of its own.
_FALLBACK = {
    "optim.head_lr_mult": "learning-rate multiplier of the classifier head (and the metric network)",
}


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the comments beside a dataclass field or in the lines just above it,
    in ``cls`` or the dataclass it extends (an ``Options`` subclass keeps its base's comments)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_comments(klass))
    return out


def _own_comments(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    lines = source.splitlines()
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if name not in names or name in out or not line.startswith("    ") or line.startswith("     "):
            continue
        above: list[str] = []
        j = i - 1
        while j in comments and j not in code_lines:
            above.insert(0, comments[j])
            j -= 1
        parts = above + ([comments[i]] if i in comments else [])
        if parts:
            out[name] = " ".join(parts)
    return out


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def _section(obj: Any, prefix: str, out: list[str]) -> None:
    """The fields of ``obj`` holding values, one comment each; then its sub-sections as tables."""
    comments = field_comments(type(obj))
    subsections = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "methods" and not prefix:
            continue
        if dataclasses.is_dataclass(value):
            subsections.append((f.name, value))
            continue
        key = prefix + f.name
        comment = (
            _FALLBACK.get(key) or comments.get(f.name) or f"{f.name} of {prefix.rstrip('.') or 'the run'}"
        )
        out += [f"# {line}" for line in textwrap.wrap(comment, 98)]
        out.append(
            f"# {f.name} = ...  (unset by default)" if value is None else f"{f.name} = {_value(value)}"
        )
    for name, value in subsections:
        doc = (type(value).__doc__ or "").strip().splitlines()[0]
        out += ["", f"[{prefix}{name}]  # {doc}"]
        _section(value, f"{prefix}{name}.", out)


def config_to_toml(cfg: AdaptConfig | None = None) -> str:
    """``cfg`` (default: ``AdaptConfig()``) as TOML with one comment per field, its method's section
    ``[methods.<name>]`` filled in; ``AdaptConfig.from_file`` reads it back to the same resolved config."""
    from stvm_sdk.methods.parts.options import options_of
    from stvm_sdk.methods.registry import get_method, resolve

    cfg, _ = resolve(cfg or AdaptConfig())
    out = ["# stvm adapt configuration: every field with its value; pass it with --config FILE.toml.", ""]
    _section(cfg, "", out)
    for name, section in cfg.methods.items():
        options = options_of(get_method(name), section)
        if options is None:
            continue
        doc = (type(options).__doc__ or f"options of method {name}").strip().splitlines()[0]
        out += ["", f"[methods.{name}]  # {doc}"]
        _section(options, f"methods.{name}.", out)
    return "\n".join(out) + "\n"
