"""Deployment targets, measured side by side on this machine's CPU.

For the demo model (lraspp_mobilenet_v3_large, 19 classes, trained on labelled synthetic *target*
frames so the accuracy figures mean something) at 512x1024, batch 1:

* ONNX Runtime vs eager PyTorch latency (target: ORT <= 0.8x eager);
* fp16 graph argmax agreement with the fp32 model (target: >= 99.5 %);
* INT8 Q/DQ graph mIoU vs fp32 on held-out labelled target frames (target: within 1.0 point),
  and INT8 vs fp32 ORT latency (target: INT8 faster).

Everything goes through the SDK (``export_model``, ``bench.measure``), i.e. what `stvm export` and
`stvm bench` do. Writes ``benchmarks/results/deploy.{md,json}``.

    python benchmarks/deploy.py              # slow the first time (data + training), then only measures
    python benchmarks/deploy.py --quick      # smoke run: tiny data, 30 training steps

Data and the trained model are cached under ``benchmarks/cache/deploy`` (git-ignored), keyed by
the settings, so a re-run only measures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=ROOT / "cache" / "deploy")
    p.add_argument("--n-train", type=int, default=240, help="labelled target training frames (512x1024)")
    p.add_argument("--n-val", type=int, default=24, help="held-out labelled target frames (512x1024)")
    p.add_argument("--iters", type=int, default=300, help="training steps of the demo model")
    p.add_argument("--shape", default="512x1024")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters-bench", type=int, default=30)
    p.add_argument(
        "--threads", type=int, default=1, help="torch and ONNX Runtime threads (1: robust on a busy machine)"
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--prepare-only", action="store_true", help="make data and the demo model, then stop")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "deploy.md")
    a = p.parse_args()
    if a.quick:
        a.n_train, a.n_val, a.iters, a.iters_bench, a.warmup = 16, 6, 30, 5, 1
        a.cache, a.shape = a.cache.with_name("deploy_quick"), "256x512"
    return a


def prepare(a: argparse.Namespace) -> tuple[Path, Path]:
    """Generate (cached) labelled target frames and train (cached) the demo model on them."""
    from stvm_sdk.supervised import TrainConfig, train_source
    from stvm_sdk.synthetic.dataset import generate

    h, w = (int(v) for v in a.shape.split("x"))
    train, val = a.cache / f"train_{a.n_train}_{h}x{w}", a.cache / f"val_{a.n_val}_{h}x{w}"
    for root, n, split in ((train, a.n_train, "train"), (val, a.n_val, "val")):
        if not (root / f"synth_target_{split}.json").is_file():
            print(f"generating {n} {split} frames at {h}x{w} in {root}", file=sys.stderr)
            generate(root, "target", n, seed=0, size=(h, w), split=split)
    model = a.cache / f"demo_lraspp_{a.n_train}_{h}x{w}_{a.iters}it.pt"
    if not model.is_file():
        print(f"training the demo model ({a.iters} steps) -> {model}", file=sys.stderr)
        # Crops at the deployment scale (objects as large as at 512x1024), small enough to train on 2 cores.
        cfg = TrainConfig(iters=a.iters, batch_size=8, crop=(h // 4, w // 4), lr=2e-3, seed=0, device="cpu")
        train_source(train / "leftImg8bit", train / "gtFine", model, cfg, progress=False)
    fixed = model.with_name(model.stem + "_bn.pt")
    if not fixed.is_file():
        recalibrate_bn(model, train, fixed)
    return fixed, val


def recalibrate_bn(model_path: Path, train: Path, out: Path, n: int = 32) -> None:
    """Re-estimate BatchNorm statistics on ``n`` full training frames and save the model to ``out``.

    torchvision's MobileNetV3 uses BN momentum 0.01, so after a few hundred steps from scratch the
    running statistics still remember their initial values: the trained model scores ~2 mIoU in
    eval mode but ~24 with batch statistics. A cumulative average over full frames (the deployment
    input) fixes that without touching any weight.
    """
    from stvm_sdk.data.batches import load_frame
    from stvm_sdk.data.frames import scan_frames
    from stvm_sdk.models import forward_logits, load_model, normalize, save_model

    model = load_model(model_path)
    bns = [m for m in model.module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    frames = scan_frames(train).frames[:n]
    model.module.train()
    with torch.no_grad():
        for i in range(0, len(frames), 4):
            x = torch.stack([load_frame(f, None)[0] for f in frames[i : i + 4]])
            forward_logits(model.module, normalize(x, model.mean, model.std))
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    model.module.eval()
    save_model(model, out)


def calib_folder(a: argparse.Namespace, train: Path, n: int = 24) -> Path:
    """A Cityscapes-layout folder of ``n`` training-split frames (links): the calibration set."""
    root = a.cache / f"calib_{n}_{train.name}"
    if not root.is_dir():
        for src in sorted((train / "leftImg8bit").rglob("*_leftImg8bit.png"))[:n]:
            rel = src.relative_to(train / "leftImg8bit")
            lab = train / "gtFine" / rel.parent / src.name.replace("_leftImg8bit", "_gtFine_labelTrainIds")
            for s, d in (
                (src, root / "leftImg8bit" / rel),
                (lab, root / "gtFine" / lab.relative_to(train / "gtFine")),
            ):
                d.parent.mkdir(parents=True, exist_ok=True)
                d.symlink_to(s)
    return root


def accuracy(model, export, val: Path, size: tuple[int, int]) -> dict:  # noqa: ANN001
    """fp32/fp16/int8 graphs vs eager on every held-out labelled frame (not used for calibration)."""
    from stvm_sdk.export.frames import load_frames
    from stvm_sdk.export.verify import verify_onnx

    frames, desc = load_frames(val, size=size, n=10_000)
    out = {"frames": desc}
    for art in export.artifacts:
        v = verify_onnx(art.onnx_path, model, frames, precision=art.precision)
        out[art.precision] = v.to_dict()
    return out


def measure(a: argparse.Namespace, model_path: Path, val: Path, train: Path) -> dict:
    from stvm_sdk.bench.run import bench_models
    from stvm_sdk.export.pipeline import ExportOptions, export_model
    from stvm_sdk.models import load_model

    h, w = (int(v) for v in a.shape.split("x"))
    model = load_model(model_path)
    t0 = time.perf_counter()
    opts = ExportOptions(
        out_dir=a.cache / "export",
        precisions=("fp16", "int8"),
        calib=calib_folder(a, train),
        shape=a.shape,
        verify_frames=8,
        calib_frames=8,
    )
    export = export_model(model, opts, source=model_path, log=lambda m: print(m, file=sys.stderr))
    export_s = time.perf_counter() - t0
    acc = accuracy(model, export, val, (h, w))
    onnx_files = [x.onnx_path for x in export.artifacts if x.precision in ("fp32", "int8")]
    bench = bench_models(
        [model_path, *onnx_files],
        backends="torch,ort",
        shape=(h, w),
        warmup=a.warmup,
        iters=a.iters_bench,
        threads=a.threads,
    )
    return {"export": export.to_dict(), "export_seconds": export_s, "accuracy": acc, "bench": bench.to_dict()}


def targets(r: dict) -> list[tuple[str, str, str, bool]]:
    """(target, measured, threshold, met) for each CPU deployment target."""
    rows = {(x["model"], x["backend"], x["precision"]): x for x in r["bench"]["rows"]}
    torch_ms = next(x["mean_ms"] for k, x in rows.items() if k[1] == "torch")
    ort32 = next(x["mean_ms"] for k, x in rows.items() if k[0].endswith(".onnx") and k[2] == "fp32")
    ort8 = next(x["mean_ms"] for k, x in rows.items() if k[2] == "int8")
    acc = r["accuracy"]
    d_int8 = acc["int8"]["miou_onnx"] - acc["fp32"]["miou_onnx"]
    return [
        ("ORT fp32 latency / eager torch", f"{ort32 / torch_ms:.2f}x", "<= 0.8x", ort32 / torch_ms <= 0.8),
        (
            "fp16 graph argmax agreement",
            f"{acc['fp16']['argmax_agreement']:.3f} %",
            ">= 99.5 %",
            acc["fp16"]["argmax_agreement"] >= 99.5,
        ),
        ("INT8 mIoU - fp32 mIoU (ORT)", f"{d_int8:+.2f} points", ">= -1.0", d_int8 >= -1.0),
        ("INT8 / fp32 ORT latency", f"{ort8 / ort32:.2f}x", "< 1.0x (faster)", ort8 < ort32),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def _header(a: argparse.Namespace, r: dict) -> list[str]:
    m = r["bench"]["machine"]
    return [
        "# Deployment benchmark",
        "",
        f"Machine: {m['cpu']} ({m.get('cores')} cores), {m['threads']} thread(s) for torch and ONNX Runtime, "
        f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
        f"Python {m['python']}. "
        f"Command: `python benchmarks/deploy.py{' --quick' if a.quick else ''}`.",
        "",
        f"Demo model: lraspp_mobilenet_v3_large, 19 classes, trained {a.iters} steps on {a.n_train} labelled "
        f"synthetic target frames; accuracy on {r['accuracy']['frames']} (held out, never calibrated on); "
        f"input {a.shape}, batch 1.",
        "",
    ]


def _sections(r: dict) -> list[str]:
    bench, acc, cal = r["bench"]["rows"], r["accuracy"], r["export"]["calibration"]
    lat = [
        [
            x["model"],
            x["backend"],
            x["precision"],
            *(f"{x[k]:.1f}" for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms")),
            f"{x['throughput']:.2f}",
            f"{x['ratio_to_torch']:.2f}",
        ]
        for x in bench
    ]
    accuracy = [
        [
            p,
            f"{v['max_abs_diff']:.2e}",
            f"{v['argmax_agreement']:.3f}",
            f"{v['miou_eager']:.2f}",
            f"{v['miou_onnx']:.2f}",
            f"{v['miou_delta']:+.2f}",
        ]
        for p, v in acc.items()
        if p != "frames"
    ]
    out = ["## Latency (interleaved in chunks, same images)", ""]
    out += _table(["model", "backend", "precision", "mean ms", "p50", "p90", "p99", "img/s", "x torch"], lat)
    out += ["", "## Accuracy vs eager PyTorch (ONNX Runtime CPU)", ""]
    out += _table(
        ["graph", "max abs logit diff", "argmax agreement %", "mIoU eager", "mIoU graph", "delta"], accuracy
    )
    out += [
        "",
        f"INT8 calibration: {cal['method']} chosen by mIoU on the calibration folder's verification "
        f"frames; scores {json.dumps({k: round(v, 2) for k, v in cal['scores'].items()})}.",
        "",
    ]
    edge = r["bench"]["edge_estimate"]
    if edge:
        rows = [
            [
                x["device"],
                x["precision"],
                f"{x['peak_tflops']:.1f}",
                f"{x['bandwidth_gbs']:.0f}",
                f"{x['lower_bound_ms']:.2f}",
                f"{x['unfused_memory_ms']:.2f}",
            ]
            for x in edge["rows"]
        ]
        out += [
            f"## Edge estimate: {edge['label']}",
            "",
            f"{edge['gflops']:.2f} GFLOP per frame, {edge['params'] / 1e6:.2f} M parameters.",
            "",
        ]
        out += _table(
            ["device", "precision", "peak TFLOPS", "GB/s", "lower bound ms", "unfused-memory ms"], rows
        )
    return out + [""]


def _notes(r: dict) -> list[str]:
    m = r["bench"]["machine"]
    return [
        "## Notes", "",
        f"- Load average while measuring: {m.get('load_avg_1m')} on {m.get('cores')} cores (other jobs "
        "shared the machine). Backends run interleaved in short chunks, so the *ratios* see the same load; "
        "absolute milliseconds are higher than on an idle machine.",
        f"- INT8 on this CPU: int8 dot-product instructions (VNNI/AMX) present: {m.get('int8_dot_product')}. "
        "The Q/DQ graph is made for TensorRT (symmetric int8, zero points 0). ONNX Runtime's CPU kernels for "
        "signed int8 activations run in NHWC and wrap each fused QLinearConv in transposes, and HardSwish "
        "stays in float between them; on AVX2 without VNNI that costs more than the int8 arithmetic saves.",
        "- Accuracy columns: same frames, same resolution; labels resized (nearest) to the input size.", "",
    ]  # fmt: skip


def write(a: argparse.Namespace, r: dict) -> None:
    t = targets(r)
    lines = _header(a, r) + ["## Targets (this CPU)", ""]
    lines += _table(
        ["target", "measured", "required", "met"], [[n, v, q, "yes" if ok else "**no**"] for n, v, q, ok in t]
    )
    lines += [
        "",
        "TensorRT fp16 >= 3x eager torch fp32 on a GPU: **not measured** (this benchmark runs on the CPU; "
        "TensorRT needs an NVIDIA GPU and does not install on a CPU-only machine: docs/environment.md).",
        "",
    ]
    lines += _sections(r)
    lines += _notes(r)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    meta = {
        **r,
        "targets": t,
        "settings": {k: str(v) for k, v in vars(a).items()},
        "platform": platform.platform(),
    }
    a.out.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print("\n".join(lines))


def main() -> None:
    a = parse()
    torch.set_num_threads(a.threads)
    a.cache.mkdir(parents=True, exist_ok=True)
    model_path, val = prepare(a)
    if a.prepare_only:
        return
    h, w = (int(v) for v in a.shape.split("x"))
    train = a.cache / f"train_{a.n_train}_{h}x{w}"
    write(a, measure(a, model_path, val, train))


if __name__ == "__main__":
    main()
