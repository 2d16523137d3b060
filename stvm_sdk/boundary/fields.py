"""Fields read from files (model metadata, sidecars, library configs, checkpoints), checked where read.

A file the SDK reads is a schema: every field it uses has a type, a range, finiteness and a length.
:class:`Fields` checks one file's fields and raises the caller's :class:`~stvm_sdk.errors.StvmError`
subclass with one line that names the file, the field, what it holds and what is expected::

    f = Fields("model.onnx.json", ModelLoadError)
    k = f.integer("num_classes", meta.get("num_classes"), lo=1, hi=MAX_CLASSES)
    mean = f.numbers("mean", meta.get("mean"), length=3)
    std = f.numbers("std", meta.get("std"), length=3, positive=True)

A value shown in a message is cut to a few dozen characters, so a megabyte of junk in a field is a
short line, not a megabyte of error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NoReturn

from stvm_sdk.errors import StvmError

MAX_CLASSES = 65_536  # more output channels than any segmentation label set; refused beyond
MAX_SHOWN = 60  # characters of a bad value quoted in a message


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters (with the full length when cut)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class Fields:
    """The checks of one file's fields; ``where`` names the file in every message."""

    def __init__(self, where: object, error: type[StvmError]) -> None:
        self.where = shown(str(where), 200).strip("'\"")
        self.error = error

    def fail(self, name: str, value: Any, expected: str, then: str = "") -> NoReturn:
        tail = f"; {then}" if then else ""
        raise self.error(f"{self.where}: field '{name}' holds {shown(value)}; expected {expected}{tail}")

    def missing(self, name: str, expected: str) -> NoReturn:
        raise self.error(f"{self.where}: field '{name}' is missing; expected {expected}")

    def integer(self, name: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
        """An integer (not a bool; a float only if it is integral) in ``[lo, hi]``."""
        expected = _range("an integer", lo, hi)
        if value is None:
            self.missing(name, expected)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, value, expected)
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            self.fail(name, value, expected)
        v = int(value)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(name, value, expected)
        return v

    def number(
        self,
        name: str,
        value: Any,
        *,
        lo: float | None = None,
        hi: float | None = None,
        positive: bool = False,
    ) -> float:
        """A finite number in ``[lo, hi]`` (``> 0`` when ``positive``)."""
        expected = _range("a finite number" + (" > 0" if positive else ""), lo, hi)
        if value is None:
            self.missing(name, expected)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, value, expected)
        v = float(value)
        bad = not math.isfinite(v) or (positive and v <= 0)
        if bad or (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(name, value, expected)
        return v

    def numbers(
        self,
        name: str,
        value: Any,
        *,
        length: int | None = None,
        positive: bool = False,
        lo: float | None = None,
        hi: float | None = None,
    ) -> list[float]:
        """A list of finite numbers (``> 0`` when ``positive``), of ``length`` items when given."""
        what = "finite numbers" + (" > 0" if positive else "")
        expected = f"a list of {length} {what}" if length else f"a non-empty list of {what}"
        if value is None:
            self.missing(name, expected)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            self.fail(name, value, expected)
        if (length is not None and len(value) != length) or len(value) == 0:
            self.fail(name, value, expected)
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                self.fail(name, value, expected)
            if (positive and v <= 0) or (lo is not None and v < lo) or (hi is not None and v > hi):
                self.fail(name, value, _range(expected, lo, hi))
            out.append(float(v))
        return out

    def text(self, name: str, value: Any, *, choices: Sequence[str] | None = None, max_len: int = 200) -> str:
        """A non-empty string of at most ``max_len`` characters (one of ``choices`` when given)."""
        expected = f"one of {', '.join(choices)}" if choices else f"a name of 1-{max_len} characters"
        if value is None:
            self.missing(name, expected)
        if not isinstance(value, str) or not value or len(value) > max_len:
            self.fail(name, value, expected)
        if choices is not None and value not in choices:
            self.fail(name, value, expected)
        return value

    def texts(self, name: str, value: Any, *, length: int | None = None, max_len: int = 200) -> list[str]:
        """A list of strings (each at most ``max_len`` characters), of ``length`` items when given."""
        expected = f"a list of {length} names" if length is not None else "a list of names"
        if value is None:
            self.missing(name, expected)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            self.fail(name, value, expected)
        if length is not None and len(value) != length:
            self.fail(name, f"{len(value)} names", expected)
        if not all(isinstance(v, str) and len(v) <= max_len for v in value):
            self.fail(name, value, expected)
        return list(value)

    def mapping(self, name: str, value: Any) -> dict[str, Any]:
        """A JSON object (a dict with string keys)."""
        if value is None:
            self.missing(name, "an object")
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            self.fail(name, value, "an object")
        return value


def _range(what: str, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{what} in [{lo}, {hi}]"
    if lo is not None:
        return f"{what} >= {lo}"
    if hi is not None:
        return f"{what} <= {hi}"
    return what
