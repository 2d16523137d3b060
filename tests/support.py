"""Test support that must be importable by name (pickled models, subprocess workers): not a conftest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

# Class k is drawn with colour PALETTE[k] (+ noise): a model can learn it, and labels are exact.
PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35], [70, 130, 180]], dtype=np.uint8
)


def make_frames(
    root: Path, n: int = 6, size: tuple[int, int] = (32, 64), seed: int = 0, nested: bool = True
) -> tuple[Path, Path]:
    """Write ``n`` frames of coloured blocks to ``root/images`` and trainId labels to ``root/labels``."""
    rng = np.random.default_rng(seed)
    images, labels = root / "images", root / "labels"
    for i in range(n):
        h, w = size
        lab = np.zeros(size, dtype=np.uint8)
        lab[: h // 3] = 4
        lab[h // 3 :, : w // 2] = rng.integers(0, 4)
        lab[h // 3 :, w // 2 :] = rng.integers(0, 4)
        img = PALETTE[lab].astype(np.int16) + rng.integers(-20, 20, (*size, 3))
        sub = Path(f"seq{i % 2}") if nested else Path()
        (images / sub).mkdir(parents=True, exist_ok=True)
        (labels / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(images / sub / f"f{i}.png")
        Image.fromarray(lab).save(labels / sub / f"f{i}.png")
    return images, labels


class TinySegNet(nn.Module):
    """A 5-class segmentation net with BatchNorm and a `classifier` head (conv-bn-relu-conv)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.classifier(self.backbone(x))
        return {
            "out": nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        }
