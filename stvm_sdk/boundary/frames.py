"""Which image files are usable frames, decided from the header before any pixel is decoded.

A frame is skipped (and counted, with its reason) rather than stopping a command when it is:

- ``not_an_image``: empty, or not a format PIL can identify (a text file named ``.png``);
- ``unreadable``: permission denied, a broken link, or data that does not decode (truncated, corrupt);
- ``too_large``: more than :func:`max_pixels` pixels (default 40 MP; an 8K frame is 33 MP), judged from
  the header, so a "decompression bomb" (a tiny file declaring a huge image) is never decoded;
- ``too_small``: a side under :func:`min_side` pixels (default 32): too small for a segmentation
  network's downsampling (a 1x1 frame has no BatchNorm statistics).

Both limits can be changed with the environment variables ``STVM_MAX_PIXELS`` and ``STVM_MIN_SIDE``.
PIL's own bomb check stays active: over 2x ``PIL.Image.MAX_IMAGE_PIXELS`` (179 MP) a frame is always
``too_large``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from stvm_sdk.errors import ConfigError, DataError

MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS = "STVM_MAX_PIXELS", 40_000_000
MIN_SIDE_ENV, DEFAULT_MIN_SIDE = "STVM_MIN_SIDE", 32
REASONS = ("not_an_image", "unreadable", "too_large", "too_small")
# Our limit is stricter than PIL's warning threshold and is checked from the header: PIL's warning
# would only repeat it (a filter, not catch_warnings, which is not thread-safe in the decoder pool).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name} must be a positive whole number, got {text!r}")
    return value


def max_pixels() -> int:
    """The largest frame (height x width) the SDK decodes: ``STVM_MAX_PIXELS`` or 40,000,000."""
    return _env_int(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS)


def min_side() -> int:
    """The shortest side a usable frame has: ``STVM_MIN_SIDE`` or 32 pixels."""
    return _env_int(MIN_SIDE_ENV, DEFAULT_MIN_SIDE)


class FrameRejected(DataError):
    """An image file that is not a usable frame; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, path: Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path, self.reason, self.detail = path, reason, detail


@dataclass(frozen=True)
class Skip:
    """One skipped file and why."""

    path: Path
    reason: str
    detail: str


def check_size(path: Path, size: tuple[int, int]) -> None:
    """Reject a frame of ``size`` = (width, height) outside the limits (see the module docstring)."""
    w, h = size
    if w * h > max_pixels():
        raise FrameRejected(
            path, "too_large", f"{w}x{h} is over the {max_pixels():,}-pixel limit (set {MAX_PIXELS_ENV})"
        )
    if min(w, h) < min_side():
        raise FrameRejected(
            path, "too_small", f"{w}x{h} has a side under {min_side()} pixels (set {MIN_SIDE_ENV})"
        )


@contextmanager
def open_frame(path: str | Path) -> Iterator[Image.Image]:
    """Open ``path`` lazily (header only), check its size, and map every failure to :class:`FrameRejected`.

    Decoding inside the ``with`` block (``img.load()``) is covered too: corrupt data is ``unreadable``.
    """
    p = Path(path)
    try:
        with Image.open(p) as img:
            check_size(p, img.size)
            yield img
    except FrameRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise FrameRejected(p, "too_large", f"declares a huge image ({exc})") from None
    except UnidentifiedImageError:
        raise _unidentified(p) from None
    except OSError as exc:
        detail = exc.strerror if exc.errno else f"cannot be decoded ({exc})"
        raise FrameRejected(p, "unreadable", detail or type(exc).__name__) from None
    except (ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise FrameRejected(p, "unreadable", f"cannot be decoded ({exc or type(exc).__name__})") from None


# Signatures of the formats we read: a file that starts like an image but does not parse is corrupt.
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"RIFF", b"GIF8")


def _unidentified(p: Path) -> FrameRejected:
    try:
        with open(p, "rb") as fh:
            head = fh.read(12)
    except OSError as exc:
        return FrameRejected(p, "unreadable", exc.strerror or "cannot be read")
    if not head:
        return FrameRejected(p, "not_an_image", "empty file")
    if head.startswith(_MAGIC):
        return FrameRejected(p, "unreadable", "corrupt image header")
    return FrameRejected(p, "not_an_image", "not an image file")


def probe_frame(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of a usable frame, from its header and a cheap integrity check (no decode)."""
    with open_frame(path) as img:
        w, h = img.size
        img.verify()
    return h, w
