"""Bring a segmentation_models_pytorch model: save_pretrained -> adapt -> export -> smp.from_pretrained.

    python examples/family_smp.py [--out DIR] [--iters N]

Builds a small random-weight smp ``Unet`` (no download: ``encoder_weights=None``), saves it the
library's way (``save_pretrained``: config.json + model.safetensors), adapts it with STvM on a few
synthetic target frames, exports a verified ONNX graph, and loads the adapted model back with
``smp.from_pretrained(run_dir / "smp")``. Needs ``pip install 'stvm_sdk[smp]'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stvm_sdk import AdaptConfig, ExportOptions, adapt, export_model
from stvm_sdk.models import forward_logits, normalize
from stvm_sdk.synthetic.dataset import generate

SIZE = (64, 128)


def main(argv: list[str] | None = None) -> None:
    import segmentation_models_pytorch as smp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/family_smp"), help="kept after the run")
    parser.add_argument("--iters", type=int, default=4, help="adaptation steps (default 4)")
    args = parser.parse_args(argv)

    # 1. The user's model, saved as smp saves it (any arch and encoder smp can build).
    torch.manual_seed(0)
    model = smp.Unet(
        "resnet18", encoder_weights=None, classes=19, encoder_depth=3, decoder_channels=[32, 16, 16]
    )
    model.save_pretrained(args.out / "source")

    # 2. Adapt the folder as it is; STvM's metric network copies smp's segmentation_head.
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
        args.out / "source", frames, config=cfg, labels_dir=frames, out_dir=args.out / "run", progress=False
    )
    m = result.metrics
    print(f"classifier STvM copied: {result.model.classifier}")
    print(f"mIoU {m['miou_before']:.2f} -> {m['miou_after']:.2f} % (random weights, a few steps)")
    print(f"SDK model: {m['model_path']}\nsmp folder: {m['native_path']}")

    # 3. Export a verified ONNX graph of the adapted model.
    report = export_model(
        result.model, ExportOptions(shape=f"{SIZE[0]}x{SIZE[1]}", out_dir=args.out / "export")
    )
    art = report.artifacts[-1]
    print(f"ONNX: {art.onnx_path} (argmax agreement with PyTorch {art.verification.argmax_agreement:.2f} %)")

    # 4. Back in smp: the adapted weights give the SDK's logits.
    back = smp.from_pretrained(m["native_path"]).eval()
    x = normalize(torch.rand(1, 3, *SIZE), result.model.mean, result.model.std)
    with torch.no_grad():
        torch.testing.assert_close(back(x), forward_logits(result.model.module.eval(), x))
    print(f"smp.from_pretrained gives the adapted model's logits ({type(back).__name__})")


if __name__ == "__main__":
    main()
