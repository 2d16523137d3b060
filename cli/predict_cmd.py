"""`stvm predict`: colourised class maps, overlays and confidence maps from .pt/.onnx/.engine."""

from __future__ import annotations

from pathlib import Path

import typer
from stvm_sdk.cli.common import TRUST_PICKLE, console, err_console, print_json, user_errors


@user_errors
def predict_command(
    model: Path = typer.Argument(
        ..., help="Model: .safetensors/.pt, save_pretrained folder, .onnx graph or .engine."
    ),
    input: Path = typer.Option(
        ..., "--input", "-i", help="Folder of frames, or a video file (needs OpenCV: the video extra)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    shape: str | None = typer.Option(None, "--shape", help="Inference size HxW (default: each frame's own)."),
    confidence: bool = typer.Option(False, "--confidence", help="Also write max-probability maps."),
    frames: bool = typer.Option(False, "--frames", help="Video input: also write every frame's images."),
    ids: str | None = typer.Option(
        None,
        "--ids",
        help="Also write raw class-id PNGs: trainIds (the model's class ids, 255 = ignore) or labelIds "
        "(Cityscapes labelIds, 19-class models).",
        show_default="none",
    ),
    trust_pickle: bool = TRUST_PICKLE,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Run MODEL on frames or a video and write colour maps (Cityscapes palette) and overlays."""
    from rich.progress import Progress

    from stvm_sdk.boundary.args import check_hw_pixels
    from stvm_sdk.boundary.frames import max_pixels
    from stvm_sdk.errors import DataError
    from stvm_sdk.export.predict import VIDEO_EXTENSIONS, predict_folder, predict_video
    from stvm_sdk.export.tensorrt import parse_profile
    from stvm_sdk.runners.dispatch import open_runner

    size = None
    if shape is not None:
        prof = parse_profile(shape)
        size = check_hw_pixels((prof.opt[2], prof.opt[3]), "--shape", max_pixels())
    if not input.exists():
        raise DataError(f"input not found: {input}: pass a folder of frames or a video file")
    runner = open_runner(model, trust_pickle=trust_pickle)
    with Progress(console=err_console, transient=True, disable=json_out) as bar:
        task = bar.add_task("predict", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        if input.is_file() and input.suffix.lower() in VIDEO_EXTENSIONS:
            summary = predict_video(
                runner,
                input,
                out,
                size=size,
                confidence=confidence,
                write_frames=frames,
                progress=tick,
                ids=ids,
            )
        else:
            summary = predict_folder(
                runner, input, out, size=size, confidence=confidence, progress=tick, ids=ids
            )
    result = {
        "frames": summary.frames,
        "out_dir": str(summary.out_dir),
        "skipped": summary.skipped,
        "images_skipped": summary.skip_report,
        "video": str(summary.video) if summary.video else None,
        "backend": runner.label,
        "legend": str(summary.out_dir / "legend.png"),
    }
    if summary.video is not None:
        result["fps"] = summary.fps
        if summary.frames_expected:  # the header's count, and the frames of it never read
            result["frames_expected"] = summary.frames_expected
            result["frames_missing"] = max(0, summary.frames_expected - summary.frames)
    if summary.warnings:
        result["warnings"] = summary.warnings
    for line in summary.warnings:  # stderr: stdout stays one JSON object with --json
        typer.echo(f"warning: {line}", err=True)
    if json_out:
        print_json(result)
    else:
        console.print(
            f"wrote {summary.frames} frame(s) to {summary.out_dir}"
            + (f" ({summary.skipped} unreadable skipped)" if summary.skipped else "")
            + (f"; overlay video: {summary.video}" if summary.video else "")
            + f"; colour legend: {result['legend']}",
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
