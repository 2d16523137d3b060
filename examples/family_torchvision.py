"""Bring a torchvision model: checkpoint dict -> adapt -> export -> torchvision.models.get_model.

    python examples/family_torchvision.py [--out DIR] [--iters N]

Builds a random-weight torchvision LR-ASPP (no download), saves it as a checkpoint dict
``{"arch", "num_classes", "state_dict"}``, adapts it with STvM on a few synthetic target frames,
exports a verified ONNX graph, and loads the adapted weights back into
``torchvision.models.get_model(arch, num_classes=K, weights=None, weights_backbone=None)`` from
``run_dir / "torchvision"`` (model.safetensors + config.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file

from stvm_sdk import AdaptConfig, ExportOptions, adapt, export_model
from stvm_sdk.models import forward_logits, normalize
from stvm_sdk.synthetic.dataset import generate

SIZE = (64, 128)
ARCH = "lraspp_mobilenet_v3_large"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--out", type=Path, default=Path("runs/family_torchvision"), help="kept after the run"
    )
    parser.add_argument("--iters", type=int, default=4, help="adaptation steps (default 4)")
    args = parser.parse_args(argv)

    # 1. The user's model as a checkpoint dict (read back with torch.load(weights_only=True)).
    torch.manual_seed(0)
    model = torchvision.models.get_model(ARCH, num_classes=19, weights=None, weights_backbone=None)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"arch": ARCH, "num_classes": 19, "state_dict": model.state_dict()}, args.out / "source.pt")

    # 2. Adapt it; the deliverable is model.safetensors (weights + metadata, no pickle).
    frames = generate(args.out / "frames", "target", 6, size=SIZE, workers=1)
    cfg = AdaptConfig(method="stvm").with_overrides(
        {
            "run.iters": args.iters,
            "methods.stvm.metric.warmup": 1,
            "data.batch_size": 2,
            "data.crop": SIZE,
            "methods.stvm.mix.patch": 16,
        }
    )
    result = adapt(
        args.out / "source.pt",
        frames,
        config=cfg,
        labels_dir=frames,
        out_dir=args.out / "run",
        progress=False,
    )
    m = result.metrics
    print(f"classifier STvM copied: {result.model.classifier}")
    print(f"mIoU {m['miou_before']:.2f} -> {m['miou_after']:.2f} % (random weights, a few steps)")
    print(f"SDK model: {m['model_path']}\ntorchvision folder: {m['native_path']}")

    # 3. Export a verified ONNX graph of the adapted model.
    report = export_model(
        result.model, ExportOptions(shape=f"{SIZE[0]}x{SIZE[1]}", out_dir=args.out / "export")
    )
    art = report.artifacts[-1]
    print(f"ONNX: {art.onnx_path} (argmax agreement with PyTorch {art.verification.argmax_agreement:.2f} %)")

    # 4. Back in torchvision: the adapted state dict loads into the library's own constructor.
    folder = Path(m["native_path"])
    spec = json.loads((folder / "config.json").read_text())
    back = torchvision.models.get_model(
        spec["arch"], num_classes=spec["num_classes"], weights=None, weights_backbone=None
    )
    back.load_state_dict(load_file(folder / "model.safetensors"))
    x = normalize(torch.rand(1, 3, *SIZE), result.model.mean, result.model.std)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x)["out"], forward_logits(result.model.module.eval(), x))
    print(
        f"torchvision.models.get_model('{spec['arch']}') + load_state_dict gives the adapted model's logits"
    )


if __name__ == "__main__":
    main()
