"""`stvm eval` (per-class IoU on a labelled folder) and `stvm info` (what a model file holds)."""

from __future__ import annotations

from pathlib import Path

import typer
from stvm_sdk.cli.common import IGNORE_OUT_OF_RANGE, TRUST_PICKLE, console, print_json, user_errors


@user_errors
def eval_command(
    model: Path = typer.Option(..., "--model", "-m", help="Model file (.pt checkpoint, TorchScript)."),
    images: Path = typer.Option(..., "--images", help="Folder of frames (or a Cityscapes root)."),
    labels: Path = typer.Option(..., "--labels", help="Labels mirroring --images (trainIds or Cityscapes)."),
    size: str | None = typer.Option(None, "--size", help="Inference size HxW (default: native)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    trust_pickle: bool = TRUST_PICKLE,
    ignore_out_of_range: bool = IGNORE_OUT_OF_RANGE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Evaluate MODEL on labelled frames: mIoU and per-class IoU."""
    from rich.table import Table

    from stvm_sdk.api import resolve_device
    from stvm_sdk.boundary.args import parse_hw
    from stvm_sdk.eval import evaluate
    from stvm_sdk.models import load_model

    seg = load_model(model, trust_pickle=trust_pickle)
    result = evaluate(
        seg, images, labels, size=parse_hw(size, "--size"), device=resolve_device(device),
        ignore_out_of_range=ignore_out_of_range,
    )  # fmt: skip
    if json_out:
        print_json(result.to_dict())
        return
    table = Table(title=f"{model.name}: mIoU {result.miou:.2f} on {result.n_images} frames")
    table.add_column("class")
    table.add_column("IoU (%)", justify="right")
    for name, iou in result.per_class_iou.items():
        table.add_row(name, "-" if iou is None else f"{iou:.2f}")
    console.print(table)


@user_errors
def info_command(
    model: Path = typer.Argument(..., help="Model file."),
    trust_pickle: bool = TRUST_PICKLE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Show a model's classes, head, parameter count and input contract."""
    from stvm_sdk.models import load_model

    seg = load_model(model, trust_pickle=trust_pickle)
    info = {
        "path": str(model), "format": seg.kind, "arch": seg.arch, "num_classes": seg.num_classes,
        "classifier": seg.classifier, "parameters": sum(p.numel() for p in seg.module.parameters()),
        "input": "float32 [B,3,H,W], RGB in [0,1] then (x - mean) / std", "mean": list(seg.mean),
        "std": list(seg.std), "output": f"logits [B,{seg.num_classes},H,W]", "class_names": seg.class_names,
    }  # fmt: skip
    if json_out:
        print_json(info)
        return
    for key, value in info.items():
        console.print(f"[bold]{key}[/bold]: {value}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("info")(info_command)
