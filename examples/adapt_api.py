"""Adapt a segmentation model to unlabeled frames through the Python API.

    python examples/adapt_api.py [SOURCE.pt FRAMES_DIR [LABELS_DIR]] [--out DIR] [--iters N]

Without a model it makes a tiny demo: 8 labelled frames of the synthetic target domain and a
random-weight torchvision LR-ASPP model, adapted for a few steps (to show the API, not accuracy).
Everything is written under --out (default runs/adapt_api) and kept: the adapted model, the run's
logs and, for the demo, its frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision

from stvm_sdk import AdaptConfig, adapt, load_model
from stvm_sdk.synthetic.dataset import generate


def _demo_inputs(root: Path) -> tuple[torch.nn.Module, Path, Path]:
    """A random-weight 19-class LR-ASPP and 8 synthetic target frames with their labels."""
    frames = generate(root / "frames", "target", 8, size=(128, 256), workers=1)
    model = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=19
    )
    return model, frames, frames  # Cityscapes layout: labels live beside the images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="SOURCE.pt FRAMES_DIR [LABELS_DIR]; none: the tiny demo")
    parser.add_argument("--out", type=Path, default=Path("runs/adapt_api"), help="kept after the run")
    parser.add_argument("--iters", type=int, default=20, help="adaptation steps (default 20)")
    args = parser.parse_args(argv)
    if len(args.inputs) == 1 or len(args.inputs) > 3:
        parser.error("pass SOURCE.pt FRAMES_DIR [LABELS_DIR], or nothing for the demo")
    config = AdaptConfig(method="stvm").with_overrides(
        {
            "run.iters": args.iters,
            "methods.stvm.metric.warmup": min(5, args.iters),
            "data.batch_size": 2,
            "data.crop": (128, 256),
        }
    )
    if args.inputs:
        source, frames = load_model(args.inputs[0]), Path(args.inputs[1])
        labels = Path(args.inputs[2]) if len(args.inputs) == 3 else None
    else:
        source, frames, labels = _demo_inputs(args.out / "demo_inputs")
    result = adapt(source, frames, config=config, labels_dir=labels, out_dir=args.out / "run", progress=False)
    m = result.metrics
    print(
        f"{m['method']}: {m['steps']} steps, {m['images_seen']} images seen, {m['frames_used']} frames used"
    )
    if labels is not None:
        print(
            f"mIoU before: {m['miou_before']:.2f} %  after: {m['miou_after']:.2f} %  "
            f"(on {m['images_evaluated']} labelled frames)"
        )
    print(f"adapted model ({m['deliverable']}, {result.model.num_classes} classes): {m['model_path']}")
    print(f"run folder (config, metrics.jsonl, checkpoints): {result.run_dir}")


if __name__ == "__main__":
    main()
