"""Reading a video file frame by frame (OpenCV, the ``video`` extra): `stvm predict` and `stvm stream`
share it.

A file OpenCV cannot open (not a video, or an mp4 cut short: its index is written last) or whose first
frame does not decode is refused here, before a command writes anything. A video that stops decoding
later (truncated or damaged) simply ends: callers compare the frames read with the count its header
announces and say what is missing. FFmpeg's own log lines are silenced (``OPENCV_FFMPEG_LOGLEVEL``, unless
set already) so a bad file is the command's one line, not a page of decoder noise.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from stvm_sdk.errors import BackendUnavailableError, DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
CV2_HINT = (
    "reading video needs OpenCV: pip install 'stvm_sdk[video]' (opencv-python-headless), or extract frames "
    "(ffmpeg -i in.mp4 frames/%06d.png) and pass the folder with --input"
)
DEFAULT_FPS = 25.0  # when the header gives none (or nonsense)
MAX_FPS = 1000.0
LOG_LEVEL_ERROR = 2  # OpenCV's log levels: 0 silent, 1 fatal, 2 error, 3 warning, 4 info


def is_video(path: Path) -> bool:
    """Whether ``path`` names a video file (by its extension)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def import_cv2() -> Any:
    """The ``cv2`` module, or :class:`BackendUnavailableError` saying how to install it."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET: read when FFmpeg is first used
    try:
        import cv2
    except ImportError:
        raise BackendUnavailableError(CV2_HINT) from None
    return cv2


@contextmanager
def _only_errors_logged(cv2: Any) -> Iterator[None]:
    """OpenCV's own log at ERROR while a file is opened (it warns about a file it cannot open, which the
    caller reports in its own line); the level is put back after. Its API moved between 4.x and 5.x."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    get, put = (log.getLogLevel, log.setLogLevel) if log is not None else (None, None)
    if get is None and hasattr(cv2, "getLogLevel") and hasattr(cv2, "setLogLevel"):
        get, put = cv2.getLogLevel, cv2.setLogLevel
    if get is None or put is None:
        yield
        return
    before = get()
    put(min(before, LOG_LEVEL_ERROR))
    try:
        yield
    finally:
        put(before)


def _capture(cv2: Any, path: Path) -> Any:
    """A capture through FFmpeg where OpenCV has it: its other readers print to stderr on a bad file."""
    registry = getattr(cv2, "videoio_registry", None)
    ffmpeg = getattr(cv2, "CAP_FFMPEG", None)
    with _only_errors_logged(cv2):
        if registry is not None and ffmpeg is not None and registry.hasBackend(ffmpeg):
            return cv2.VideoCapture(str(path), ffmpeg)
        return cv2.VideoCapture(str(path))


def _read(cv2: Any, cap: Any) -> np.ndarray | None:
    """The next frame as RGB uint8 ``[H,W,3]``, or None at the end (or where decoding fails)."""
    error = getattr(cv2, "error", None)
    errors: tuple[type[Exception], ...] = (
        (error,) if isinstance(error, type) and issubclass(error, Exception) else ()
    )
    try:
        ok, bgr = cap.read()
    except errors:  # a decoder that throws mid-file: the video ends there, as when read() says so
        return None
    if not ok or bgr is None or getattr(bgr, "size", 0) == 0:
        return None
    if bgr.ndim == 2:
        bgr = bgr[:, :, None].repeat(3, axis=2)
    return np.ascontiguousarray(bgr[:, :, 2::-1])


def video_frames(path: Path) -> tuple[Any, Iterator[np.ndarray], float, int]:
    """``(cv2, RGB uint8 frames [H,W,3], frames/s, frame count its header announces or 0)`` of ``path``.

    Raises:
        BackendUnavailableError: OpenCV is not installed.
        DataError: the file does not open as a video, or its first frame does not decode.
    """
    cv2 = import_cv2()
    cap = _capture(cv2, path)
    if not cap.isOpened():
        cap.release()
        raise DataError(
            f"cannot open video {path}: it is not a video OpenCV can read, or it is truncated or damaged "
            "(an mp4 cut short loses its index); check the file, or extract frames with ffmpeg"
        )
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(fps) or not 0 < fps <= MAX_FPS:
        fps = DEFAULT_FPS
    raw_count = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
    count = int(raw_count) if math.isfinite(raw_count) and raw_count > 0 else 0
    first = _read(cv2, cap)
    if first is None:
        cap.release()
        raise DataError(
            f"no frame could be read from video {path}: the file is truncated or damaged, or its codec is "
            "not one OpenCV decodes; check the file, or extract frames with ffmpeg"
        )

    def frames() -> Iterator[np.ndarray]:
        try:
            frame: np.ndarray | None = first
            while frame is not None:
                yield frame
                frame = _read(cv2, cap)
        finally:
            cap.release()

    return cv2, frames(), fps, count
