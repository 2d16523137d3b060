"""`stvm export`: verified ONNX (fp32/fp16/INT8 Q/DQ) and, where possible, TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from stvm_sdk.cli.common import (
    IGNORE_OUT_OF_RANGE,
    TRUST_PICKLE,
    console,
    out_console,
    print_json,
    user_errors,
)


@user_errors
def export_command(
    model: Path = typer.Argument(..., help="Model file (a .pt checkpoint dict)."),
    onnx: bool = typer.Option(
        True, "--onnx", help="Write ONNX (always on: engines are built from it and checked against it)."
    ),
    trt: bool = typer.Option(False, "--trt", help="Also build TensorRT engines (needs a GPU and TensorRT)."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write a half-precision graph (float32 I/O)."),
    int8: bool = typer.Option(False, "--int8", help="Also write an INT8 Q/DQ graph (needs --calib)."),
    calib: Path | None = typer.Option(
        None, "--calib", help="Target frames for INT8 calibration and verification."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Labels for --calib frames (mIoU in the checks)."
    ),
    argmax: bool = typer.Option(False, "--argmax", help="Output uint8 class ids [B,H,W] instead of logits."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset (17: TensorRT 8.5+; dynamo needs >= 18)."),
    exporter: str = typer.Option("auto", "--exporter", help="auto, legacy (fast, opset 17) or dynamo."),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="Dynamic batch/height/width axes."),
    normalize: bool = typer.Option(
        True,
        "--bake-normalize/--no-bake-normalize",
        help="Input is [0,1] RGB and the graph normalises (else: normalised input).",
    ),
    shape: str = typer.Option(
        "512x1024", "--shape", help="HxW, or MIN:OPT:MAX for the engine profile; verification runs at OPT."
    ),
    batch: int = typer.Option(1, "--batch", help="Batch size of the engine profile."),
    workspace: int = typer.Option(4096, "--workspace", help="TensorRT workspace limit in MiB."),
    verify_frames: int = typer.Option(8, "--verify-frames", help="Frames the checks run on."),
    calib_frames: int = typer.Option(8, "--calib-frames", help="Frames INT8 ranges are calibrated on."),
    out: Path = typer.Option(Path("export"), "--out", help="Output folder."),
    name: str = typer.Option("model", "--name", help="Base file name (model.onnx, model_fp16.onnx, ...)."),
    trust_pickle: bool = TRUST_PICKLE,
    ignore_out_of_range: bool = IGNORE_OUT_OF_RANGE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Export MODEL to ONNX (and TensorRT), verifying every artifact against eager PyTorch."""
    from stvm_sdk.errors import BackendUnavailableError
    from stvm_sdk.export.pipeline import ExportOptions, export_model
    from stvm_sdk.export.precisions import engine_precisions
    from stvm_sdk.models import load_model

    opts = ExportOptions(
        out_dir=out,
        name=name,
        precisions=tuple(name for name, asked in (("fp16", fp16), ("int8", int8)) if asked),
        calib=calib,
        labels=labels,
        argmax=argmax,
        opset=opset,
        exporter=exporter,  # type: ignore[arg-type]  # validated by export_onnx
        dynamic=dynamic,
        bake_normalize=normalize,
        trt=trt,
        shape=shape,
        batch=batch,
        workspace_mib=workspace,
        verify_frames=verify_frames,
        calib_frames=calib_frames,
        trust_pickle=trust_pickle,
        ignore_out_of_range=ignore_out_of_range,
    )
    seg = load_model(model, trust_pickle=trust_pickle)
    say = out_console(json_out)
    report = export_model(seg, opts, source=model, log=say.print, show=lambda r: _show_table(r, say))
    if json_out:
        print_json(report.to_dict())
    else:
        engines = engine_precisions(a.precision for a in report.artifacts)
        for a in report.artifacts:
            console.print(
                f"wrote {a.onnx_path} + {a.sidecar_path.name}"
                + (f", {a.engine_path}" if a.engine_path else "")
            )
            if trt and a.precision in engines:
                # One unwrapped line: it is meant to be copied to the car as is.
                console.print(f"  on the car: {a.trtexec}", soft_wrap=True, markup=False, highlight=False)
    if report.trt_error:
        raise BackendUnavailableError(f"ONNX written to {out}; {report.trt_error}")


def _show_table(results: list, con: Console) -> None:
    from rich.table import Table

    from stvm_sdk.export.verify import TABLE_HEADER, table_rows

    table = Table(title="ONNX Runtime vs eager PyTorch")
    for col in TABLE_HEADER:
        table.add_column(col, justify="right")
    for row in table_rows(results):
        table.add_row(*row)
    con.print(table)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
