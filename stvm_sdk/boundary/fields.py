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

    def document(self, value: Any) -> dict[str, Any]:
        """The file's whole content: a JSON object (a dict with string keys)."""
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise self.error(f"{self.where}: holds {shown(value)}; expected an object of fields")
        return value

    def tensor(
        self,
        name: str,
        value: Any,
        *,
        shape: Sequence[int | None] | None = None,
        floating: bool | None = None,
        finite: bool = True,
    ) -> Any:
        """A torch tensor of ``shape`` (None: any size on that axis), floating or integral when
        ``floating`` says, with finite values when ``finite``."""
        import torch  # here: the other checks stay torch-free

        dims = "x".join("N" if d is None else str(d) for d in shape) if shape is not None else ""
        kind = {None: "a", True: "a floating", False: "an integer"}[floating]
        expected = f"{kind} tensor" + (f" of shape [{dims}]" if dims else "")
        expected += " of finite values" if finite else ""
        if value is None:
            self.missing(name, expected)
        if not isinstance(value, torch.Tensor):
            self.fail(name, value, expected)
        if shape is not None and (
            value.dim() != len(shape)
            or any(d is not None and s != d for s, d in zip(value.shape, shape, strict=True))
        ):
            self.fail(name, f"a tensor of shape {list(value.shape)}", expected)
        if floating is not None and value.is_floating_point() != floating:
            self.fail(name, f"a {value.dtype} tensor", expected)
        if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            self.fail(name, "NaN or inf values", expected)
        return value


def _range(what: str, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{what} in [{lo}, {hi}]"
    if lo is not None:
        return f"{what} >= {lo}"
    if hi is not None:
        return f"{what} <= {hi}"
    return what


class FileFields(Fields):
    """:class:`Fields` with the checks of nested JSON files: booleans, integer lists, hex digests, and
    fields that must agree with another source (``where`` names the file in every message)."""

    def boolean(self, name: str, value: Any) -> bool:
        """``true`` or ``false`` (not 0/1, not a string)."""
        if value is None:
            self.missing(name, "true or false")
        if not isinstance(value, bool):
            self.fail(name, value, "true or false")
        return value

    def integers(
        self,
        name: str,
        value: Any,
        *,
        length: int | None = None,
        lo: int | None = None,
        hi: int | None = None,
    ) -> list[int]:
        """A list of integers (not bools) in ``[lo, hi]``, of ``length`` items when given."""
        expected = _range(
            f"a list of {length} integers" if length else "a non-empty list of integers", lo, hi
        )
        if value is None:
            self.missing(name, expected)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
            self.fail(name, value, expected)
        if length is not None and len(value) != length:
            self.fail(name, value, expected)
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(name, value, expected)
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                self.fail(name, value, expected)
        return list(value)

    def hexdigest(self, name: str, value: Any, *, length: int = 64) -> str:
        """A lowercase hexadecimal digest of ``length`` characters (64: a SHA-256)."""
        expected = f"{length} lowercase hexadecimal characters"
        if value is None:
            self.missing(name, expected)
        if (
            not isinstance(value, str)
            or len(value) != length
            or any(c not in "0123456789abcdef" for c in value)
        ):
            self.fail(name, value, expected)
        return value

    def agree(self, name: str, value: Any, stated: Any, source: str) -> None:
        """``value`` equals ``stated``, what ``source`` (another file's description) says."""
        if value != stated:
            self.fail(name, value, f"{shown(stated)}, as {source} states")


# Normalisation of [0,1] RGB input: a mean is a pixel value; a std above 0.001 (x1000 at most), at most 1.
MEAN_RANGE, STD_RANGE = (0.0, 1.0), (1e-3, 1.0)


class ModelFields(FileFields):
    """:class:`FileFields` with the checks of model files: the normalisation pair, names a library looks
    up, and the keyword arguments a file may pass on to a library (an explicit allow-list)."""

    def normalisation(
        self, mean_name: str, mean: Any, std_name: str, std: Any
    ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Three means in :data:`MEAN_RANGE` and three stds in :data:`STD_RANGE` (the [0,1] input's)."""
        m = self.numbers(mean_name, mean, length=3, lo=MEAN_RANGE[0], hi=MEAN_RANGE[1])
        s = self.numbers(std_name, std, length=3, positive=True, lo=STD_RANGE[0], hi=STD_RANGE[1])
        return (m[0], m[1], m[2]), (s[0], s[1], s[2])

    def only(self, keys: Any, allowed: Sequence[str], what: str, prefix: str = "") -> None:
        """Every one of ``keys`` is in ``allowed``; the first other one is refused by name (``what``
        says what the allowed ones are, e.g. "an argument the SDK passes to smp's Unet")."""
        for key in keys:
            if key not in allowed:
                raise self.error(
                    f"{self.where}: field {shown(f'{prefix}{key}')} is not {what}; "
                    f"expected one of {', '.join(sorted(allowed))}"
                )

    def matching(self, name: str, value: Any, regex: Any, expected: str, *, max_len: int = 200) -> str:
        """A string of at most ``max_len`` characters that ``regex`` (a compiled pattern) matches whole."""
        if value is None:
            self.missing(name, expected)
        if not isinstance(value, str) or len(value) > max_len or regex.fullmatch(value) is None:
            self.fail(name, value, expected)
        return value
