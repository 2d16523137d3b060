"""`stvm train-source`: supervised training on a labelled folder, written in the checkpoint format."""

from __future__ import annotations

from pathlib import Path

import typer
from stvm_sdk.cli.common import console, print_json, user_errors


@user_errors
def train_source_command(
    images: Path = typer.Option(..., "--images", help="Labelled frames (a Cityscapes root works)."),
    labels: Path | None = typer.Option(None, "--labels", help="Labels folder (default: same as --images)."),
    out: Path = typer.Option(Path("source.pt"), "--out", help="Checkpoint to write."),
    arch: str = typer.Option("lraspp_mobilenet_v3_large", "--arch", help="torchvision segmentation model."),
    num_classes: int = typer.Option(19, "--num-classes", help="Classes the model predicts."),
    iters: int = typer.Option(1000, "--iters", help="Training steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Frames per step."),
    crop: str = typer.Option("128x256", "--crop", help="Random crop HxW, or 'none'."),
    resize: str | None = typer.Option(None, "--resize", help="Resize frames to HxW first."),
    lr: float = typer.Option(2e-3, "--lr", help="Learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights, batches and crops."),
    init: Path | None = typer.Option(
        None, "--init", help="Start from this checkpoint's weights (fine-tune it) instead of random ones."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Train a source model with labels (for the benchmark, or your own labelled source data)."""
    from stvm_sdk.boundary.args import parse_hw
    from stvm_sdk.supervised import TrainConfig, train_source

    cfg = TrainConfig(
        arch=arch,
        num_classes=num_classes,
        iters=iters,
        batch_size=batch_size,
        crop=parse_hw(crop, "--crop"),
        resize=parse_hw(resize, "--resize"),
        lr=lr,
        seed=seed,
        device=device,
        init=str(init) if init is not None else None,
    )
    train_source(images, labels, out, cfg, progress=not json_out)
    if json_out:
        print_json({"model_path": str(out), "arch": arch, "iters": iters})
    else:
        console.print(f"saved {out}")


def register(app: typer.Typer) -> None:
    app.command("train-source")(train_source_command)
