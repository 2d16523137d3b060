"""What `stvm export` is asked for (:class:`ExportOptions`) and what it made (:class:`ExportReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stvm_sdk.export.onnx import DEFAULT_OPSET, Exporter
from stvm_sdk.export.quantize import CALIBRATION_METHODS, Int8Result
from stvm_sdk.export.verify import Verification


@dataclass
class ExportOptions:
    """What `stvm export` was asked for (see the CLI help for each option)."""

    out_dir: Path = Path("export")
    name: str = "model"
    # Precisions to write besides the base fp32 graph (names in export.precisions.PRECISIONS).
    precisions: tuple[str, ...] = ()
    calib: Path | None = None
    labels: Path | None = None
    argmax: bool = False
    opset: int = DEFAULT_OPSET
    exporter: Exporter = "auto"
    dynamic: bool = True
    bake_normalize: bool = True
    trt: bool = False
    shape: str = "512x1024"
    batch: int = 1
    workspace_mib: int = 4096
    verify_frames: int = 8
    # ONNX Runtime's calibrators keep every quantized tensor of every frame in memory at once
    # (~0.25 GB per 512x1024 frame for lraspp): 8 frames are enough for ranges and stay affordable.
    calib_frames: int = 8
    calib_methods: tuple[str, ...] = CALIBRATION_METHODS
    trust_pickle: bool = False
    ignore_out_of_range: bool = False  # score label ids outside the model's classes as ignored


@dataclass
class Artifact:
    """One verified ONNX file (and its engine, when one was built)."""

    precision: str
    onnx_path: Path
    sidecar_path: Path
    verification: Verification
    trt_problems: list[str]
    trtexec: str
    engine_path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "onnx_path": str(self.onnx_path),
            "sidecar_path": str(self.sidecar_path),
            "verification": self.verification.to_dict(),
            "tensorrt_parser_problems": self.trt_problems,
            "trtexec": self.trtexec,
            "engine_path": str(self.engine_path) if self.engine_path else None,
        }


@dataclass
class ExportReport:
    """Everything `stvm export` made; ``artifacts[-1]`` is the most specific precision asked for."""

    artifacts: list[Artifact]
    frames: str
    calibration: Int8Result | None = None
    calibration_disjoint: bool = True  # False: calibrated on the verification frames (too few to split)
    trt_error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        main = self.artifacts[-1]
        cal = self.calibration
        return {
            **main.to_dict(),
            "artifacts": [a.to_dict() for a in self.artifacts],
            "frames": self.frames,
            "calibration": (
                {
                    "method": cal.method,
                    "scores": cal.scores,
                    "disjoint_from_verification": self.calibration_disjoint,
                }
                if cal
                else None
            ),
            "trt_error": self.trt_error,
            "seconds": self.seconds,
        }
