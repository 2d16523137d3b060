"""What `stvm export` can be asked: every option's name, type, default and help, written once.

:class:`ExportOptions` is the SDK's form of the request; `stvm export` builds its command-line flags
from the same fields (``cli/export_cmd.py``), so a new option is one field here. A field made with
:func:`option` carries its flag(s) and help; :func:`shared_option` marks a flag several commands
share (its help lives in ``cli/common.py``); ``precisions`` becomes one flag per row of the
precision table (``--fp16``, ``--int8``); a plain field (``calib_methods``) is SDK-only.

This module stays light (no torch, onnx or numpy), so `stvm --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stvm_sdk.export.quantize import CALIBRATION_METHODS

Exporter = Literal["auto", "legacy", "dynamo"]
DEFAULT_OPSET = 17


def option(default: Any, *flags: str, help: str) -> Any:
    """A field that is also a `stvm export` flag (``flags`` as Typer takes them, e.g. ``--a/--no-a``)."""
    return field(default=default, metadata={"flags": flags, "help": help})


def shared_option(default: Any) -> Any:
    """A field whose flag several commands share (defined once in ``cli/common.py``)."""
    return field(default=default, metadata={"shared": True})


@dataclass(kw_only=True)
class ExportOptions:
    """What `stvm export` was asked for; fields are in the order ``stvm export --help`` lists them."""

    trt: bool = option(False, "--trt", help="Also build TensorRT engines (needs a GPU and TensorRT).")
    # Precisions to write besides the base fp32 graph: names of rows in export.precisions.PRECISIONS.
    # On the command line each row is its own flag (the row's flag and help).
    precisions: tuple[str, ...] = field(default=(), metadata={"per_precision": True})
    calib: Path | None = option(None, "--calib", help="Target frames for INT8 calibration and verification.")
    labels: Path | None = option(None, "--labels", help="Labels for --calib frames (mIoU in the checks).")
    argmax: bool = option(False, "--argmax", help="Output uint8 class ids [B,H,W] instead of logits.")
    opset: int = option(DEFAULT_OPSET, "--opset", help="ONNX opset (17: TensorRT 8.5+; dynamo needs >= 18).")
    # Typed text on the command line: export_onnx validates it, with one message for both callers.
    exporter: Exporter = option("auto", "--exporter", help="auto, legacy (fast, opset 17) or dynamo.")
    dynamic: bool = option(True, "--dynamic/--static", help="Dynamic batch/height/width axes.")
    bake_normalize: bool = option(
        True,
        "--bake-normalize/--no-bake-normalize",
        help="Input is [0,1] RGB and the graph normalises (else: normalised input).",
    )
    shape: str = option(
        "512x1024", "--shape", help="HxW, or MIN:OPT:MAX for the engine profile; verification runs at OPT."
    )
    batch: int = option(1, "--batch", help="Batch size of the engine profile.")
    workspace_mib: int = option(4096, "--workspace", help="TensorRT workspace limit in MiB.")
    verify_frames: int = option(8, "--verify-frames", help="Frames the checks run on.")
    min_agreement: float | None = option(
        None,
        "--min-agreement",
        help="Argmax agreement (%) with eager PyTorch an fp16/INT8 graph must reach to be written "
        "[default: fp16 99.5, INT8 90].",
    )
    # ONNX Runtime's calibrators keep every quantized tensor of every frame in memory at once
    # (~0.25 GB per 512x1024 frame for lraspp): 8 frames are enough for ranges and stay affordable.
    calib_frames: int = option(8, "--calib-frames", help="Frames INT8 ranges are calibrated on.")
    out_dir: Path = option(Path("export"), "--out", help="Output folder.")
    name: str = option("model", "--name", help="Base file name (model.onnx, model_fp16.onnx, ...).")
    trust_pickle: bool = shared_option(False)
    ignore_out_of_range: bool = shared_option(False)  # score label ids outside the classes as ignored
    calib_methods: tuple[str, ...] = CALIBRATION_METHODS  # INT8 calibration methods tried, in order
