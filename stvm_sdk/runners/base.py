"""The runner interface, and where a runner finds the sidecar its artifact was exported with.

Every runner takes images as ``float32 [B,3,H,W]`` RGB in [0,1] and returns either logits
``[B,K,H,W]`` or a class map ``[B,H,W]`` (graphs exported with ``--argmax``). ``prepare`` moves an
input to the backend once, so a timed ``run`` measures inference, not host-side conversion.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch


class Runner(ABC):
    """Base class: ``prepare`` (untimed) then ``run``; ``device`` is ``cpu`` or ``cuda``."""

    backend = "?"
    precision = "fp32"
    device = "cpu"
    output = "logits"  # or "classes"
    num_classes: int | None = None
    class_names: list[str] | None = None
    fixed_size: tuple[int, int] | None = None  # (H, W) of a graph exported with a static input

    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self, x: np.ndarray) -> Any:
        return x

    @abstractmethod
    def run(self, prepared: Any) -> Any:
        """Inference on a prepared input (the timed part); each backend implements it."""

    def to_numpy(self, out: Any) -> np.ndarray:
        return out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.to_numpy(self.run(self.prepare(x)))

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"


def sidecar_path(artifact: Path) -> Path:
    """The sidecar JSON of an artifact: ``m.onnx`` -> ``m.json``, ``m.engine`` -> ``m.engine.json``.

    Engines keep their suffix in the name so an engine and the ONNX it came from never share a sidecar.
    ``stvm_sdk.export.sidecar`` writes what runners read here.
    """
    if artifact.suffix.lower() == ".onnx":
        return artifact.with_suffix(".json")
    return artifact.with_name(artifact.name + ".json")


def read_sidecar(artifact: Path) -> dict[str, Any] | None:
    """The artifact's sidecar as a dict, or None when there is none or it is not valid JSON."""
    p = sidecar_path(artifact)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
