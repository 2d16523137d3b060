"""Command-line values every command shares: devices, ``HxW`` sizes and named choices.

Each parser returns the value or raises :class:`~stvm_sdk.errors.ConfigError` with a line that says
what a valid value looks like (and, for a mistyped choice, the nearest valid one).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from stvm_sdk.errors import ConfigError

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str) -> str:
    """``name`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        hint = suggest(str(name), ("auto", "cpu", "cuda"))
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N{hint}")
    return name


def parse_hw(text: str | None, what: str = "size") -> tuple[int, int] | None:
    """Parse ``"256x512"`` into ``(256, 512)``; None and "none" give None."""
    if text is None or text.lower() == "none":
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{what} '{text}' must look like HxW, e.g. 256x512") from None
    if h < 1 or w < 1:
        raise ConfigError(f"{what} '{text}' must have a positive height and width, e.g. 256x512")
    return h, w


# Names users type for our choices (libraries and tools they know) -> the choice they meant.
ALIASES = {
    "onnx": "ort", "onnxruntime": "ort", "tensorrt": "trt",
    "pytorch": "torch", "pt": "torch", "eager": "torch", "gpu": "cuda", "cpu:0": "cpu",
}  # fmt: skip


def suggest(value: str, options: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the nearest option (or a known alias of one), or ``""``."""
    alias = ALIASES.get(value.lower())
    if alias in options:
        return f"; did you mean '{alias}'?"
    near = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{near[0]}'?" if near else ""


def check_choice(value: str, options: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``options``, else a line listing them (and the nearest one)."""
    if value not in options:
        raise ConfigError(
            f"unknown {what} '{value}': choose one of {', '.join(options)}{suggest(value, options)}"
        )
    return value
