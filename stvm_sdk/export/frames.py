"""The frames an export is checked and calibrated on, and the graph inputs made from them.

Frames come from a folder (``--calib``, labels beside it or in ``--labels``), or are rendered from the
synthetic target domain when there is none. Each is resized to the inference size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stvm_sdk.boundary.labels import check_label_ids
from stvm_sdk.errors import DataError
from stvm_sdk.models.contract import normalize
from stvm_sdk.models.io import SegModel


@dataclass
class VerifyFrame:
    """One frame: ``image [3,H,W]`` in [0,1] and optional ``label [H,W]`` (255 = ignore)."""

    image: torch.Tensor
    label: torch.Tensor | None = None


def load_frames(
    folder: str | Path | None,
    *,
    size: tuple[int, int],
    n: int = 8,
    labels: str | Path | None = None,
    seed: int = 0,
    num_classes: int | None = None,
    ignore_out_of_range: bool = False,
) -> tuple[list[VerifyFrame], str]:
    """Up to ``n`` frames (evenly spread over the folder) resized to ``size``; generated when no folder.

    Frames that fail to decode are skipped; with ``num_classes``, label ids are checked against it
    (:mod:`stvm_sdk.boundary.labels`). Returns the frames and a description of where they came from
    (for the sidecar).
    """
    if folder is None:
        frames = generated_frames(n, size, seed)
        if (
            num_classes is not None and num_classes != 19
        ):  # the generator's labels are the 19 Cityscapes classes
            frames = [VerifyFrame(f.image) for f in frames]
        return frames, f"{n} generated synthetic target frames"
    from stvm_sdk.data.frames import scan_frames

    scanned = scan_frames(folder, labels if labels is not None else _cityscapes_labels(Path(folder)))
    picks = np.linspace(0, len(scanned.frames) - 1, num=min(n, len(scanned.frames))).round().astype(int)
    out = []
    for i in sorted(set(picks.tolist())):
        frame = scanned.frames[i]
        loaded = scanned.load(frame, size, with_label=True)
        if loaded is None:
            continue
        img, lab = loaded
        if lab is not None and num_classes is not None:
            lab = check_label_ids(lab, num_classes, frame.label, ignore_out_of_range=ignore_out_of_range)
        out.append(VerifyFrame(img, lab))
    if not out:
        raise DataError(f"none of the frames picked from {folder} could be decoded")
    n_lab = sum(f.label is not None for f in out)
    return out, f"{len(out)} frames of {folder} ({n_lab} labelled)"


def _cityscapes_labels(root: Path) -> Path | None:
    return root if (root / "gtFine").is_dir() else None


def generated_frames(n: int, size: tuple[int, int], seed: int = 0) -> list[VerifyFrame]:
    """Labelled synthetic target frames (validation split), rendered in memory."""
    from stvm_sdk.synthetic.dataset import iter_frames

    return [
        VerifyFrame(
            torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0,
            torch.from_numpy(np.array(lab)).long(),
        )
        for img, lab in iter_frames("target", n, seed=seed, size=size, split="val")
    ]


def onnx_inputs(frames: Sequence[VerifyFrame], model: SegModel, *, baked_normalize: bool) -> list[np.ndarray]:
    """Per-frame ``[1,3,H,W]`` float32 arrays in the graph's input space."""
    out = []
    for f in frames:
        x = f.image[None]
        out.append((x if baked_normalize else normalize(x, model.mean, model.std)).numpy().astype(np.float32))
    return out
