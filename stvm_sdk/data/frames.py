"""Target-frame folders: discovery, Cityscapes layout, and label matching.

Any directory tree of images is accepted (recursive, sorted, so the order is deterministic). A
Cityscapes root (``leftImg8bit/<split>/<city>/*_leftImg8bit.png``) is recognised: only its images
are used and labels are matched under ``gtFine/`` with the official suffixes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stvm_sdk.boundary.frames import REASONS, FrameRejected, Skip, probe_frame
from stvm_sdk.data.images import image_tensor, read_image, read_label, resize_image, resize_label
from stvm_sdk.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CS_IMAGE_SUFFIX = "_leftImg8bit"
CS_LABEL_SUFFIXES = ("_gtFine_labelTrainIds", "_gtFine_labelIds")
# Files in a Cityscapes tree that are annotations, never frames.
_NOT_FRAMES = ("_gtFine_", "_gtCoarse_", "_color")


@dataclass(frozen=True)
class Frame:
    """One image and, when a labels folder was given and matches, its label map."""

    image: Path
    rel: Path  # path relative to the images root (used to match labels and name outputs)
    label: Path | None = None
    size: tuple[int, int] | None = None  # (height, width) from the header, when scanned


@dataclass
class FrameFolder:
    """The usable frames of a folder, with the files that were skipped and why.

    ``skipped`` starts with what the scan rejected from headers; :meth:`reject` adds frames that
    passed the scan but failed to decode later (every reader reports there), so one summary counts all.
    """

    root: Path
    frames: list[Frame]
    skipped: list[Skip] = field(default_factory=list)
    found: int = 0  # image files found (usable or not)
    _rejected: set[Path] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def labelled(self) -> list[Frame]:
        return [f for f in self.frames if f.label is not None]

    @property
    def usable(self) -> int:
        """Frames that passed the scan and have not failed to decode since."""
        return len(self.frames) - len(self._rejected)

    def reject(self, exc: FrameRejected) -> None:
        """Record a frame that failed to decode after the scan (thread-safe; once per file)."""
        with self._lock:
            if exc.path not in self._rejected:
                self._rejected.add(exc.path)
                self.skipped.append(Skip(exc.path, exc.reason, exc.detail))

    def load(
        self, frame: Frame, size: tuple[int, int] | None, with_label: bool = False
    ) -> tuple[Tensor, Tensor | None] | None:
        """:func:`load_frame`, or None (recorded in ``skipped``) if it fails."""
        if frame.image in self._rejected:
            return None
        try:
            return load_frame(frame, size, with_label)
        except FrameRejected as exc:
            self.reject(exc)
            return None

    def skip_report(self, examples: int = 3) -> dict[str, Any]:
        """``{"total", "by_reason": {reason: n}, "examples": [{"path", "reason", "detail"}]}``."""
        by_reason = {r: n for r in REASONS if (n := sum(s.reason == r for s in self.skipped))}
        shown = [
            {"path": str(s.path), "reason": s.reason, "detail": s.detail} for s in self.skipped[:examples]
        ]
        return {"total": len(self.skipped), "by_reason": by_reason, "examples": shown}


def describe_skips(skipped: list[Skip]) -> str:
    """``"3 skipped: 2 too small, 1 not an image; e.g. a.png: 1x1 has a side under 32 pixels"``."""
    if not skipped:
        return "none skipped"
    counts = [f"{n} {r.replace('_', ' ')}" for r in REASONS if (n := sum(s.reason == r for s in skipped))]
    first = skipped[0]
    return f"{len(skipped)} skipped: {', '.join(counts)}; e.g. {first.path.name}: {first.detail}"


def image_root(root: Path) -> Path:
    """The folder images are taken from: ``root/leftImg8bit`` for a Cityscapes root, else ``root``."""
    cs = root / "leftImg8bit"
    return cs if cs.is_dir() else root


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive, sorted); Cityscapes annotations excluded.

    Links are followed to files but not into folders (a link loop cannot recurse); a link that points
    nowhere is kept, so the scan reports it as unreadable instead of dropping it silently.
    """
    base = image_root(Path(root))
    files = [
        p
        for p in base.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(t in p.stem for t in _NOT_FRAMES)
        and (p.is_file() or p.is_symlink())
    ]
    return sorted(files, key=lambda p: p.relative_to(base).as_posix())


def label_candidates(rel: Path) -> list[Path]:
    """Label paths (relative to the labels root) that may belong to an image at ``rel``."""
    stem = rel.stem
    out = []
    if stem.endswith(CS_IMAGE_SUFFIX):
        base = stem[: -len(CS_IMAGE_SUFFIX)]
        out += [rel.with_name(base + suffix + ".png") for suffix in CS_LABEL_SUFFIXES]
    out.append(rel.with_suffix(".png"))
    return out


def _label_roots(labels_root: Path) -> list[Path]:
    return [labels_root / "gtFine", labels_root] if (labels_root / "gtFine").is_dir() else [labels_root]


def match_label(rel: Path, labels_root: Path) -> Path | None:
    """The label for the image at ``rel``, or None (``gtFine/`` is used when present)."""
    for root in _label_roots(labels_root):
        for cand in label_candidates(rel):
            if (root / cand).is_file():
                return root / cand
    return None


def scan_frames(
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str] | None = None,
    *,
    require_labels: bool = False,
) -> FrameFolder:
    """Find the usable frames under ``images_dir`` and match labels from ``labels_dir``.

    Files that are not usable frames are skipped with their reason (:mod:`stvm_sdk.boundary.frames`).

    Raises:
        DataError: the folder does not exist or holds no usable frame; or a labels folder was given
            (or ``require_labels``) and no frame has a label in it.
    """
    root = Path(images_dir)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "not found"
        raise DataError(f"target folder {what}: {root}: point it at a folder of frames")
    labels_root = Path(labels_dir) if labels_dir is not None else None
    if labels_root is not None and not labels_root.is_dir():
        raise DataError(f"labels folder not found: {labels_root}")
    base = image_root(root)
    frames, skipped = [], []
    try:
        paths = find_images(root)
    except OSError as exc:
        raise DataError(f"cannot list {root}: {exc.strerror or exc}") from None
    for path in paths:
        try:
            size = probe_frame(path)
        except FrameRejected as exc:
            skipped.append(Skip(path, exc.reason, exc.detail))
            continue
        rel = path.relative_to(base)
        label = match_label(rel, labels_root) if labels_root is not None else None
        frames.append(Frame(path, rel, label, size))
    if not frames:
        what = describe_skips(skipped) if skipped else f"no {'/'.join(IMAGE_EXTENSIONS)} files"
        raise DataError(f"no usable frames in {root} ({what}): point it at a folder of frames")
    folder = FrameFolder(root, frames, skipped, found=len(paths))
    if (require_labels or labels_root is not None) and not folder.labelled:
        looked = ", ".join(c.as_posix() for c in label_candidates(frames[0].rel))
        raise DataError(
            f"no frame in {root} has a label in {labels_root}: for {frames[0].rel.as_posix()} it looked for "
            f"{looked} (labels mirror the image tree; Cityscapes *_gtFine_labelTrainIds.png work too)"
        )
    return folder


def load_frame(
    frame: Frame, size: tuple[int, int] | None, with_label: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Decode and resize one frame (and its label, which must have the frame's size).

    Raises:
        FrameRejected: the image is not a usable frame. DataError: its label is unusable.
    """
    arr = read_image(frame.image)
    img = resize_image(image_tensor(arr), size)
    label = None
    if with_label and frame.label is not None:
        lab = read_label(frame.label)
        if lab.shape != arr.shape[:2]:
            raise DataError(
                f"label {frame.label} is {lab.shape[1]}x{lab.shape[0]} but its frame {frame.image.name} is "
                f"{arr.shape[1]}x{arr.shape[0]}: a label must have its frame's size"
            )
        label = resize_label(torch.from_numpy(lab.astype(np.int64)), size)
    return img, label
