"""Decoding images and label maps into the arrays and tensors the SDK works on.

Images become ``uint8 [H,W,3]`` RGB whatever their storage: palette PNGs are expanded through their
palette (not read as intensities), grayscale is replicated, alpha is dropped, and 16-bit images are
rescaled to 8 bits. A file that is not a usable frame raises
:class:`~stvm_sdk.boundary.frames.FrameRejected` with its reason (checked from the header first, so an
oversized image is never decoded). Labels become ``uint8 [H,W]`` trainIds (255 = ignore); Cityscapes
``*_labelIds.png`` are mapped to trainIds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from stvm_sdk.boundary.frames import open_frame
from stvm_sdk.errors import DataError

IGNORE_INDEX = 255
# Cityscapes labelId -> trainId (everything else -> 255).
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
LABEL_ID_LUT = np.full(65536, IGNORE_INDEX, dtype=np.uint8)  # labelId -> trainId lookup
for _lid, _tid in LABEL_ID_TO_TRAIN_ID.items():
    LABEL_ID_LUT[_lid] = _tid
TRAIN_ID_TO_LABEL_ID = np.full(256, 0, dtype=np.uint8)
for _lid, _tid in LABEL_ID_TO_TRAIN_ID.items():
    TRAIN_ID_TO_LABEL_ID[_tid] = _lid

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into ``uint8 [H,W,3]`` RGB.

    Raises:
        FrameRejected: (a :class:`DataError`) not an image, unreadable, or outside the size limits.
    """
    with open_frame(path) as img:
        img.load()
        return to_rgb(img)


def to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any PIL image mode to ``uint8 [H,W,3]`` RGB."""
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "F" else max(float(arr.max()), 1.0)
        gray = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black so transparent pixels do not carry arbitrary colour values.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def read_label(path: str | Path) -> np.ndarray:
    """Decode a label map into ``uint8 [H,W]`` trainIds (Cityscapes labelIds are mapped)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA"):
                raise DataError(
                    f"label {path} is a colour image: labels must hold class ids (trainId or labelId PNGs)"
                )
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot decode label {path}: {exc}") from None
    if arr.ndim != 2:
        raise DataError(f"label {path} has shape {arr.shape}: expected a single-channel id map")
    if Path(path).name.endswith("_labelIds.png"):
        return LABEL_ID_LUT[arr.astype(np.int64)]
    if arr.max(initial=0) > 255:
        raise DataError(f"label {path} has ids above 255: expected trainIds (0..K-1, 255 = ignore)")
    return arr.astype(np.uint8)


def image_tensor(arr: np.ndarray) -> Tensor:
    """``uint8 [H,W,3]`` -> float ``[3,H,W]`` in [0,1]."""
    arr = arr if arr.flags.writeable else arr.copy()  # PIL-backed arrays are read-only
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)


def resize_image(img: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Bilinear resize of ``[3,H,W]`` (or ``[B,3,H,W]``) to ``size`` (no-op for None)."""
    if size is None or tuple(img.shape[-2:]) == tuple(size):
        return img
    batch = img if img.dim() == 4 else img[None]
    out = nnf.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out if img.dim() == 4 else out[0]


def resize_label(label: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Nearest resize of an int label map ``[H,W]``."""
    if size is None or tuple(label.shape[-2:]) == tuple(size):
        return label
    return nnf.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
