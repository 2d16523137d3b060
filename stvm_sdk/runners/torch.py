"""Eager PyTorch runner: the float32 reference every other backend is compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stvm_sdk.runners.base import Runner


class TorchRunner(Runner):
    """Eager PyTorch in float32 on a ``.pt`` checkpoint."""

    backend = "torch"

    def __init__(self, path: Path, device: str = "cpu", *, trust_pickle: bool = False) -> None:
        super().__init__(path)
        from stvm_sdk.models import load_model

        self.model = load_model(path, trust_pickle=trust_pickle)
        self.device = device
        self.module = self.model.module.eval().to(device)
        self.num_classes, self.class_names = self.model.num_classes, self.model.class_names

    def prepare(self, x: np.ndarray) -> torch.Tensor:
        from stvm_sdk.models import normalize

        return normalize(torch.from_numpy(x).to(self.device), self.model.mean, self.model.std)

    def run(self, prepared: torch.Tensor) -> torch.Tensor:
        from stvm_sdk.models import forward_logits

        with torch.inference_mode():
            return forward_logits(self.module, prepared)
