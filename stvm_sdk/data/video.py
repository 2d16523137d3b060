"""Reading a video file frame by frame (OpenCV, optional): `stvm predict` and `stvm stream` share it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stvm_sdk.errors import BackendUnavailableError, DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
CV2_HINT = (
    "reading video needs OpenCV: pip install opencv-python-headless, or extract frames "
    "(ffmpeg -i in.mp4 frames/%06d.png) and pass the folder with --input"
)


def is_video(path: Path) -> bool:
    """Whether ``path`` names a video file (by its extension)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def video_frames(path: Path) -> tuple[Any, Iterator[np.ndarray], float, int]:
    """``(cv2, RGB uint8 frames [H,W,3], frames/s, frame count or 0)`` of the video at ``path``."""
    try:
        import cv2
    except ImportError:
        raise BackendUnavailableError(CV2_HINT) from None
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"cannot open video {path}: check the file, or extract frames with ffmpeg")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 25.0)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    return
                yield bgr[:, :, ::-1].copy()
        finally:
            cap.release()

    return cv2, frames(), fps, count
