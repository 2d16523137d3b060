"""The runner interface (the sidecar an artifact was exported with is read by :mod:`.contract`).

Every runner takes images as ``float32 [B,3,H,W]`` RGB in [0,1] and returns either logits
``[B,K,H,W]`` or a class map ``[B,H,W]`` (graphs exported with ``--argmax``). ``prepare`` moves an
input to the backend once, so a timed ``run`` measures inference, not host-side conversion.
"""

from __future__ import annotations

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

    @property
    def input_known(self) -> bool:
        """Whether the runner knows how its artifact wants its input (normalised or [0,1] RGB)."""
        return True

    def check(self, out: np.ndarray) -> None:  # noqa: B027 (a hook: most runners check nothing)
        """Refuse an output that contradicts what the artifact states (e.g. its class count)."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.to_numpy(self.run(self.prepare(x)))
        self.check(out)
        return out

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"
