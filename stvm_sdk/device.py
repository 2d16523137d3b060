"""Which device a run uses: ``auto`` means a CUDA GPU when one is visible, else the CPU (said once)."""

from __future__ import annotations

import logging

import torch

from stvm_sdk.boundary.args import check_device
from stvm_sdk.errors import BackendUnavailableError

log = logging.getLogger("stvm_sdk")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU (logged); an explicit ``cuda`` that is absent is an error."""
    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("no CUDA device: running on CPU with the pure-PyTorch kernels")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"
        )
    return torch.device(name)
