"""Values every command and every public function shares: devices, ``HxW`` sizes, counts, named
choices, paths, and the limits on what a step may allocate.

Each parser returns the value or raises :class:`~stvm_sdk.errors.ConfigError` with a line that says
what a valid value looks like (and, for a mistyped choice, the nearest valid one); a value of the
wrong type raises :class:`~stvm_sdk.errors.ArgumentTypeError`.

Sizes are refused before anything is allocated, with the limit in the line:

- an ``HxW`` (crop, resize, inference size) has sides of at most :data:`MAX_SIDE` pixels;
- a count of frames held at once (``batch_size``, ``buffer``) is at most :data:`COUNT_LIMITS`;
- a training step's batch (frames x H x W) is at most :data:`MAX_BATCH_PIXELS` pixels, and its copies
  must fit in this machine's memory (:func:`check_batch_memory`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stvm_sdk.errors import ArgumentTypeError, ConfigError, ResourceError

MAX_SIDE = 16_384  # pixels per side of any HxW: twice an 8K frame's width
MAX_BATCH_PIXELS = 1 << 28  # frames x H x W of one step: 268M pixels, 3 GiB as float32 RGB
# Counts of frames held in memory at once, by config field name (in any section).
COUNT_LIMITS = {"batch_size": 4096, "buffer": 4096, "workers": 256}
# A training step holds several copies of its batch (the decoded frames, the teacher's and the
# student's inputs, augmented and mixed ones) before any activation: a batch whose copies alone do
# not fit in memory cannot run.
BATCH_COPIES = 8
INT64 = (-(1 << 63), (1 << 63) - 1)  # every integer a config holds fits in 64 bits (seeds, steps)

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str) -> str:
    """``name`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        hint = suggest(str(name), ("auto", "cpu", "cuda"))
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N{hint}")
    return name


def parse_hw(text: str | None, what: str = "size") -> tuple[int, int] | None:
    """Parse ``"256x512"`` into ``(256, 512)``; None and "none" give None. Each side is in
    ``[1, MAX_SIDE]``."""
    if text is None or text.lower() == "none":
        return None
    shown_text = text if len(text) <= 40 else text[:40] + "..."
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{what} '{shown_text}' must look like HxW, e.g. 256x512") from None
    if h < 1 or w < 1:
        raise ConfigError(f"{what} '{shown_text}' must have a positive height and width, e.g. 256x512")
    return check_hw((h, w), what)


def check_hw(hw: tuple[int, int], what: str) -> tuple[int, int]:
    """``hw`` if both sides are at most :data:`MAX_SIDE` pixels (a larger size is refused before
    anything of that size is allocated)."""
    h, w = hw
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ConfigError(
            f"{what} {h}x{w} is too large: each side must be at most {MAX_SIDE} pixels "
            "(frames are resized or cropped to it before they are batched)"
        )
    return h, w


def check_count(name: str, value: int, what: str) -> int:
    """``value`` if the count of frames ``name`` (``batch_size``, ``buffer``, ...) is within its
    :data:`COUNT_LIMITS` (names without a limit pass)."""
    hi = COUNT_LIMITS.get(name)
    if hi is not None and value > hi:
        raise ConfigError(f"{what} is {value:,}: at most {hi:,} (frames held in memory at once); lower it")
    return value


def check_batch_pixels(batch: int, hw: tuple[int, int], what: str) -> None:
    """Refuse a step of ``batch`` frames of ``hw`` over :data:`MAX_BATCH_PIXELS` pixels (the same on
    every machine; :func:`check_batch_memory` is this machine's limit)."""
    pixels = batch * hw[0] * hw[1]
    if pixels > MAX_BATCH_PIXELS:
        raise ConfigError(
            f"{what} = {batch} x {hw[0]}x{hw[1]} is {pixels:,} pixels per step, over the limit of "
            f"{MAX_BATCH_PIXELS:,}: lower the batch size or the crop"
        )


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None
    return pages * page if pages > 0 and page > 0 else None


def check_batch_memory(batch: int, hw: tuple[int, int], what: str) -> None:
    """Refuse, before it is allocated, a batch whose :data:`BATCH_COPIES` float32 copies alone need
    more than this machine's memory (:class:`ResourceError`)."""
    total = memory_bytes()
    need = batch * 3 * hw[0] * hw[1] * 4 * BATCH_COPIES
    if total is not None and need > total:
        raise ResourceError(
            f"{what} = {batch} x {hw[0]}x{hw[1]} needs {need / 2**30:.1f} GiB for the step's {BATCH_COPIES} "
            f"copies of the batch alone, more than this machine's {total / 2**30:.1f} GiB of memory: "
            "lower the batch size or the crop"
        )


def type_name(value: Any) -> str:
    """A short name of ``value``'s type for a message (``torch.Tensor``, ``int``)."""
    cls = type(value)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module.split('.')[0]}.{cls.__qualname__}"


def check_path(value: Any, what: str) -> Path:
    """``value`` as a :class:`~pathlib.Path` if it is a ``str`` or ``os.PathLike`` naming a path
    (not empty, no NUL character); else :class:`ArgumentTypeError` or :class:`ConfigError`."""
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(f"{what} must be a path (str or os.PathLike), got {type_name(value)}")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise ArgumentTypeError(f"{what} must be a path (str or os.PathLike), got a bytes path")
    if not text:
        raise ConfigError(f"{what} is an empty path: name a file or folder")
    if "\x00" in text:
        raise ConfigError(f"{what} contains a NUL character: name a file or folder")
    return Path(text)


def check_flag(value: Any, what: str) -> bool:
    """``value`` if it is a ``bool`` (``"no"`` would read as true)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{what} must be True or False, got {type_name(value)}")
    return value


def check_int_arg(value: Any, what: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` if it is an ``int`` (not a bool) in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{what} must be an integer, got {type_name(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = (
            f"in [{lo}, {hi}]"
            if lo is not None and hi is not None
            else f">= {lo}"
            if lo is not None
            else f"<= {hi}"
        )
        raise ConfigError(f"{what} must be an integer {span}, got {value}")
    return value


def check_number_arg(value: Any, what: str, *, positive: bool = False) -> float:
    """``value`` as a float if it is a finite ``int``/``float`` (not a bool), ``> 0`` when ``positive``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{what} must be a number, got {type_name(value)}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise ConfigError(f"{what} must be a finite number{' > 0' if positive else ''}, got {value}")
    return v


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


def check_int(value: int | None, flag: str, lo: int, hi: int | None = None, *, hint: str = "") -> int | None:
    """``value`` (None passes: an option left out) if it is an integer in ``[lo, hi]``, else one line
    naming the option, the range and what was given (``hint`` ends it, e.g. what leaving it out does)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{flag} must be an integer {bound}, got {value!r}{f' ({hint})' if hint else ''}")
    return value


def check_hw_pixels(hw: tuple[int, int] | None, flag: str, limit: int) -> tuple[int, int] | None:
    """``hw`` if ``height x width`` is at most ``limit`` pixels (a size the SDK will allocate)."""
    if hw is not None and hw[0] * hw[1] > limit:
        raise ConfigError(
            f"{flag} {hw[0]}x{hw[1]} is {hw[0] * hw[1]:,} pixels, over the {limit:,}-pixel limit "
            "(set STVM_MAX_PIXELS to raise it)"
        )
    return hw
