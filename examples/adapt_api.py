"""Adapt a segmentation model to unlabeled frames through the Python API.

    python examples/adapt_api.py SOURCE.pt FRAMES_DIR [LABELS_DIR]

Without arguments it makes a tiny demo: a small synthetic target folder and a random-weight
torchvision LR-ASPP model, adapted for a few steps (to show the API, not accuracy).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from stvm_sdk import AdaptConfig, adapt, evaluate, load_model


def _demo_inputs(root: Path) -> tuple[torch.nn.Module, Path]:
    rng = np.random.default_rng(0)
    frames = root / "frames"
    frames.mkdir(parents=True)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (128, 256, 3), dtype=np.uint8)).save(
            frames / f"frame_{i:03d}.png"
        )
    model = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=19
    )
    return model, frames


def main() -> None:
    config = AdaptConfig(method="stvm").with_overrides(
        {"run.iters": 20, "metric.warmup": 5, "data.batch_size": 2, "data.crop": (128, 256)}
    )
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) >= 3:
            source, frames = load_model(sys.argv[1]), Path(sys.argv[2])
        else:
            source, frames = _demo_inputs(Path(tmp))
        labels = sys.argv[3] if len(sys.argv) > 3 else None
        result = adapt(source, frames, config=config, labels_dir=labels, out_dir=Path(tmp) / "run")
        print({k: result.metrics[k] for k in ("method", "steps", "frames_used", "images_seen", "seconds")})
        if labels:
            print("mIoU after:", evaluate(result.model, frames, labels).miou)
        print(
            "adapted model classes:", result.model.num_classes, "deliverable:", result.metrics["deliverable"]
        )


if __name__ == "__main__":
    main()
