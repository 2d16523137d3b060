"""What `stvm export` made: one :class:`Artifact` per precision, gathered in an :class:`ExportReport`.

What it is asked for is :class:`stvm_sdk.export.options.ExportOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stvm_sdk.export.quantize import Int8Result
from stvm_sdk.export.verify import Verification


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
