"""Bring a Hugging Face model: save_pretrained -> adapt -> export -> from_pretrained.

    python examples/family_hf.py [--out DIR] [--iters N]

Builds a tiny random-weight SegFormer with transformers (no download), saves it the library's way
(``save_pretrained``: config.json + model.safetensors), adapts it with STvM on a few synthetic target
frames, exports a verified ONNX graph, and loads the adapted model back with
``SegformerForSemanticSegmentation.from_pretrained(run_dir / "hf")``. Needs ``pip install 'stvm_sdk[hf]'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stvm_sdk import AdaptConfig, ExportOptions, adapt, export_model
from stvm_sdk.models import CITYSCAPES_CLASSES, forward_logits, normalize
from stvm_sdk.synthetic.dataset import generate

SIZE = (64, 128)


def main(argv: list[str] | None = None) -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/family_hf"), help="kept after the run")
    parser.add_argument("--iters", type=int, default=4, help="adaptation steps (default 4)")
    args = parser.parse_args(argv)

    # 1. The user's model, saved as transformers saves it (class names travel in id2label).
    torch.manual_seed(0)
    config = SegformerConfig(
        num_labels=19, id2label=dict(enumerate(CITYSCAPES_CLASSES)), hidden_sizes=[16, 32, 32, 64],
        depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=32,
    )  # fmt: skip
    SegformerForSemanticSegmentation(config).save_pretrained(args.out / "source")

    # 2. Adapt the folder as it is: the SDK reads it (no pickle, no remote code).
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
    print(f"SDK model: {m['model_path']}\nHugging Face folder: {m['native_path']}")

    # 3. Export a verified ONNX graph of the adapted model.
    report = export_model(
        result.model, ExportOptions(shape=f"{SIZE[0]}x{SIZE[1]}", out_dir=args.out / "export")
    )
    art = report.artifacts[-1]
    print(f"ONNX: {art.onnx_path} (argmax agreement with PyTorch {art.verification.argmax_agreement:.2f} %)")

    # 4. Back in transformers: the adapted weights give the SDK's logits.
    back = SegformerForSemanticSegmentation.from_pretrained(m["native_path"]).eval()
    x = normalize(torch.rand(1, 3, *SIZE), result.model.mean, result.model.std)
    with torch.no_grad():
        theirs = torch.nn.functional.interpolate(back(pixel_values=x).logits, size=SIZE, mode="bilinear")
        torch.testing.assert_close(theirs, forward_logits(result.model.module.eval(), x))
    print(f"from_pretrained gives the adapted model's logits; labels: {back.config.id2label[0]}, ...")


if __name__ == "__main__":
    main()
