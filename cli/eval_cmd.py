"""`stvm eval` (per-class IoU on a labelled folder) and `stvm info` (what a model file holds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from stvm_sdk.cli.common import IGNORE_OUT_OF_RANGE, JSON_OUT, TRUST_PICKLE, console, print_json, user_errors

MODEL_HELP = (
    "Model: a .safetensors/.pt model or save_pretrained folder, TorchScript, or an exported .onnx (fp32, "
    "fp16, INT8, argmax), read with the .json sidecar stvm export wrote beside it."
)


@user_errors
def eval_command(
    model: Path | None = typer.Argument(
        None, metavar="MODEL", help=MODEL_HELP + " Required.", show_default=False
    ),
    images: Path = typer.Option(..., "--images", help="Folder of frames (or a Cityscapes root)."),
    labels: Path = typer.Option(..., "--labels", help="Labels mirroring --images (trainIds or Cityscapes)."),
    size: str | None = typer.Option(
        None, "--size", help="Inference size HxW.", show_default="each frame's own; a static graph's size"
    ),
    device: str = typer.Option("auto", "--device", help="Where a .pt model runs: auto, cpu, cuda or cuda:N."),
    trust_pickle: bool = TRUST_PICKLE,
    ignore_out_of_range: bool = IGNORE_OUT_OF_RANGE,
    json_out: bool = JSON_OUT,
    model_option: Path | None = typer.Option(
        None, "--model", "-m", hidden=True, help="Deprecated: pass MODEL as the first argument."
    ),
) -> None:
    """Evaluate MODEL (.pt or exported .onnx) on labelled frames: mIoU and per-class IoU."""
    from stvm_sdk.boundary.args import check_hw_pixels, parse_hw
    from stvm_sdk.boundary.frames import max_pixels
    from stvm_sdk.device import resolve_device
    from stvm_sdk.eval import evaluate, open_model

    path = model_argument(model, model_option, "eval")
    dev = resolve_device(device)
    net = open_model(path, trust_pickle=trust_pickle, device=dev)
    result = evaluate(
        net,
        images,
        labels,
        size=check_hw_pixels(parse_hw(size, "--size"), "--size", max_pixels()),
        device=dev,
        ignore_out_of_range=ignore_out_of_range,
    )
    if json_out:
        print_json({"model": str(path), "backend": _backend(net), **result.to_dict()})
        return
    _print_result(path, _backend(net), result)


def model_argument(model: Path | None, model_option: Path | None, command: str) -> Path:
    """MODEL from the argument, or from the deprecated ``--model`` (with a one-line notice on stderr)."""
    from stvm_sdk.errors import ConfigError

    if model is not None and model_option is not None:
        raise ConfigError(
            f"the model is given twice (MODEL and --model): pass it once, stvm {command} MODEL ..."
        )
    if model_option is not None:
        typer.echo(
            f"note: --model is deprecated; pass the model first: stvm {command} {model_option} ...", err=True
        )
        return model_option
    if model is None:
        raise ConfigError(f"missing MODEL: stvm {command} MODEL --images DIR --labels DIR")
    return model


def _backend(net: object) -> str:
    """``torch/fp32`` for a PyTorch model, else the runner's ``ort/int8``-style label."""
    return getattr(net, "label", "torch/fp32")


def _print_result(path: Path, backend: str, result: Any) -> None:
    from rich.table import Table

    labelled = f"{result.n_images} labelled frames (of {result.frames_found} found)"
    console.print(f"{path.name} ({backend}): mIoU {result.miou:.2f} % on {labelled}", highlight=False)
    table = Table()
    table.add_column("class")
    table.add_column("IoU (%)", justify="right")
    for name, iou in result.per_class_iou.items():
        table.add_row(name, "-" if iou is None else f"{iou:.2f}")
    console.print(table)


@user_errors
def info_command(
    model: Path = typer.Argument(
        ..., metavar="MODEL", help="Model: .safetensors/.pt, save_pretrained folder, TorchScript or .onnx."
    ),
    trust_pickle: bool = TRUST_PICKLE,
    json_out: bool = JSON_OUT,
) -> None:
    """Show a model's format, classes, parameter count and input/output contract (.pt or .onnx)."""
    from stvm_sdk.runners.describe import describe_model

    info = describe_model(model, trust_pickle=trust_pickle)
    if json_out:
        print_json(info)
        return
    for key, value in info.items():
        if key == "methods" and isinstance(value, dict):  # one line per method: what it would update
            console.print(
                "[bold]methods[/bold] (what each would update on this model; "
                "x: cannot run on it, !: touches little of it):",
                highlight=False,
                soft_wrap=True,
            )
            for name, r in value.items():
                mark = "x" if not r["fits"] else "!" if r["weak"] else " "
                line = f"  {mark} {name}: {r['updates']}"
                console.print(line, soft_wrap=True, highlight=False, markup=False)
        elif key in ("classifier_warning", "warning") and value:
            console.print(f"[bold yellow]warning[/bold yellow]: {value}", soft_wrap=True, highlight=False)
        elif value is not None:
            console.print(f"[bold]{key}[/bold]: {_human(key, value)}", soft_wrap=True, highlight=False)


def _human(key: str, value: Any) -> str:
    """An info value as a person reads it: lists joined, the export's check in words."""
    if key == "verification" and isinstance(value, dict):
        miou = value.get("miou_onnx")
        return (
            f"{'passed' if value.get('passed') else 'FAILED'} at export on {value.get('n_frames')} frames: "
            f"argmax agreement {value.get('argmax_agreement', 0):.2f} % with eager PyTorch"
            + (f", mIoU {miou:.2f} vs {value.get('miou_eager', 0):.2f} eager" if miou is not None else "")
        )
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return f"{value:,}" if isinstance(value, int) and key == "parameters" else str(value)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("info")(info_command)
