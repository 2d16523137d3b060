"""Target-frame folders: discovery, Cityscapes layout, and label matching.

Any directory tree of images is accepted (recursive, sorted, so the order is deterministic). A
Cityscapes root (``leftImg8bit/<split>/<city>/*_leftImg8bit.png``) is recognised: only its images
are used and labels are matched under ``gtFine/`` with the official suffixes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

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


@dataclass
class FrameFolder:
    """The readable frames of a folder, with the files that were skipped and why."""

    root: Path
    frames: list[Frame]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def labelled(self) -> list[Frame]:
        return [f for f in self.frames if f.label is not None]


def image_root(root: Path) -> Path:
    """The folder images are taken from: ``root/leftImg8bit`` for a Cityscapes root, else ``root``."""
    cs = root / "leftImg8bit"
    return cs if cs.is_dir() else root


def find_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive, sorted); Cityscapes annotations excluded."""
    base = image_root(Path(root))
    files = [
        p
        for p in base.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not any(t in p.stem for t in _NOT_FRAMES)
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


def match_label(rel: Path, labels_root: Path) -> Path | None:
    """The label for the image at ``rel``, or None (``gtFine/`` is used when present)."""
    roots = [labels_root / "gtFine", labels_root] if (labels_root / "gtFine").is_dir() else [labels_root]
    for root in roots:
        for cand in label_candidates(rel):
            if (root / cand).is_file():
                return root / cand
    return None


def _readable(path: Path) -> str | None:
    """None if the file looks like a decodable image, else the reason (a cheap header+CRC check)."""
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        return str(exc) or type(exc).__name__
    return None


def scan_frames(
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str] | None = None,
    *,
    require_labels: bool = False,
) -> FrameFolder:
    """Find the readable frames under ``images_dir`` and match labels from ``labels_dir``.

    Raises:
        DataError: the folder does not exist, holds no readable image, or (with ``require_labels``)
            no image has a matching label.
    """
    root = Path(images_dir)
    if not root.is_dir():
        raise DataError(f"target folder not found: {root}")
    labels_root = Path(labels_dir) if labels_dir is not None else None
    if labels_root is not None and not labels_root.is_dir():
        raise DataError(f"labels folder not found: {labels_root}")
    base = image_root(root)
    frames, skipped = [], []
    for path in find_images(root):
        reason = _readable(path)
        if reason is not None:
            skipped.append((path, reason))
            continue
        rel = path.relative_to(base)
        label = match_label(rel, labels_root) if labels_root is not None else None
        frames.append(Frame(path, rel, label))
    if not frames:
        what = f"{len(skipped)} unreadable file(s)" if skipped else f"no {'/'.join(IMAGE_EXTENSIONS)} files"
        raise DataError(f"no readable images in {root} ({what}): point --target at a folder of frames")
    folder = FrameFolder(root, frames, skipped)
    if require_labels and not folder.labelled:
        raise DataError(
            f"no image in {root} has a label in {labels_root}: labels must mirror the image tree "
            "(a/b/f1.jpg -> a/b/f1.png, or Cityscapes *_gtFine_labelTrainIds.png)"
        )
    return folder
